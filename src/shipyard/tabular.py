"""Tensors in data files, read and written in chunks: ``.npy``, ``.npz`` and Parquet.

- ``.npy``: one array, the batch along axis 0, read through a memory map (a file larger than
  memory streams); written through ``np.lib.format.open_memmap``.
- ``.npz``: one array per name (inputs by their names; other keys, such as labels, are
  ignored). Members of a zip cannot be mapped: each input is read whole. Written member by
  member from temporary ``.npy`` files, so outputs larger than memory work.
- Parquet: a column per tensor, one row per sample, each cell the sample's tensor as a
  (nested) fixed-size list (``float[1][8][8]`` for a ``[batch, 1, 8, 8]`` input); variable
  lists of equal length (as pandas writes nested lists) read the same way. Read by row
  batches, written one row group per chunk. Needs pyarrow (the ``ray`` extra brings it).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import DataError, MissingExtraError

FORMATS = (".npy", ".npz", ".parquet")
Arrays = dict[str, np.ndarray]


def file_format(path: Path, role: str) -> str:
    """``.npy``, ``.npz`` or ``.parquet`` (a folder of Parquet files too); DataError else."""
    suffix = path.suffix.lower()
    if suffix in FORMATS:
        return suffix
    if path.is_dir() and any(path.glob("*.parquet")):
        return ".parquet"
    raise DataError(f"{role} {path}: use a .npy, .npz or .parquet file (or a Parquet folder)")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.dataset
        import pyarrow.parquet
    except ImportError:
        raise MissingExtraError("Parquet files", "ray", "pyarrow") from None
    return pyarrow


# -- Arrow <-> NumPy ---------------------------------------------------------------------------


def to_table(arrays: Mapping[str, np.ndarray]) -> Any:
    """A pyarrow Table with a column per array: row i holds ``array[i]`` as nested lists."""
    pa = _pyarrow()
    columns = {}
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        column = (
            pa.array(array.reshape(-1))
            if array.size
            else pa.array([], pa.from_numpy_dtype(array.dtype))
        )
        for size in reversed(array.shape[1:]):
            column = pa.FixedSizeListArray.from_arrays(column, size)
        columns[name] = column
    return pa.table(columns)


def _column_array(column: Any, rows: int) -> np.ndarray:
    pa = _pyarrow()
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    shape: list[int] = []
    while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type):
        if pa.types.is_fixed_size_list(values.type):
            size = values.type.list_size
        else:
            lengths = np.unique(np.diff(values.offsets.to_numpy()))
            if len(lengths) > 1:
                raise DataError("a Parquet tensor column holds lists of different lengths")
            size = int(lengths[0]) if len(lengths) else 0
        shape.append(size)
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(rows, *shape)


def from_table(table: Any, names: Sequence[str]) -> Arrays:
    """The columns ``names`` of ``table`` as arrays ``[rows, ...]``; DataError if missing."""
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise DataError(f"no column {missing} in the data; it has {table.column_names}")
    return {name: _column_array(table.column(name), table.num_rows) for name in names}


# -- reading ------------------------------------------------------------------------------------


def count_rows(path: Path, names: Sequence[str]) -> int:
    """Samples in the data file (without reading the tensors)."""
    kind = file_format(path, "data")
    if kind == ".npy":
        return int(np.load(path, mmap_mode="r").shape[0])
    if kind == ".npz":
        with np.load(path) as archive:
            return int(archive[names[0]].shape[0]) if names[0] in archive else 0
    with _named(path):
        return int(_parquet(path).count_rows())


def _parquet(path: Path) -> Any:
    """A Parquet file or folder as a pyarrow dataset (a folder's ``*.parquet`` files, in name
    order, beside whatever else it holds); DataError for a file that is not Parquet."""
    with _named(path):
        return _pyarrow().dataset.dataset(parquet_files(path), format="parquet")


def parquet_files(path: Path) -> list[str]:
    """The Parquet files of ``path`` in the order their rows are read: the file itself, or a
    folder's ``*.parquet`` files (subfolders too, hidden ones left out) by name. Both engines
    read this list, so a folder's rows come in the same order whoever reads them."""
    if not path.is_dir():
        return [str(path)]
    return [str(f) for f in sorted(path.rglob("*.parquet")) if not f.name.startswith(".")]


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """pyarrow's errors on a file that is not Parquet as a DataError naming ``path``."""
    try:
        yield
    except (_pyarrow().ArrowInvalid, OSError) as error:
        raise DataError(f"data {path}: not readable as Parquet ({error})") from error


