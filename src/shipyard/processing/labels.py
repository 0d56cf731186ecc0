"""Class labels: a text file of names, one per line, line N naming class N.

``read_labels(path)`` reads and checks one; ``top_k(logits, labels, k)`` names a batch's
``k`` most likely classes with their softmax probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import DataError

#: The file name labels get inside a package.
LABELS_FILE = "labels.txt"


def read_labels(path: str | Path) -> list[str]:
    """The class names in ``path`` (UTF-8, one per line; a final newline is optional).

    Raises DataError for a missing or non-UTF-8 file, an empty file, or a blank line (it
    would shift every later class by one).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise DataError(f"labels file {path} does not exist") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read labels file {path}: {error}") from error
    lines = text.splitlines()
    if not lines:
        raise DataError(f"labels file {path} is empty: write one class name per line")
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise DataError(
            f"labels file {path}: line {blank[0]} is blank; line N names class N-1, so a "
            f"blank line would shift every later name"
        )
    return lines


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(
    logits: np.ndarray, labels: Sequence[str] | None = None, k: int = 5
) -> list[list[dict[str, Any]]]:
    """For each row of ``logits`` (N, classes): its ``k`` most likely classes, best first,
    as ``{"index", "label", "probability"}`` (label None without ``labels``).

    Raises DataError when ``labels`` does not name every class.
    """
    if logits.ndim != 2:
        raise DataError(f"top_k takes logits of shape (N, classes), got {list(logits.shape)}")
    if labels is not None and len(labels) != logits.shape[1]:
        raise DataError(f"{len(labels)} labels for {logits.shape[1]} classes")
    probabilities = softmax(logits)
    k = min(k, logits.shape[1])
    rows = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:k]
        rows.append(
            [
                {
                    "index": int(i),
                    "label": labels[i] if labels is not None else None,
                    "probability": float(row[i]),
                }
                for i in best
            ]
        )
    return rows
