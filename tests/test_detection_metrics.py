"""task: detection: frame-level precision, recall and F1 at 0.5, and the max_f1_drop gate."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.detection_metrics import detection_scores
from shipyard.errors import DataError
from shipyard.gates import Gates
from shipyard.validate import build_report

LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
# detects frames 0, 1, 2 (hits), 4 (false alarm) and misses 3 and 8; 0.5 counts as speech
SCORES = np.array([0.9, 0.5, 0.7, 0.49, 0.8, 0.1, 0.0, 0.2, 0.3, 0.4], np.float32)


def test_precision_recall_and_f1_by_hand() -> None:
    found = detection_scores(SCORES[:, None], LABELS)
    assert found.precision == pytest.approx(3 / 4) and found.recall == pytest.approx(3 / 5)
    assert found.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_undefined_cases_are_none_or_zero_and_bad_labels_are_refused() -> None:
    assert detection_scores(SCORES, np.zeros(10)).f1 is None  # no speech frame to find
    assert detection_scores(np.zeros(10), LABELS).f1 == 0.0  # finds nothing
    assert detection_scores(np.where(LABELS, np.nan, 0.0), LABELS).f1 is None
    with pytest.raises(DataError, match="frame labels of 0 and 1, got also \\[2\\]"):
        detection_scores(SCORES, LABELS * 2)
    with pytest.raises(DataError, match="9 labels for 10 frames"):
        detection_scores(SCORES, LABELS[:9])


def test_the_f1_drop_gate() -> None:
    perfect = {"probability": LABELS[:, None].astype(np.float32)}
    report = build_report(
        "ref", "cand", perfect, {"probability": SCORES[:, None]}, LABELS,
        Gates(max_f1_drop=0.01), task="detection",
    )  # fmt: skip
    assert report.f1_reference == 1.0 and report.f1_drop == pytest.approx(1 - 2 / 3)
    nonfinite, gate = report.gates
    assert nonfinite.gate == "nonfinite" and nonfinite.passed
    assert gate.gate == "max_f1_drop" and not gate.passed and not report.passed
    same = build_report("r", "c", perfect, perfect, LABELS, Gates(max_f1_drop=0.0), "detection")
    assert same.passed and same.to_dict()["f1_drop"] == 0.0
    unlabelled = build_report("r", "c", perfect, perfect, None, Gates(max_f1_drop=0.0), "detection")
    assert not unlabelled.passed  # nothing to measure the drop on: the gate fails
