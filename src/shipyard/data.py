"""Data sets for validation, calibration and training.

A data source is ``pkg.module:function`` (returning ``x``, ``(x, y)``, ``{name: x}`` or
``({name: x}, y)``), or a ``.npz`` file (arrays named like the model's inputs, plus an
optional ``labels``/``y``), or a ``.npy`` file (the single input).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import DataError, InputError
from shipyard.imports import import_reference, is_reference
from shipyard.signature import Signature

_LABEL_KEYS = ("labels", "label", "y")


@dataclass
class Dataset:
    """Inputs by name (first axis = samples) and optional labels.

    ``sequences``: for a stateful model, each row's sequence id (rows of one sequence in
    their order; see :func:`shipyard.stateful.run_sequences`); None: one sequence.
    ``mask``: the attention-mask input of tokenized texts, padded to the longest text of the
    whole set; each batch is then cut to its own longest text (as the server pads a batch),
    which here saved most of the compute (snippets: median 27 tokens, longest 78).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    sequences: np.ndarray | None = None
    mask: str | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, count: int | None) -> Dataset:
        if count is None or count >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:count]
        sequences = None if self.sequences is None else self.sequences[:count]
        inputs = {k: v[:count] for k, v in self.inputs.items()}
        return Dataset(inputs, labels, sequences, self.mask)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            batch = {k: v[start : start + size] for k, v in self.inputs.items()}
            yield batch if self.mask is None else _shortest(batch, self.mask)


def _shortest(batch: dict[str, np.ndarray], mask: str) -> dict[str, np.ndarray]:
    """``batch`` without the padding columns no text of it uses (the inputs shaped like the
    mask, cut along axis 1 after its last non-zero column)."""
    full = batch[mask]
    used = np.flatnonzero(full.any(axis=0))
    length = int(used[-1]) + 1 if used.size else 1
    if length == full.shape[1]:
        return batch
    return {k: v[:, :length] if v.shape[:2] == full.shape else v for k, v in batch.items()}


def _as_inputs(value: Any, signature: Signature, what: str) -> dict[str, np.ndarray]:
    if isinstance(value, Mapping):
        return {str(k): np.asarray(v) for k, v in value.items()}
    if len(signature.inputs) != 1:
        raise DataError(
            f"{what} gave one array, but the model takes {len(signature.inputs)} inputs "
            f"({signature.describe_inputs()}); return a dict keyed by input name"
        )
    return {signature.inputs[0].name: np.asarray(value)}


def _from_value(value: Any, signature: Signature, what: str) -> Dataset:
    if isinstance(value, Dataset):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        x, y = value
        return Dataset(_as_inputs(x, signature, what), None if y is None else np.asarray(y))
    return Dataset(_as_inputs(value, signature, what))


def _from_npz(path: Path, signature: Signature) -> Dataset:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    labels = next((arrays.pop(k) for k in _LABEL_KEYS if k in arrays), None)
    if len(signature.inputs) == 1 and len(arrays) == 1:
        arrays = {signature.inputs[0].name: next(iter(arrays.values()))}
    return Dataset(arrays, labels)


def _call(function: Any, preprocess: Any) -> Any:
    """``function()``, or ``function(preprocess=...)`` when it takes the recipe's
    ``preprocess:`` settings: a loader that makes its tensors with ``shipyard.processing``
    then follows the recipe, so validation sees what the package's server will."""
    try:
        takes = "preprocess" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins and some C functions have no signature
        takes = False
    return function(preprocess=preprocess) if takes and preprocess is not None else function()


def load_data(
    spec: str, signature: Signature, base_dir: Path | None = None, preprocess: Any = None
) -> Dataset:
    """Load and check a data source against ``signature`` (names, dtypes, shapes).

    ``preprocess`` (the recipe's ``processing.Preprocess``) is passed to a function source
    that has a ``preprocess`` parameter. With ``preprocess.text`` (resolved: see
    ``TextPreprocess.resolved``), texts are tokenized: a function's list of strings, or a
    string array named like ``preprocess.text.input`` in a ``.npz``.
    """
    from shipyard.processing.text import tokenize_value

    text = getattr(preprocess, "text", None)
    if is_reference(spec):
        function = import_reference(spec, DataError)
        value = _call(function, preprocess) if callable(function) else function
        if text is not None:
            value = tokenize_value(value, text, signature)
        dataset = _from_value(value, signature, f"data source '{spec}'")
    else:
        path = Path(spec) if base_dir is None or Path(spec).is_absolute() else base_dir / spec
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        try:
            if path.suffix == ".npz":
                dataset = _from_npz(path, signature)
            elif path.suffix == ".npy":
                dataset = Dataset({signature.inputs[0].name: np.load(path, allow_pickle=False)})
            else:
                raise DataError(
                    f"unsupported data file {path.name}: use .npz, .npy or 'pkg.module:function'"
                )
        except ValueError as error:  # e.g. object arrays, which would need pickle
            raise DataError(f"cannot read {path}: {error}") from error
        if text is not None:
            dataset = tokenize_value(dataset, text, signature)
    check_dataset(dataset, signature, spec)
    return dataset


def check_dataset(dataset: Dataset, signature: Signature, what: str) -> None:
    """Raise DataError when the data set does not fit the model's signature."""
    if not dataset.inputs:
        raise DataError(f"data '{what}' holds no arrays")
    lengths = {name: len(array) for name, array in dataset.inputs.items()}
    if dataset.labels is not None:
        lengths["labels"] = len(dataset.labels)
    if dataset.sequences is not None:
        lengths["sequences"] = len(dataset.sequences)
    if len(set(lengths.values())) != 1:
        raise DataError(f"data '{what}': arrays differ in sample count: {lengths}")
    if len(dataset) == 0:
        raise DataError(f"data '{what}' is empty")
    try:
        signature.check_inputs({k: v[:1] for k, v in dataset.inputs.items()})
    except InputError as error:
        raise DataError(f"data '{what}' does not fit the model: {error}") from error
