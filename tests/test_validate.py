from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.passes.export import export_onnx
from shipyard.sources import torch_artifact
from shipyard.validate import Gates, compare_output, validate
from tests.conftest import SMALL_SIGNATURE, small_net


def _labelled(n: int = 96) -> Dataset:
    x = np.random.default_rng(1).standard_normal((n, 1, 8, 8)).astype(np.float32)
    logits = small_net()(torch.from_numpy(x)).detach().numpy()
    return Dataset({"x": x}, logits.argmax(axis=1))  # labels = the reference's own answers


class Shifted(torch.nn.Module):
    """The reference plus a constant on one logit: a candidate that parts ways."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.inner, self.shift = small_net(), shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out + torch.nn.functional.one_hot(torch.tensor(0), 10) * self.shift


def test_exported_model_passes_strict_gates(small_torch: Artifact, small_onnx: Artifact) -> None:
    gates = Gates(atol=1e-4, min_cosine=0.9999, min_top1_agreement=1.0, max_accuracy_drop=0.0)
    report = validate(small_torch, small_onnx, _labelled(), gates)
    assert report.passed, [g.describe() for g in report.failures()]
    assert report.samples == 96
    out = report.outputs[0]
    assert out.max_abs < 1e-4 and out.cosine > 0.9999 and out.top1_agreement == 1.0
    assert report.accuracy_reference == 1.0 and report.accuracy_drop == 0.0


def test_a_different_candidate_fails_the_gates(small_torch: Artifact, tmp_path: Path) -> None:
    candidate = export_onnx(torch_artifact(Shifted(5.0), SMALL_SIGNATURE), tmp_path / "s.onnx")
    gates = Gates(atol=1e-3, min_top1_agreement=0.99, max_accuracy_drop=0.01)
    report = validate(small_torch, candidate, _labelled(), gates)
    assert not report.passed
    failed = {g.gate for g in report.failures()}
    assert {"atol", "min_top1_agreement", "max_accuracy_drop"} <= failed
    assert report.outputs[0].max_abs == pytest.approx(5.0, abs=1e-3)
    assert report.accuracy_drop is not None and report.accuracy_drop > 0.01


def test_nan_in_candidate_always_fails() -> None:
    ref = np.ones((4, 3), np.float32)
    cand = ref.copy()
    cand[1, 2] = np.nan
    stats = compare_output("y", ref, cand, Gates())
    assert stats.nonfinite_candidate == 1 and stats.nonfinite_reference == 0
    assert stats.max_abs == 0.0  # the finite part agrees; the NaN is counted, not averaged


def test_rtol_and_atol_are_elementwise() -> None:
    ref = np.array([[100.0, 0.001]], np.float32)
    cand = np.array([[100.5, 0.001]], np.float32)
    assert compare_output("y", ref, cand, Gates(atol=0.01, rtol=0.01)).violations == 0
    assert compare_output("y", ref, cand, Gates(atol=0.01)).violations == 1


def test_accuracy_gate_without_labels_fails_rather_than_passes(
    small_torch: Artifact, small_onnx: Artifact
) -> None:
    report = validate(small_torch, small_onnx, None, Gates(max_accuracy_drop=0.01), samples=8)
    assert report.samples == 8
    assert [g.gate for g in report.failures()] == ["max_accuracy_drop"]


def test_report_serializes(small_torch: Artifact, small_onnx: Artifact) -> None:
    import json

    data = validate(small_torch, small_onnx, samples=4).to_dict()
    assert json.loads(json.dumps(data))["passed"] is True
