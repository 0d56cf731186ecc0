"""``predict`` on a folder of images and on a text file of lines: the package's own
pre-processing (the server's), results that equal the server's path on the same files, the
column naming each row, and one readable error for each input that cannot be used."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shipyard
from shipyard.errors import DataError, InputError
from shipyard.recipe import parse_recipe
from tests.conftest import REPO

pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the 'ray' extra)")
pytest.importorskip("tokenizers", reason="texts need the 'text' extra (tokenizers)")
import pyarrow.parquet as pq  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
CLASSES = ["cat", "dog", "tabby cat", "bird", "Ünïcödé"]  # top-1 names: the label column
WORDS = [*SPECIAL, "a", "the", "good", "bad", "film", "very", "dull", "funny"]  # the vocabulary


class TinyRGB(torch.nn.Module):
    """3x16x16 images -> 5 class scores (linear: the top class follows the colour)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(4, 5),
        )  # fmt: skip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class BagOfWords(torch.nn.Module):
    """Token ids and their mask -> the mean of the unmasked tokens' 2-d embeddings."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(len(WORDS), 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        return (self.table(input_ids) * mask).sum(1) / mask.sum(1)


def tiny_rgb() -> TinyRGB:
    return TinyRGB().eval()


def bag_of_words() -> BagOfWords:
    return BagOfWords().eval()


IMAGE_RECIPE = """\
name: tiny-rgb
model: {source: "tests.test_predict_inputs:tiny_rgb"}
signature:
  inputs: [{name: image, dtype: float32, shape: [batch, 3, 16, 16]}]
  outputs: [{name: scores, dtype: float32, shape: [batch, 5]}]
preprocess:
  image: {resize: 20, crop: 16, mean: [0.5, 0.4, 0.3], std: [0.2, 0.3, 0.4]}
postprocess: {labels: LABELS}
passes: [{export: {opset: 18}}]
validate: {samples: 4}
bench: {enabled: false}
"""
TEXT_RECIPE = """\
name: tiny-text
model: {{source: "tests.test_predict_inputs:bag_of_words"}}
signature:
  inputs:
    - {{name: input_ids, dtype: int64, shape: [batch, seq], range: [0, {top}]}}
    - {{name: attention_mask, dtype: int64, shape: [batch, seq], range: [0, 1]}}
  outputs: [{{name: embedding, dtype: float32, shape: [batch, 2]}}]
preprocess:
  text: {{tokenizer: {tokenizer}, max_length: 8, type_ids: null}}
passes: [{{export: {{opset: 18, dynamo: false}}}}]  # dynamo: onnxslim recursed forever
validate: {{samples: 4}}
bench: {{enabled: false}}
"""


def _word_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing

    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path))


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict-inputs")
    _word_tokenizer(root / "tokenizer.json")
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    image = IMAGE_RECIPE.replace("LABELS", str(root / "labels.txt"))
    text = TEXT_RECIPE.format(top=len(WORDS) - 1, tokenizer=root / "tokenizer.json")
    return {
        "image": shipyard.build(parse_recipe(image), root, run_bench=False).package_dir,
        "text": shipyard.build(parse_recipe(text), root, run_bench=False).package_dir,
    }


def _encoded(size: tuple[int, int], kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)  # a colour of its own, and noise
    noise = rng.normal(0, 20, (size[1], size[0], 3))
    pixels = np.clip(rng.integers(0, 256, 3) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Five images of other sizes and formats, one in a subfolder; files that are skipped."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    files = {
        "b.png": ((40, 30), "PNG"), "a.JPG": ((24, 36), "JPEG"), "more/c.webp": ((20, 20), "WEBP"),
        "d.bmp": ((64, 21), "BMP"), "e.jpeg": ((33, 33), "JPEG"),
        ".hidden/x.png": ((20, 20), "PNG"), ".y.png": ((20, 20), "PNG"),
    }  # fmt: skip
    for seed, (name, (size, kind)) in enumerate(files.items()):
        (folder / name).write_bytes(_encoded(size, kind, seed))
    (folder / "notes.md").write_text("not an image, not read")
    return folder


FILES = ["a.JPG", "b.png", "d.bmp", "e.jpeg", "more/c.webp"]  # relative paths, in order


def _served(package: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the server answers: its own conversion of BYTES inputs, then the session."""
    from shipyard.serve.images import EncodedImages
    from shipyard.serve.text import ServedText

    loaded = shipyard.load_package(package)
    signature = loaded.signature
    images = EncodedImages.from_manifest(loaded.manifest, signature)
    if images is not None:
        feeds = images.convert(inputs)
    else:
        texts = ServedText.from_manifest(loaded.manifest, signature, loaded.path)
        assert texts is not None
        feeds = texts.convert(inputs)[0]
    with shipyard.open_session(loaded.artifacts[-1], threads=1) as session:
        return session.run(feeds)


