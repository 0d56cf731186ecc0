"""Rows of several requests in one batch: which models can be batched (:func:`batch_dimension`),
which inputs may be padded to share a batch (:func:`paddable`), and padding them
(:func:`pad_to_longest`). Used by :mod:`shipyard.serve.batcher`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shipyard.signature import Signature


def batch_dimension(signature: Signature) -> str | None:
    """The dynamic dimension name every input and output starts with, or None.

    Only such models can be batched: rows of different requests stack along axis 0 and the
    outputs split back along axis 0.
    """
    if not signature.outputs:
        return None
    specs = (*signature.inputs, *signature.outputs)
    first = {spec.shape[0] if spec.shape else None for spec in specs}
    name = first.pop() if len(first) == 1 else None
    return name if isinstance(name, str) else None


def paddable(
    signature: Signature, varying: list[str], padding: Mapping[str, int] | None
) -> dict[str, int]:
    """``padding`` when it can pad every varying input along axis 1 (its only dynamic axis
    past the batch) and no output has that axis; else nothing (equal lengths batch)."""
    if not padding or not varying or any(name not in padding for name in varying):
        return {}
    specs = {spec.name: spec for spec in signature.inputs}
    axes = {tuple(specs[name].dynamic_dims.items())[1:] for name in varying}
    if len(axes) != 1:
        return {}
    (axis,) = axes
    if len(axis) != 1 or axis[0][0] != 1:
        return {}
    dim = axis[0][1]
    if any(dim in spec.shape for spec in signature.outputs) or not signature.outputs:
        return {}
    return {name: padding[name] for name in varying}


def pad_to_longest(
    parts: list[Mapping[str, np.ndarray]], padding: Mapping[str, int]
) -> list[Mapping[str, np.ndarray]]:
    """Each request's inputs in ``padding`` padded along axis 1 to the longest request's."""
    name = next(iter(padding))
    longest = max(p[name].shape[1] for p in parts)
    padded: list[Mapping[str, np.ndarray]] = []
    for part in parts:
        short = longest - part[name].shape[1]
        if not short:
            padded.append(part)
            continue
        grown = dict(part)
        for input_name, value in padding.items():
            array = part[input_name]
            widths = [(0, 0), (0, short)] + [(0, 0)] * (array.ndim - 2)
            grown[input_name] = np.pad(array, widths, constant_values=value)
        padded.append(grown)
    return padded
