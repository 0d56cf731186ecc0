from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from shipyard.artifact import Artifact
from shipyard.errors import ExportError
from shipyard.passes.export import ExportConfig, export_onnx
from shipyard.runtimes import open_session
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import torch_artifact
from tests.conftest import SMALL_SIGNATURE


class DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # branches on a tensor value
            return x * 2
        return x - 1


class ExportHostile(torch.nn.Module):
    """Fails under torch.export only, so the TorchScript fallback has real work to do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            raise RuntimeError("custom kernel has no torch.export path")
        return torch.relu(x) * 3


def _parity(a: Artifact, b: Artifact, batch: int) -> float:
    feeds = a.signature.example_inputs(batch=batch, seed=batch)
    out_a = open_session(a, threads=1).run(feeds)
    out_b = open_session(b, threads=1).run(feeds)
    return max(float(np.abs(out_a[k] - out_b[j]).max()) for k, j in zip(out_a, out_b, strict=True))


def test_dynamo_export_is_checked_dynamic_and_matches_torch(
    small_torch: Artifact, tmp_path: Path
) -> None:
    exported = export_onnx(small_torch, tmp_path / "m.onnx")
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["logits"]
    assert exported.provenance[-1].notes["exporter"] == "dynamo"
    for batch in (1, 5, 17):  # the batch dimension really is dynamic
        assert _parity(small_torch, exported, batch) < 1e-5


def test_torchscript_exporter_when_asked(small_torch: Artifact, tmp_path: Path) -> None:
    exported = export_onnx(small_torch, tmp_path / "m.onnx", ExportConfig(dynamo=False))
    assert exported.provenance[-1].notes["exporter"] == "torchscript"
    assert _parity(small_torch, exported, 3) < 1e-5


def test_falls_back_to_torchscript_with_a_warning_naming_why(tmp_path: Path) -> None:
    sig = Signature(inputs=(TensorSpec(name="x", shape=("batch", 4)),))
    source = torch_artifact(ExportHostile(), sig)
    with pytest.warns(UserWarning, match="dynamo exporter failed .*no torch.export path"):
        exported = export_onnx(source, tmp_path / "m.onnx")
    assert exported.provenance[-1].notes["exporter"] == "torchscript"
    assert _parity(source, exported, 4) < 1e-6


def test_no_fallback_when_disabled(tmp_path: Path) -> None:
    sig = Signature(inputs=(TensorSpec(name="x", shape=("batch", 4)),))
    with pytest.raises(ExportError, match="no torch.export path"):
        export_onnx(
            torch_artifact(ExportHostile(), sig), tmp_path / "m.onnx", ExportConfig(fallback=False)
        )


def test_data_dependent_control_flow_gives_one_paragraph(tmp_path: Path) -> None:
    sig = Signature(inputs=(TensorSpec(name="x", shape=("batch", 4)),))
    with pytest.raises(ExportError) as error:
        export_onnx(torch_artifact(DataDependent(), sig), tmp_path / "m.onnx")
    message = str(error.value)
    assert "\n" not in message and len(message) < 600
    assert "test_export.py" in message and "if x.sum() > 0" in message
    assert "torch.where or torch.cond" in message
    # Nothing half-written is left behind.
    assert list(tmp_path.iterdir()) == []


def test_multiple_inputs_and_outputs(tmp_path: Path) -> None:
    class TwoHeads(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, (a * b).sum(dim=1)

    sig = Signature(
        inputs=(TensorSpec(name="a", shape=("batch", 3)), TensorSpec(name="b", shape=("batch", 3)))
    )
    source = torch_artifact(TwoHeads(), sig)
    assert source.signature.output_names == ["output_0", "output_1"]
    exported = export_onnx(source, tmp_path / "m.onnx")
    assert exported.signature.output_names == ["output_0", "output_1"]
    assert exported.signature.outputs[1].shape == ("batch",)
    assert _parity(source, exported, 6) < 1e-5


def test_filename_must_be_plain() -> None:
    with pytest.raises(ValueError, match="filename"):
        ExportConfig(filename="../escape.onnx")


def test_onnx_artifact_cannot_be_exported_again(small_onnx: Artifact, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="is already a model file: in a recipe, drop the export"):
        export_onnx(small_onnx, tmp_path / "again.onnx")


def test_signature_outputs_keep_declared_names(small_torch: Artifact) -> None:
    assert small_torch.signature == SMALL_SIGNATURE
