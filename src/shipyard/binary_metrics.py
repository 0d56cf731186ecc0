"""The metrics of ``task: binary`` (a model that scores one yes/no event per row: will this
user rate this item 4 or more, will this ad be clicked): ROC AUC and log-loss on held-out
labels, computed with scikit-learn.

AUC depends only on the order of the scores, so it is the gated metric (``max_auc_drop``):
it reads the same whether a model returns probabilities or logits. Log-loss needs
probabilities, and is reported only when every score lies in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from shipyard.errors import DataError


@dataclass(frozen=True)
class BinaryScores:
    """One model's AUC (None: some score is NaN or infinite) and log-loss (None: its scores are
    not all probabilities)."""

    auc: float | None
    log_loss: float | None


def row_scores(output: np.ndarray, name: str = "the output") -> np.ndarray:
    """One float64 score per row from an output of shape ``[N]`` or ``[N, 1]``; DataError for
    another shape (a binary task's model scores one event per row)."""
    if output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    if output.ndim != 1:
        raise DataError(
            f"task: binary needs one score per row, but {name} has shape {list(output.shape)}; "
            f"return [batch] or [batch, 1] (a probability or a logit per row)"
        )
    return output.astype(np.float64)


def binary_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as int64 ``[N]`` of 0 and 1; DataError naming what is wrong otherwise (other
    values, or one class only: AUC is undefined without both)."""
    flat = np.asarray(labels).reshape(-1)
    values = set(np.unique(flat).tolist())
    if not values <= {0, 1}:
        shown = sorted(values - {0, 1})[:5]
        raise DataError(f"task: binary needs labels of 0 and 1, got also {shown}")
    if len(values) < 2:
        raise DataError(
            f"task: binary: every label is {int(values.pop())}; AUC needs both classes in the "
            f"held-out data"
        )
    return flat.astype(np.int64)


def binary_scores(output: np.ndarray, labels: np.ndarray) -> BinaryScores:
    """AUC and log-loss of one model's first output against 0/1 ``labels`` (one per row)."""
    scores, truth = row_scores(output), binary_labels(labels)
    if len(scores) != len(truth):
        raise DataError(f"{len(truth)} labels for {len(scores)} rows: give one label per row")
    if not np.isfinite(scores).all():  # the nonfinite gate says which output and how many
        return BinaryScores(None, None)
    auc = float(roc_auc_score(truth, scores))
    probabilities = scores.min() >= 0.0 and scores.max() <= 1.0
    loss = float(log_loss(truth, scores, labels=[0, 1])) if probabilities else None
    return BinaryScores(auc, loss)
