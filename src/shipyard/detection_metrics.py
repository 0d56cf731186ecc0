"""The metrics of ``task: detection``: one yes/no decision per frame (is this 32 ms chunk
speech?), judged against labelled frames: precision, recall and F1 of the frames whose score
reaches ``THRESHOLD``.

A voice-activity detector answers with a probability per chunk and is used with a threshold,
so the metric that matters to its users is the frame-level F1 at that threshold (gated as
``max_f1_drop``), not AUC: an int8 model can keep its ranking and still move probabilities
across 0.5. Silero VAD's own default threshold is 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shipyard.binary_metrics import row_scores
from shipyard.errors import DataError

#: A frame is detected when its score is at or above this (silero-vad's default).
THRESHOLD = 0.5


@dataclass(frozen=True)
class DetectionScores:
    """One model's frame-level precision, recall and F1 (None where undefined: no positive
    label, or a NaN/Inf score)."""

    precision: float | None
    recall: float | None
    f1: float | None


def detection_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as bool ``[N]``; DataError unless every value is 0 or 1."""
    flat = np.asarray(labels).reshape(-1)
    values = set(np.unique(flat).tolist())
    if not values <= {0, 1}:
        raise DataError(
            f"task: detection needs frame labels of 0 and 1, got also {sorted(values - {0, 1})[:5]}"
        )
    return flat.astype(bool)


def detection_scores(
    output: np.ndarray, labels: np.ndarray, threshold: float = THRESHOLD
) -> DetectionScores:
    """Precision, recall and F1 of ``output`` (one score per frame, ``[N]`` or ``[N, 1]``)
    thresholded at ``threshold``, against 0/1 ``labels`` (one per frame)."""
    scores, truth = row_scores(output, "the first output"), detection_labels(labels)
    if len(scores) != len(truth):
        raise DataError(f"{len(truth)} labels for {len(scores)} frames: give one label per frame")
    if not np.isfinite(scores).all():  # the nonfinite gate says which output and how many
        return DetectionScores(None, None, None)
    detected = scores >= threshold
    hits = int(np.count_nonzero(detected & truth))
    positives, predicted = int(np.count_nonzero(truth)), int(np.count_nonzero(detected))
    if positives == 0:
        return DetectionScores(None, None, None)
    precision = hits / predicted if predicted else 0.0
    recall = hits / positives
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return DetectionScores(precision, recall, f1)


__all__ = ["THRESHOLD", "DetectionScores", "detection_labels", "detection_scores"]
