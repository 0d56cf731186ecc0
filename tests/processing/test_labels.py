"""Class labels: reading and checking a labels file, and naming a batch's top-k classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shipyard.errors import DataError
from shipyard.examples.efficientnet import LABELS_FILE
from shipyard.processing import read_labels, top_k


def test_labels_are_read_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog, hound\n", encoding="utf-8")
    assert read_labels(path) == ["cat", "dog, hound"]
    path.write_text("cat\ndog", encoding="utf-8")  # no final newline
    assert read_labels(path) == ["cat", "dog"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"cat\n\ndog\n", "line 2 is blank"), (b"\xff\xfe\x00", "cannot read")],
)
def test_bad_labels_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_labels(path)
    with pytest.raises(DataError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")


def test_top_k_names_the_most_likely_classes_best_first() -> None:
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    rows = top_k(logits, ["a", "b", "c", "d"], k=3)
    assert [[c["label"] for c in row] for row in rows] == [["b", "d", "c"], ["a", "b", "c"]]
    expected = np.exp(3.0) / np.exp([0.0, 3.0, 1.0, 2.0]).sum()
    assert rows[0][0]["probability"] == pytest.approx(expected)
    assert top_k(logits, None, k=9)[1][0] == {
        "index": 0,
        "label": None,
        "probability": rows[1][0]["probability"],
    }
    with pytest.raises(DataError, match="3 labels for 4 classes"):
        top_k(logits, ["a", "b", "c"])


def test_the_example_labels_name_the_1000_imagenet_classes_once_each() -> None:
    labels = read_labels(LABELS_FILE)
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby cat" and labels[967] == "espresso"
    assert (LABELS_FILE.parent / "LABELS-NOTICE.txt").read_text().count("MIT License") == 1
