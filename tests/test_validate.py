from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.artifact import Artifact
from shipyard.cli import main
from shipyard.data import Dataset
from shipyard.errors import ComparisonError, DataError, InputError
from shipyard.passes.export import export_onnx
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import torch_artifact
from shipyard.validate import Gates, build_report, compare_output, validate
from tests.conftest import SMALL_SIGNATURE, SmallNet, small_net


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
    # No gate is set, yet the report fails: on the NaN, and on nothing else.
    report = build_report("ref", "cand", {"y": ref}, {"y": cand}, None, Gates())
    assert not report.passed
    assert [(g.gate, g.output, g.value) for g in report.failures()] == [("nonfinite", "y", 1)]
    # The same NaN in the reference is not the candidate's fault.
    assert build_report("ref", "cand", {"y": cand}, {"y": cand}, None, Gates()).passed


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


class TwoHeads(torch.nn.Module):
    """The small net's logits plus its pooled features: one output more than the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_net()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(x)
        return self.net.head(features), features


def _onnx(module: torch.nn.Module, outputs: tuple[TensorSpec, ...], path: Path) -> Artifact:
    signature = Signature(inputs=SMALL_SIGNATURE.inputs, outputs=outputs)
    return export_onnx(torch_artifact(module.eval(), signature), path)


def test_outputs_of_another_shape_are_refused_with_both_shapes(
    small_torch: Artifact, small_onnx: Artifact, tmp_path: Path
) -> None:
    five = (TensorSpec(name="logits", dtype="float32", shape=("batch", 5)),)
    candidate = _onnx(SmallNet(classes=5), five, tmp_path / "five.onnx")
    with pytest.raises(ComparisonError) as caught:
        validate(small_torch, candidate, samples=8)
    message = str(caught.value)
    assert "output 'logits': torch gives shape [8, 10] but onnx gives [8, 5]" in message
    assert "same model" in message and "\n" not in message
    # Through the command line: one line on stderr and exit 2 (bad input), never 3 (a bug).
    assert main(["validate", str(small_onnx.path), str(candidate.path), "--samples", "8"]) == 2


def test_a_different_number_of_outputs_is_refused(
    small_torch: Artifact, small_onnx: Artifact, tmp_path: Path
) -> None:
    specs = (
        TensorSpec(name="logits", dtype="float32", shape=("batch", 10)),
        TensorSpec(name="features", dtype="float32", shape=("batch", 8)),
    )
    candidate = _onnx(TwoHeads(), specs, tmp_path / "two.onnx")
    pattern = r"torch returns 1 outputs \['logits'\] but onnx returns 2 \['logits', 'features'\]"
    with pytest.raises(ComparisonError, match=pattern):
        validate(small_torch, candidate, samples=8)
    assert main(["validate", str(small_onnx.path), str(candidate.path), "--samples", "8"]) == 2


def test_labels_that_do_not_fit_the_samples_are_a_data_error(
    small_torch: Artifact, small_onnx: Artifact
) -> None:
    data = _labelled(16)
    data.labels = data.labels[:10] if data.labels is not None else None
    with pytest.raises(DataError, match="10 labels for 16 samples"):
        validate(small_torch, small_onnx, data)


def test_out_of_range_gate_overrides_name_the_gate() -> None:
    with pytest.raises(InputError, match="gates: atol: Input should be greater than or equal"):
        Gates(rtol=0.1).merged(atol=-1.0)
    assert Gates(rtol=0.1).merged(atol=0.5, min_cosine=None) == Gates(rtol=0.1, atol=0.5)


def test_counts_no_comparison_can_use_are_refused(
    small_torch: Artifact, small_onnx: Artifact
) -> None:
    with pytest.raises(InputError, match="samples must be at least 1, got 0"):
        validate(small_torch, small_onnx, samples=0)
    with pytest.raises(InputError, match="batch_size must be at least 1, got 0"):
        validate(small_torch, small_onnx, _labelled(8), batch_size=0)
    empty = Dataset({"x": np.zeros((0, 1, 8, 8), np.float32)})
    with pytest.raises(DataError, match="holds no samples"):
        validate(small_torch, small_onnx, empty)


def _logits(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_top5_and_confident_top1_agreement() -> None:
    # 4 samples, 7 classes; the reference is confident (softmax top-1 >= 0.5) on rows 0, 1, 3.
    ref = _logits(
        [9, 0, 0, 0, 0, 0, 0],  # class 0, p ~ 1
        [0, 9, 0, 0, 0, 0, 0],  # class 1, p ~ 1
        [1.0, 1.1, 0, 0, 0, 0, 0],  # a near-tie: class 1, p = 0.32
        [0, 0, 0, 0, 0, 0, 2],  # class 6, p = exp(2) / (6 + exp(2)) = 0.55
    )
    cand = _logits(
        [9, 0, 0, 0, 0, 0, 0],  # agrees
        [0, 1, 9, 0, 0, 0, 0],  # flips a confident answer, class 1 still second
        [1.2, 1.1, 0, 0, 0, 0, 0],  # flips the near-tie
        [6, 5, 4, 3, 2, 1, 0],  # reference's class 6 is last: outside the top 5
    )
    stats = compare_output("logits", ref, cand, Gates())
    assert stats.top1_agreement == pytest.approx(1 / 4)
    assert stats.top5_agreement == pytest.approx(3 / 4)
    assert stats.confident_samples == 3
    assert stats.confident_top1_agreement == pytest.approx(1 / 3)


def test_agreement_gates_carry_their_bound() -> None:
    ref = _logits([9, 0, 0, 0, 0, 0], [0, 9, 0, 0, 0, 0], [1, 1.1, 0, 0, 0, 0])
    cand = _logits([9, 0, 0, 0, 0, 0], [0, 9, 0, 0, 0, 0], [1.2, 1.1, 0, 0, 0, 0])
    gates = Gates(min_top5_agreement=1.0, min_confident_top1_agreement=1.0, min_top1_agreement=0.9)
    report = build_report("fp32", "int8", {"y": ref}, {"y": cand}, None, gates)
    verdicts = {g.gate: g for g in report.gates}
    assert verdicts["min_top5_agreement"].passed and verdicts["min_top5_agreement"].bound == "min"
    assert verdicts["min_confident_top1_agreement"].value == 1.0  # the near-tie is not judged
    assert verdicts["min_confident_top1_agreement"].bound == "min"
    assert not verdicts["min_top1_agreement"].passed  # 2 of 3 over all samples
    assert [g.gate for g in report.failures()] == ["min_top1_agreement"]
    flipped = _logits([0, 9, 0, 0, 0, 0], [0, 9, 0, 0, 0, 0], [1, 1.1, 0, 0, 0, 0])
    failed = build_report("fp32", "int8", {"y": ref}, {"y": flipped}, None, gates)
    gate = next(g for g in failed.failures() if g.gate == "min_confident_top1_agreement")
    assert gate.value == 0.5 and gate.overshoot() == pytest.approx(0.5)
    assert "min_confident_top1_agreement [y]: 0.5 (limit 1) FAILED" in gate.describe()


def test_confident_gate_without_a_confident_sample_fails() -> None:
    ties = _logits([1, 1.1, 0], [0.5, 0, 0.4])
    gates = Gates(min_confident_top1_agreement=0.98)
    report = build_report("fp32", "int8", {"y": ties}, {"y": ties}, None, gates)
    assert report.outputs[0].confident_samples == 0
    assert report.outputs[0].confident_top1_agreement is None
    assert [g.describe() for g in report.failures()] == [
        "min_confident_top1_agreement [y]: n/a (limit 0.98) FAILED"
    ]


def test_agreement_is_left_out_for_outputs_that_are_not_class_scores() -> None:
    values = np.linspace(0, 1, 8, dtype=np.float32).reshape(8, 1)
    stats = compare_output("y", values, values, Gates(min_top5_agreement=0.99))
    assert stats.top5_agreement is None and stats.confident_top1_agreement is None
    gates = Gates(min_top5_agreement=0.99, min_confident_top1_agreement=0.9)
    report = build_report("a", "b", {"y": values}, {"y": values}, None, gates)
    assert [g.gate for g in report.gates] == ["nonfinite"]
