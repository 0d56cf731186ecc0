"""What ``predict`` reads: a data file of tensors, a folder of images, a text file of lines.

Each is an input with its number of rows and its chunks: the model's inputs, and the
columns that name each row (``keys``) so that results can be joined back to what made them.

- Data files (.npy, .npz, Parquet), through :mod:`shipyard.tabular`; no key column (row i is
  sample i).
- A folder of images (.jpg, .jpeg, .png, .webp, .bmp, .gif, .tif, .tiff, any case), for a
  package whose manifest has ``preprocess: image``: every image file in the folder *and its
  subfolders* (hidden files and folders, ``.name``, skipped), in the order of their paths
  relative to the folder (``a/b.jpg`` before ``b.jpg``). Each file is decoded and
  pre-processed with the package's settings by the function the server calls
  (:class:`~shipyard.serve.images.EncodedImages`, :func:`shipyard.processing.image.preprocess`),
  so the tensors are the ones the server would make; one chunk's images at a time, decoded
  in parallel on the server's processing pool. Key: ``file``, the path relative to the
  folder. A file that cannot be used (not an image, truncated, too large) stops the run
  with a DataError naming it, and nothing is written: skipping it would silently lose a
  row the user expects to find.
- A text file (.txt) for a package whose manifest has ``preprocess: text``: one UTF-8 text
  per line (line ends ``\\n`` or ``\\r\\n``; a byte order mark at the start is dropped). An
  empty line is an empty text (the server takes ``""`` too), so row i is always line i + 1.
  Each chunk is tokenized by the package's tokenizer as the server builds it
  (:class:`~shipyard.serve.text.ServedText`), padded to the chunk's longest text. Keys:
  ``line`` (from 1) and, in Parquet only, ``text``: in .npz a fixed-width string column would
  pad every row to the file's longest text. ``truncated`` counts the texts cut at
  ``max_length`` tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import DataError, InputError
from shipyard.tabular import Arrays, count_rows, read_chunks

#: Image file suffixes a folder is read for (the formats ``processing.image`` decodes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
Chunk = tuple[Arrays, Arrays]  # (model inputs, key columns)


class TensorFile:
    """A .npy, .npz or Parquet file (or Parquet folder) of the inputs ``names``."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path, self.names = path, list(names)
        self.keys: tuple[str, ...] = ()
        self.dtypes: dict[str, np.dtype] = {}
        self.truncated = 0
        self.rows = count_rows(path, self.names)

    def chunks(self, size: int) -> Iterator[Chunk]:
        for chunk in read_chunks(self.path, self.names, size):
            yield chunk, {}


def image_files(folder: Path) -> list[str]:
    """The image files under ``folder`` (see the module's docstring), relative, in order."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if not any(part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


class ImageFolder:
    """The images under ``folder``, as the input the package's ``preprocess: image`` feeds."""

    keys = ("file",)
    truncated = 0

    def __init__(self, folder: Path, manifest: dict[str, Any], signature: Any) -> None:
        from shipyard.serve.images import EncodedImages

        images = EncodedImages.from_manifest(manifest, signature)
        if images is None:
            raise DataError(
                f"{folder} is a folder of images, but this package does not pre-process "
                f"images (its recipe has no preprocess: image section); give .npy, .npz or "
                f"Parquet data"
            )
        others = [name for name in signature.input_names if name != images.input]
        if others:
            raise DataError(
                f"the model takes {others} besides the images in '{images.input}': a folder "
                f"of images feeds one input; give .npz or Parquet data"
            )
        self.folder, self.images = folder, images
        self.files = image_files(folder)
        if not self.files:
            raise DataError(
                f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and no Parquet files"
            )
        self.rows = len(self.files)
        self.dtypes = {"file": np.dtype(f"<U{max(len(name) for name in self.files)}")}
        self.shape: tuple[int, ...] | None = None  # of the first image, once pre-processed

    def _one(self, name: str) -> np.ndarray:
        from shipyard.processing.image import preprocess

        try:
            data = (self.folder / name).read_bytes()
            return preprocess([data], self.images.config)
        except OSError as error:
            raise DataError(f"cannot read image {name} in {self.folder}: {error}") from None
        except InputError as error:  # ImageError included: not an image, truncated, too big
            raise DataError(f"image {name} in {self.folder}: {error}") from None

    def chunks(self, size: int) -> Iterator[Chunk]:
        from shipyard.serve.images import POOL

        for start in range(0, self.rows, size):
            names = self.files[start : start + size]
            arrays = list(POOL.map(self._one, names))
            for name, array in zip(names, arrays, strict=True):
                self.shape = self.shape or array.shape[1:]
                if array.shape[1:] != self.shape:
                    raise DataError(
                        f"image {name} is {list(array.shape[1:])} after pre-processing, "
                        f"{self.files[0]} {list(self.shape)}: set preprocess image crop in "
                        f"the recipe so that every image has the model's size"
                    )
            keys = {"file": np.asarray(names, dtype=self.dtypes["file"])}
            yield {self.images.input: np.concatenate(arrays)}, keys


