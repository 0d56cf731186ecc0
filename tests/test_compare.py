"""Polygraphy-style comparison and bisection on real exported models."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from shipyard.artifact import Artifact
from shipyard.compare import bisect, compare
from shipyard.data import Dataset
from shipyard.errors import BackendError, InputError
from shipyard.examples.digits import validation
from shipyard.passes.export import ExportConfig, export_onnx
from shipyard.passes.quantize import QuantizeConfig, quantize_onnx
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import load_model, torch_artifact
from shipyard.validate import Gates
from tests.conftest import SMALL_SIGNATURE, small_net
from tests.test_cli import shipyard as run_cli


def _tampered(source: Artifact, path: Path, op_type: str = "Conv") -> tuple[Artifact, str]:
    """A copy of ``source`` with the first ``op_type`` node's weight scaled: a planted bug."""
    model = onnx.load(str(source.path))
    node = next(n for n in model.graph.node if n.op_type == op_type)
    weight = next(i for i in model.graph.initializer if i.name == node.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(model, str(path))
    return load_model(str(path), source.signature, name="tampered"), node.output[0]


@pytest.fixture(scope="module")
def digits_artifacts(tmp_path_factory: pytest.TempPathFactory, digits_model: torch.nn.Module):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("compare")
    reference = torch_artifact(digits_model, SMALL_SIGNATURE)
    fp32 = export_onnx(reference, folder / "fp32.onnx", ExportConfig(name="fp32"))
    x, y = validation()
    int8 = quantize_onnx(fp32, folder / "int8.onnx", QuantizeConfig.static_qdq_u8s8(name="int8"),
                         Dataset({"x": x[:64]}))  # fmt: skip
    return reference, fp32, int8, Dataset({"x": x}, y)


def test_compare_matrix_runs_reference_once(digits_artifacts) -> None:  # type: ignore[no-untyped-def]
    reference, fp32, int8, data = digits_artifacts
    reports = compare([reference, fp32, int8], data, Gates(max_accuracy_drop=0.005))
    assert [r.candidate for r in reports] == ["fp32", "int8"]
    assert reports[0].outputs[0].max_abs < 1e-4 and reports[0].passed
    assert reports[1].outputs[0].max_abs > reports[0].outputs[0].max_abs
    assert reports[1].accuracy_drop is not None and reports[1].accuracy_drop <= 0.005
    with pytest.raises(InputError, match="at least two"):
        compare([reference])


def test_bisect_finds_the_planted_bug(digits_artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, fp32, _, data = digits_artifacts
    tampered, planted = _tampered(fp32, tmp_path / "tampered.onnx")
    result = bisect(fp32, tampered, data.take(4).inputs)
    first = result.first_divergence
    assert first is not None and first.tensor == planted and first.op_type == "Conv"
    assert all(d.ok for d in result.compared[: result.compared.index(first)])
    assert bisect(fp32, fp32, data.take(4).inputs).first_divergence is None


def test_bisect_needs_onnx(digits_artifacts) -> None:  # type: ignore[no-untyped-def]
    reference, fp32, _, _ = digits_artifacts
    with pytest.raises(InputError, match="is not ONNX"):
        bisect(reference, fp32)
    with pytest.raises(InputError, match="gates: atol: Input should be greater than or equal"):
        bisect(fp32, fp32, atol=-1.0)


def test_bisect_of_graphs_with_other_inputs_names_the_candidate(
    small_onnx: Artifact, tmp_path: Path
) -> None:
    image = TensorSpec(name="image", dtype="float32", shape=("batch", 1, 8, 8))
    renamed = export_onnx(
        torch_artifact(small_net(), Signature(inputs=(image,), outputs=SMALL_SIGNATURE.outputs)),
        tmp_path / "renamed.onnx",
        ExportConfig(name="renamed"),
    )
    pattern = r"cannot run renamed \(onnx, .*\) on the reference's inputs \(x\)"
    with pytest.raises(BackendError, match=pattern):
        bisect(small_onnx, renamed)


def test_compare_command_exit_codes(digits_artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, fp32, _, _ = digits_artifacts
    _, planted = _tampered(fp32, tmp_path / "tampered.onnx")
    same = run_cli("compare", fp32.path, fp32.path, "--atol", "1e-6")  # type: ignore[arg-type]
    assert same.returncode == 0, same.stderr  # the same file twice: labelled #1 and #2
    assert f"{fp32.path.name}#2" in same.stdout
    ok = run_cli("compare", fp32.path, tmp_path / "tampered.onnx", "--json")  # type: ignore[arg-type]
    assert ok.returncode == 0, ok.stderr  # no gate given: nothing can fail
    assert json.loads(ok.stdout)[0]["outputs"][0]["max_abs"] > 0
    diverged = run_cli("compare", fp32.path, tmp_path / "tampered.onnx", "--bisect")  # type: ignore[arg-type]
    assert diverged.returncode == 1
    assert f"first divergence: tensor '{planted}'" in diverged.stdout
