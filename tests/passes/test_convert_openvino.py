"""convert_openvino with the real OpenVINO and NNCF, on the trained digits CNN."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from shipyard.artifact import Artifact, PassRecord
from shipyard.data import Dataset
from shipyard.errors import ConvertError, DataError, PassError
from shipyard.passes.context import PassContext
from shipyard.passes.convert_openvino import (
    OpenVinoConfig,
    convert_openvino,
    run_convert_openvino,
)
from shipyard.runtimes import open_session
from shipyard.signature import Signature, TensorSpec
from shipyard.validate import Gates, validate

pytestmark = pytest.mark.skipif(find_spec("openvino") is None, reason="needs the 'openvino' extra")

EXACT = Gates(atol=1e-4, min_top1_agreement=1.0)


@pytest.fixture(scope="module")
def calibration_data() -> Dataset:
    from shipyard.examples.digits import calibration

    x, _ = calibration(300)
    return Dataset({"x": x})


def _context(tmp_path: Path, reference: Artifact, **data: Dataset) -> PassContext:
    return PassContext(workdir=tmp_path, reference=reference, data=data)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_fp32_from_onnx_matches_pytorch(
    digits_torch: Artifact, digits_onnx: Artifact, held_out: Dataset, tmp_path: Path
) -> None:
    result = run_convert_openvino(digits_onnx, OpenVinoConfig(), _context(tmp_path, digits_torch))
    report = validate(digits_torch, result, held_out, EXACT)
    assert report.passed, [g.describe() for g in report.failures()]
    assert report.samples == 450
    assert (result.name, result.format, result.signature) == (
        "openvino-fp32",
        "openvino",
        digits_onnx.signature,
    )
    assert [f.name for f in result.files()] == ["model.openvino.xml", "model.openvino.bin"]
    assert _leftovers(tmp_path) == []
    record = result.provenance[-1]
    assert [r.name for r in result.provenance] == ["export", "convert_openvino"]
    assert record.notes["converted_from"] == digits_onnx.describe()
    assert record.notes["bytes"] == result.size_bytes
    assert record.notes["input_shapes"] == {"x": "[?,1,8,8]"}
    assert record.notes["openvino"].startswith("20") and "nncf" not in record.notes
    assert record.notes["convert_seconds"] <= record.seconds


def test_fp32_from_torch_matches_pytorch(
    digits_torch: Artifact, digits_onnx: Artifact, held_out: Dataset, tmp_path: Path
) -> None:
    config = OpenVinoConfig(source="torch", filename="direct.xml")
    direct = run_convert_openvino(digits_torch, config, _context(tmp_path, digits_torch))
    # After file-level passes (export, quantize) the latest torch module is the recipe's.
    quantized = Artifact(
        "onnx-int8",
        "onnx",
        digits_onnx.signature,
        path=digits_onnx.path,
        provenance=[*digits_onnx.provenance, PassRecord("quantize", {"mode": "static"}, 0.0)],
    )
    config = OpenVinoConfig(source="torch", filename="via-reference.xml")
    via = run_convert_openvino(quantized, config, _context(tmp_path, digits_torch))
    for result in (direct, via):
        assert result.provenance[-1].notes["converted_from"] == digits_torch.describe()
        assert [r.name for r in result.provenance] == ["convert_openvino"]
        assert result.signature == digits_torch.signature
    for result in (direct, via):
        report = validate(digits_torch, result, held_out, EXACT)
        assert report.passed, [g.describe() for g in report.failures()]
        assert result.provenance[-1].notes["input_shapes"] == {"x": "[?,1,8,8]"}
        with open_session(result, threads=1) as session:  # outputs keep the signature's names
            assert list(session.run(held_out.take(3).inputs)) == ["output"]


def test_int8_keeps_accuracy_and_shrinks(
    digits_torch: Artifact,
    digits_onnx: Artifact,
    held_out: Dataset,
    calibration_data: Dataset,
    tmp_path: Path,
) -> None:
    context = _context(tmp_path, digits_torch, calibration=calibration_data)
    result = run_convert_openvino(digits_onnx, OpenVinoConfig(precision="int8"), context)
    assert result.name == "openvino-int8" and result.path == tmp_path / "model.openvino-int8.xml"
    report = validate(digits_torch, result, held_out, Gates(max_accuracy_drop=0.005))
    assert report.passed, [g.describe() for g in report.failures()]
    assert report.accuracy_candidate is not None and report.accuracy_candidate >= 0.97
    assert digits_onnx.size_bytes / result.size_bytes >= 3.0
    notes = result.provenance[-1].notes
    assert notes["calibration"] == {"samples": 300, "batch": 1, "data": "calibration"}
    assert notes["nncf"] and notes["quantize_seconds"] > 0
    assert notes["input_shapes"] == {"x": "[?,1,8,8]"}


def test_fp16_from_an_openvino_fp32_artifact(
    digits_torch: Artifact, digits_onnx: Artifact, held_out: Dataset, tmp_path: Path
) -> None:
    fp32 = convert_openvino(digits_onnx, tmp_path / "a.xml")
    fp16 = convert_openvino(fp32, tmp_path / "b.xml", OpenVinoConfig(precision="fp16"))
    assert fp16.name == "openvino-fp16"
    assert fp16.provenance[-1].notes["converted_from"] == fp32.describe()
    assert fp16.size_bytes < 0.6 * fp32.size_bytes
    gates = Gates(min_top1_agreement=0.99, max_accuracy_drop=0.005, min_cosine=0.9999)
    report = validate(digits_torch, fp16, held_out, gates)
    assert report.passed, [g.describe() for g in report.failures()]
    with pytest.raises(ConvertError, match="ONNX \\(or fp32 OpenVINO\\)"):
        convert_openvino(fp16, tmp_path / "c.xml")


def test_int8_without_calibration_data_writes_nothing(
    digits_onnx: Artifact, digits_torch: Artifact, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="needs calibration data"):
        run_convert_openvino(
            digits_onnx, OpenVinoConfig(precision="int8"), _context(tmp_path, digits_torch)
        )
    wrong = Dataset({"x": torch.zeros(4, 3, 8, 8).numpy()})
    with pytest.raises(DataError, match="does not fit the model"):
        convert_openvino(digits_onnx, tmp_path / "m.xml", OpenVinoConfig(precision="int8"), wrong)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_leaves_the_previous_ir_whole(digits_onnx: Artifact, tmp_path: Path) -> None:
    target = tmp_path / "model.xml"
    good = convert_openvino(digits_onnx, target)
    before = {f.name: f.read_bytes() for f in good.files()}
    # A signature that says dim 2 is dynamic: the saved IR fixes it to 8, so the check
    # after saving fails, between writing the files and renaming them.
    signature = Signature(inputs=(TensorSpec(name="x", shape=("batch", 1, "h", 8)),))
    liar = Artifact("onnx", "onnx", signature, path=digits_onnx.path)
    with pytest.raises(ConvertError, match="dimension 2 must stay dynamic"):
        convert_openvino(liar, target)
    assert {f.name: f.read_bytes() for f in good.files()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    # and into an empty folder: no .xml, no .bin, no temporary folder
    empty = tmp_path / "empty"
    with pytest.raises(ConvertError, match="must stay dynamic"):
        convert_openvino(liar, empty / "model.xml")
    assert list(empty.iterdir()) == []


def test_sources_refuse_what_they_cannot_convert(
    digits_torch: Artifact, digits_onnx: Artifact, tmp_path: Path
) -> None:
    context = _context(tmp_path, digits_torch)
    with pytest.raises(ConvertError, match="put 'export' before it"):
        run_convert_openvino(digits_torch, OpenVinoConfig(), context)
    # After a torch pass (prune) the recipe's module is not the latest one any more.
    pruned = Artifact(
        "onnx",
        "onnx",
        digits_onnx.signature,
        path=digits_onnx.path,
        provenance=[PassRecord("prune", {"amount": 0.5}, 0.0), *digits_onnx.provenance],
    )
    with pytest.raises(PassError, match="made by prune, export"):
        run_convert_openvino(pruned, OpenVinoConfig(source="torch"), context)
    assert list(tmp_path.iterdir()) == []


def test_a_second_pass_may_not_overwrite_the_first(
    digits_torch: Artifact, digits_onnx: Artifact, tmp_path: Path
) -> None:
    context = _context(tmp_path, digits_torch)
    run_convert_openvino(digits_onnx, OpenVinoConfig(), context)
    with pytest.raises(PassError, match="give this convert_openvino its own 'filename'"):
        run_convert_openvino(digits_torch, OpenVinoConfig(source="torch"), context)


def test_config_is_strict() -> None:
    assert OpenVinoConfig(precision="fp16").output_filename() == "model.openvino-fp16.xml"
    assert OpenVinoConfig(name="ov", filename="m.xml").artifact_name() == "ov"
    with pytest.raises(ValidationError, match="extra"):
        OpenVinoConfig(device="gpu")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        OpenVinoConfig(filename="../model.xml")
    with pytest.raises(ValidationError):
        OpenVinoConfig(precision="int4")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="does not apply to precision 'fp16'"):
        OpenVinoConfig(precision="fp16", calibration_samples=10)
    dumped = OpenVinoConfig(precision="int8", calibration_samples=10).model_dump()
    assert OpenVinoConfig(**dumped).calibration_samples == 10