def read_chunks(path: Path, names: Sequence[str], rows: int) -> Iterator[Arrays]:
    """The inputs ``names`` from ``path``, ``rows`` samples at a time."""
    kind = file_format(path, "data")
    if kind == ".parquet":
        with _named(path):
            batches = iter(_parquet(path).to_batches(columns=list(names), batch_size=rows))
        while True:
            with _named(path):
                batch = next(batches, None)
            if batch is None:
                return
            if batch.num_rows:
                yield from_table(_pyarrow().Table.from_batches([batch]), names)
    if kind == ".npy":
        if len(names) != 1:
            raise DataError(f"{path} holds one array; the model takes {list(names)}: use .npz")
        arrays = {names[0]: np.load(path, mmap_mode="r")}
    else:
        with np.load(path) as archive:
            missing = [name for name in names if name not in archive]
            if missing:
                raise DataError(f"{path} has no array {missing}; it has {sorted(archive)}")
            arrays = {name: archive[name] for name in names}
    total = {array.shape[0] for array in arrays.values()}
    if len(total) != 1:
        raise DataError(f"{path}: the inputs differ in their number of samples {sorted(total)}")
    for start in range(0, total.pop(), rows):
        yield {name: np.asarray(array[start : start + rows]) for name, array in arrays.items()}


# -- writing ------------------------------------------------------------------------------------


class ChunkWriter:
    """Writes output chunks to ``path`` (.npy: one output; .npz; .parquet), ``total`` rows in
    all; call :meth:`write` per chunk and :meth:`close` at the end. Nothing appears at
    ``path`` unless every chunk was written (the file is renamed into place).

    ``dtypes``: the element type of a column whose chunks may differ in it (fixed-width
    strings, ``<U40``, whose width is the longest of all chunks); .npz sets a column's type
    from its first chunk otherwise. Strings become Parquet string columns."""

    def __init__(
        self, path: Path, total: int, dtypes: Mapping[str, np.dtype] | None = None
    ) -> None:
        self.path, self.total, self.kind = path, total, file_format(path, "output")
        self.dtypes = dict(dtypes or {})
        self.staging = Path(tempfile.mkdtemp(prefix=".predict-", dir=path.parent))
        self.done = 0
        self.maps: dict[str, np.memmap] = {}
        self.parquet: Any = None

    def write(self, outputs: Mapping[str, np.ndarray]) -> None:
        rows = next(iter(outputs.values())).shape[0]
        if self.kind == ".parquet":
            table = to_table(outputs)
            if self.parquet is None:
                pq = _pyarrow().parquet
                self.parquet = pq.ParquetWriter(str(self.staging / "out.parquet"), table.schema)
            self.parquet.write_table(table)
        else:
            if self.kind == ".npy" and len(outputs) != 1:
                raise DataError(f"the model has outputs {list(outputs)}: write .npz or .parquet")
            for name, array in outputs.items():
                if name not in self.maps:
                    self.maps[name] = np.lib.format.open_memmap(
                        self.staging / f"{name}.npy",
                        "w+",
                        self.dtypes.get(name, array.dtype),
                        (self.total, *array.shape[1:]),
                    )
                self.maps[name][self.done : self.done + rows] = array
        self.done += rows

    def close(self) -> None:
        """Finish the file and move it to ``path``."""
        try:
            if self.parquet is not None:
                self.parquet.close()
                (self.staging / "out.parquet").replace(self.path)
                return
            for array in self.maps.values():
                array.flush()
            if self.kind == ".npy":
                (self.staging / f"{next(iter(self.maps))}.npy").replace(self.path)
                return
            staged = self.staging / "out.npz"
            with zipfile.ZipFile(staged, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name in self.maps:
                    archive.write(self.staging / f"{name}.npy", arcname=f"{name}.npy")
            staged.replace(self.path)
        finally:
            self.maps.clear()
            shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.maps.clear()
        shutil.rmtree(self.staging, ignore_errors=True)


__all__ = [
    "FORMATS",
    "ChunkWriter",
    "count_rows",
    "file_format",
    "from_table",
    "read_chunks",
    "to_table",
]