def test_a_folder_of_images_gives_what_the_server_answers(
    packages: dict[str, Path], photos: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    for target in ("out.npz", "out.parquet"):
        done = shipyard.predict(
            packages["image"], photos, tmp_path / target, batch_size=2,
            on_progress=lambda rows, total: seen.append((rows, total)),
        )  # fmt: skip
        assert (done.rows, done.engine, done.truncated) == (5, "process", 0)
    assert seen == [(2, 5), (4, 5), (5, 5)] * 2  # chunks of 2
    encoded = np.array([(photos / name).read_bytes() for name in FILES], dtype=object)
    expected = _served(packages["image"], {"image": encoded})["scores"]
    top = [CLASSES[i] for i in expected.argmax(axis=1)]
    assert len(set(top)) > 1  # the label column is not one class for every image
    with np.load(tmp_path / "out.npz", allow_pickle=False) as archive:  # no pickled strings
        assert archive["file"].dtype.kind == "U" and archive["file"].tolist() == FILES
        assert archive["label"].dtype.kind == "U" and archive["label"].tolist() == top
        np.testing.assert_allclose(archive["scores"], expected, rtol=1e-6, atol=1e-6)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["file", "label", "scores"]
    assert table.schema.field("file").type == "string"
    assert table.column("file").to_pylist() == FILES and table.column("label").to_pylist() == top
    scores = np.array(table.column("scores").to_pylist(), np.float32)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)


LINES = [
    "a good film",
    "",  # an empty line is an empty text
    "the very dull film",
    "Ünïcödé words are unknown",
    "a very very very good good funny film indeed",  # 11 tokens: cut at 8
]


def test_a_text_file_gives_what_the_server_answers_line_by_line(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    data = tmp_path / "texts.txt"  # a byte order mark, Windows line ends, no final newline
    data.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(LINES).encode("utf-8"))
    for target in ("out.npz", "out.parquet"):
        done = shipyard.predict(packages["text"], data, tmp_path / target, batch_size=2)
        assert (done.rows, done.truncated) == (5, 1)
    # One text at a time on the server's path: padding to a chunk's longest text changes no
    # text's embedding (the mask), only the rounding of the sum.
    expected = np.concatenate(
        [_served(packages["text"], {"text": np.array([line], object)})["embedding"]
         for line in LINES]
    )  # fmt: skip
    with np.load(tmp_path / "out.npz", allow_pickle=False) as archive:
        assert sorted(archive) == ["embedding", "line"]  # no fixed-width copy of every text
        assert archive["line"].tolist() == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(archive["embedding"], expected, rtol=1e-6, atol=1e-6)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["line", "text", "embedding"]
    assert table.column("text").to_pylist() == LINES
    embedding = np.array(table.column("embedding").to_pylist(), np.float32)
    np.testing.assert_allclose(embedding, expected, rtol=1e-6, atol=1e-6)


def test_inputs_that_cannot_be_used_are_refused_in_one_line(
    packages: dict[str, Path], photos: Path, tmp_path: Path
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"a good film\nthe film\n\xff\xfe bad\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    image, text = packages["image"], packages["text"]
    cases = [
        (text, photos, "out.npz", DataError, "does not pre-process images"),
        (image, texts, "out.npz", DataError, "has no tokenizer"),
        (image, photos, "out.npy", DataError, "carry a 'file' column"),
        (image, photos, "out", InputError, "runs with --engine process"),
        (text, texts, "out.npz", DataError, r"texts.txt line 3 is not UTF-8 text"),
        (image, empty, "out.npz", DataError, "holds no image files"),
    ]
    for package, data, target, error, message in cases:
        engine = "ray" if target == "out" else "process"
        with pytest.raises(error, match=message):
            shipyard.predict(package, data, tmp_path / target, engine=engine, batch_size=2)
    (photos / "more" / "broken.png").write_bytes(_encoded((30, 30), "PNG", 9)[:200])
    with pytest.raises(DataError, match=r"image more/broken.png in .*truncated or corrupt"):
        shipyard.predict(image, photos, tmp_path / "out.npz", batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "photos", "texts.txt"]


def test_the_command_names_the_file_it_cannot_decode(
    packages: dict[str, Path], photos: Path, tmp_path: Path
) -> None:
    (photos / "c.jpg").write_text("not a picture")
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "predict", str(packages["image"]), "--input",
         str(photos), "--output", str(tmp_path / "out.parquet")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "image c.jpg in " in run.stderr and "not an image" in run.stderr, run.stderr
    assert not (tmp_path / "out.parquet").exists()
