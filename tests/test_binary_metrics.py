"""task: binary: AUC and log-loss on held-out labels, the max_auc_drop gate, and where they
show (validation table, manifest rows), on the real MovieLens model."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import log_loss, roc_auc_score

from shipyard.artifact import Artifact
from shipyard.binary_metrics import binary_labels, binary_scores, row_scores
from shipyard.cli import render
from shipyard.data import Dataset
from shipyard.errors import DataError
from shipyard.recipe import parse_recipe
from shipyard.report import candidate_rows
from shipyard.validate import Gates, build_report, run_alone, validate


def _text(renderable: object) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_onnx_export_keeps_the_auc_and_the_gate_carries_its_bound(
    recsys_torch: Artifact, recsys_onnx: Artifact, recsys_held_out: Dataset
) -> None:
    report = validate(
        recsys_torch,
        recsys_onnx,
        recsys_held_out,
        Gates(max_auc_drop=1e-4),
        batch_size=4096,
        task="binary",
    )
    assert report.passed and report.accuracy_reference is None
    assert report.auc_reference is not None and report.auc_reference > 0.69
    assert report.auc_drop == pytest.approx(0.0, abs=1e-6)
    assert 0.6 < report.log_loss_candidate < 0.66  # type: ignore[operator]
    gate = next(g for g in report.gates if g.gate == "max_auc_drop")
    assert gate.bound == "max" and gate.limit == 1e-4 and gate.passed
    data = report.to_dict()
    assert data["auc_drop"] == report.auc_drop and data["auc_candidate"] == report.auc_candidate
    text = _text(render.validation(report))
    assert f"AUC: torch {report.auc_reference:.4f}, onnx {report.auc_candidate:.4f}" in text
    assert "log-loss" in text and "max_auc_drop" in text


def test_scores_match_scikit_learn_and_logits_have_no_log_loss(
    recsys_torch: Artifact, recsys_held_out: Dataset
) -> None:
    from shipyard.examples.recsys import predict

    assert recsys_torch.module is not None
    probability = predict(recsys_torch.module, recsys_held_out.inputs)
    labels = recsys_held_out.labels
    assert labels is not None
    scores = binary_scores(probability, labels)
    assert scores.auc == pytest.approx(roc_auc_score(labels, probability))
    assert scores.log_loss == pytest.approx(log_loss(labels, probability), rel=1e-6)
    logits = np.log(probability / (1 - probability))[:, None]  # [N, 1], outside [0, 1]
    from_logits = binary_scores(logits, labels)
    assert from_logits.auc == pytest.approx(scores.auc, abs=1e-6) and from_logits.log_loss is None


def test_a_worse_candidate_fails_the_gate_by_its_auc_drop(recsys_held_out: Dataset) -> None:
    """Real held-out labels; the candidate's scores are the reference's with noise added."""
    labels = recsys_held_out.labels
    assert labels is not None
    rng = np.random.default_rng(0)
    good = np.where(labels == 1, 0.6, 0.4) + rng.normal(0, 0.3, len(labels))
    worse = good + rng.normal(0, 0.5, len(labels))
    report = build_report(
        "ref", "cand", {"p": good}, {"p": worse}, labels, Gates(max_auc_drop=0.01), "binary"
    )
    assert report.auc_drop is not None and report.auc_drop > 0.05
    (gate,) = report.failures()
    assert gate.gate == "max_auc_drop" and gate.value == report.auc_drop
    assert gate.overshoot() == pytest.approx((report.auc_drop - 0.01) / 0.01)
    # NaN scores: the AUC cannot be measured, so the gate fails instead of passing silently
    broken = worse.copy()
    broken[3] = np.nan
    nan = build_report("ref", "cand", {"p": good}, {"p": broken}, labels, Gates(max_auc_drop=1))
    assert nan.auc_candidate is None  # classification task: no AUC at all
    nan = build_report(
        "ref", "cand", {"p": good}, {"p": broken}, labels, Gates(max_auc_drop=1), "binary"
    )
    assert nan.auc_candidate is None and not nan.passed
    assert {g.gate for g in nan.failures()} == {"nonfinite", "max_auc_drop"}


def test_binary_tasks_refuse_outputs_and_labels_they_cannot_score() -> None:
    with pytest.raises(DataError, match=r"one score per row.*shape \[4, 2\]"):
        row_scores(np.zeros((4, 2)))
    with pytest.raises(DataError, match="labels of 0 and 1, got also \\[2\\]"):
        binary_labels(np.array([0, 1, 2]))
    with pytest.raises(DataError, match="every label is 1; AUC needs both classes"):
        binary_labels(np.ones(5))
    with pytest.raises(DataError, match="3 labels for 4 rows"):
        binary_scores(np.zeros(4), np.array([0, 1, 1]))


def test_run_alone_and_candidate_rows_carry_the_auc(
    recsys_torch: Artifact, recsys_onnx: Artifact, recsys_held_out: Dataset
) -> None:
    alone = run_alone(recsys_onnx, recsys_held_out, samples=4000, batch_size=4000, task="binary")
    assert alone.auc_candidate is not None and alone.auc_candidate > 0.6
    assert f"AUC: onnx {alone.auc_candidate:.4f}, log-loss" in _text(render.validation(alone))
    report = validate(
        recsys_torch, recsys_onnx, recsys_held_out, samples=4000, batch_size=4000, task="binary"
    )
    rows = candidate_rows(recsys_torch, [recsys_onnx], [report], None)
    assert rows[0]["auc"] == report.auc_reference and rows[0]["auc_drop"] == 0.0
    assert rows[1]["auc"] == report.auc_candidate and rows[1]["auc_drop"] == report.auc_drop
    assert rows[1]["accuracy"] is None


def test_recipes_take_task_binary_and_max_auc_drop() -> None:
    recipe = parse_recipe(
        "name: r\ntask: binary\nmodel: {source: m:f}\nvalidate: {gates: {max_auc_drop: 0.01}}\n"
    )
    assert recipe.task == "binary" and recipe.validate_.gates.max_auc_drop == 0.01
    with pytest.raises(Exception, match="task"):
        parse_recipe("name: r\ntask: ranking\nmodel: {source: m:f}\n")