class TextLines:
    """The lines of a UTF-8 text file, tokenized as the package's ``preprocess: text`` says.
    ``strings``: whether the output takes a ``text`` column (Parquet does, .npz not)."""

    def __init__(self, path: Path, package: Any, signature: Any, strings: bool) -> None:
        from shipyard.serve.text import ServedText

        try:
            served = ServedText.from_manifest(package.manifest, signature, package.path)
        except ValueError as error:
            raise DataError(f"the package's preprocess: text section: {error}") from None
        if served is None:
            raise DataError(
                f"{path} is a text file, but this package has no tokenizer (its recipe has no "
                f"preprocess: text section); give .npy, .npz or Parquet data"
            )
        self.path, self.tokenizer = path, served.tokenizer
        self.keys = ("line", "text") if strings else ("line",)
        self.dtypes: dict[str, np.dtype] = {}
        self.truncated = 0
        with path.open("rb") as lines:
            self.rows = sum(1 for _ in lines)
        if self.rows == 0:
            raise DataError(f"{path} is empty: write one text per line")

    def _lines(self) -> Iterator[str]:
        with self.path.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.removesuffix(b"\n").removesuffix(b"\r")
                if number == 1:
                    line = line.removeprefix(b"\xef\xbb\xbf")
                try:
                    yield line.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{self.path} line {number} is not UTF-8 text: {error.reason} at "
                        f"byte {error.start}"
                    ) from None

    def chunks(self, size: int) -> Iterator[Chunk]:
        texts: list[str] = []
        first = 1
        for text in self._lines():
            texts.append(text)
            if len(texts) == size:
                yield self._chunk(texts, first)
                first, texts = first + len(texts), []
        if texts:
            yield self._chunk(texts, first)

    def _chunk(self, texts: list[str], first: int) -> Chunk:
        try:
            tokenized = self.tokenizer(texts)
        except InputError as error:  # "element N ...": N counts from the chunk's first line
            found = re.match(r"element (\d+)(.*)", str(error), re.DOTALL)
            if found is None:
                last = first + len(texts) - 1
                raise DataError(f"{self.path} lines {first}-{last}: {error}") from None
            raise DataError(f"{self.path} line {first + int(found[1])}{found[2]}") from None
        self.truncated += len(tokenized.truncated)
        keys = {"line": np.arange(first, first + len(texts), dtype=np.int64)}
        if "text" in self.keys:
            keys["text"] = np.asarray(texts, dtype=str)
        return tokenized.feeds, keys


def open_input(
    data: Path, package: Any, signature: Any, output_kind: str
) -> TensorFile | ImageFolder | TextLines:
    """The input ``data`` names: a .txt file, a folder of images, or a data file (see the
    module's docstring); ``output_kind`` is the output's suffix (.npy, .npz, .parquet)."""
    if data.suffix.lower() == ".txt" and data.is_file():
        return TextLines(data, package, signature, output_kind == ".parquet")
    if data.is_dir() and not any(data.glob("*.parquet")):
        return ImageFolder(data, package.manifest, signature)
    return TensorFile(data, signature.input_names)


def is_tensor_file(data: Path) -> bool:
    """Whether ``data`` is read by :mod:`shipyard.tabular` (not images, not texts)."""
    if data.suffix.lower() == ".txt":
        return False
    return not (data.is_dir() and not any(data.glob("*.parquet")))


__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "TensorFile", "TextLines", "image_files", "open_input"]
