"""convert_tflite with the real litert-torch and LiteRT interpreter, on the trained digits CNN."""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.errors import DataError, MissingExtraError, PassError
from shipyard.passes.context import PassContext
from shipyard.passes.convert_tflite import TfliteConfig, convert_tflite, run_convert_tflite
from shipyard.passes.prune import PruneConfig, run_prune
from shipyard.runtimes import open_session
from shipyard.validate import Gates, validate

pytestmark = pytest.mark.skipif(
    find_spec("litert_torch") is None, reason="needs the 'tflite' extra"
)

EXACT = Gates(atol=1e-4, min_top1_agreement=1.0, max_accuracy_drop=0.0)
INT8 = Gates(min_top1_agreement=0.98, max_accuracy_drop=0.01)


def _logits(outputs: dict[str, np.ndarray]) -> np.ndarray:
    (value,) = outputs.values()
    return value


@pytest.fixture(scope="module")
def calibration_data() -> Dataset:
    from shipyard.examples.digits import calibration

    x, _ = calibration(256)
    return Dataset({"x": x})


@pytest.fixture(scope="module")
def converted(
    digits_torch: Artifact, calibration_data: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Artifact]:
    folder = tmp_path_factory.mktemp("tflite")
    configs = [
        TfliteConfig(),
        TfliteConfig(precision="dynamic_int8"),
        TfliteConfig(precision="weight_only_int8"),
        TfliteConfig(precision="int8"),
        TfliteConfig(precision="int8", channels_last_io=True, batch_size=8),
    ]
    return {
        config.artifact_name(): convert_tflite(
            digits_torch, folder / config.output_filename(), config, calibration_data
        )
        for config in configs
    }


def test_fp32_matches_pytorch_with_a_dynamic_batch(
    converted: dict[str, Artifact], digits_torch: Artifact, held_out: Dataset
) -> None:
    fp32 = converted["tflite-fp32"]
    assert fp32.path is not None and fp32.path.suffix == ".tflite"
    assert fp32.provenance[-1].notes["batch"] == "dynamic"
    report = validate(digits_torch, fp32, held_out, EXACT, batch_size=64, threads=1)
    assert report.passed, [g.describe() for g in report.failures()]
    assert report.outputs[0].max_abs < 1e-4
    assert report.accuracy_candidate is not None and report.accuracy_candidate > 0.95
    # One file, any batch: a single run of 7 equals 7 runs of 1.
    x = held_out.inputs["x"][:7]
    with open_session(fp32, threads=1) as session:
        together = _logits(session.run({"x": x}))
        apart = np.concatenate([_logits(session.run({"x": x[i : i + 1]})) for i in range(7)])
    np.testing.assert_allclose(together, apart, atol=1e-5)


@pytest.mark.parametrize("name", ["tflite-dynamic-int8", "tflite-weight-only-int8", "tflite-int8"])
def test_int8_variants_keep_the_accuracy_and_shrink_the_file(
    name: str, converted: dict[str, Artifact], digits_torch: Artifact, held_out: Dataset
) -> None:
    artifact = converted[name]
    report = validate(digits_torch, artifact, held_out, INT8, batch_size=64, threads=1)
    assert report.passed, [g.describe() for g in report.failures()]
    assert artifact.size_bytes < converted["tflite-fp32"].size_bytes / 3


def test_full_int8_has_integer_io_whose_scale_is_recorded_and_applied(
    converted: dict[str, Artifact], held_out: Dataset
) -> None:
    int8 = converted["tflite-int8"]
    io = int8.provenance[-1].notes["io"]
    (tensor,) = io["inputs"]
    assert tensor["dtype"] == "int8" and tensor["scale"] > 0
    assert io["outputs"][0]["dtype"] == "int8" and "zero_point" in io["outputs"][0]
    assert int8.signature.inputs[0].dtype == "float32"  # the session quantizes for the caller
    # The converter fixes the batch of static int8 graphs; other batches run in chunks.
    assert int8.provenance[-1].notes["batch"] == 1
    x = held_out.inputs["x"][:5]
    with open_session(int8, threads=1) as session:
        assert session.fixed_batch == 1  # type: ignore[attr-defined]
        out = _logits(session.run({"x": x}))
        assert out.dtype == np.float32 and out.shape == (5, 10)
        np.testing.assert_array_equal(out[3:4], _logits(session.run({"x": x[3:4]})))


def test_channels_last_io_takes_nhwc_and_validates_from_nchw_data(
    converted: dict[str, Artifact], digits_torch: Artifact, held_out: Dataset
) -> None:
    nhwc = converted["tflite-int8-nhwc"]
    spec = nhwc.signature.inputs[0]
    assert spec.shape == ("batch", 8, 8, 1) and spec.layout == "NHWC"
    assert nhwc.provenance[-1].notes["io"]["inputs"][0]["shape"] == [8, 8, 8, 1]
    # validate() transposes the channels-first held-out set for this artifact; a batch of 64
    # runs as 8 chunks of the file's batch 8, the last one padded (450 = 56 * 8 + 2).
    report = validate(digits_torch, nhwc, held_out, INT8, batch_size=64, threads=1)
    assert report.passed and report.samples == 450


def test_config_is_checked() -> None:
    with pytest.raises(ValidationError, match="calibration_samples applies to precision int8"):
        TfliteConfig(precision="fp32", calibration_samples=10)
    with pytest.raises(ValidationError, match="batch_size applies to precision int8"):
        TfliteConfig(precision="dynamic_int8", batch_size=4)
    assert TfliteConfig(precision="int8", channels_last_io=True).artifact_name() == (
        "tflite-int8-nhwc"
    )


def test_int8_without_calibration_data_says_where_to_put_it(
    digits_torch: Artifact, tmp_path: Path
) -> None:
    context = PassContext(workdir=tmp_path, reference=digits_torch)
    with pytest.raises(DataError, match="data: calibration:"):
        run_convert_tflite(digits_torch, TfliteConfig(precision="int8"), context)
    assert list(tmp_path.iterdir()) == []


def test_a_file_made_after_a_torch_pass_cannot_be_converted(
    digits_torch: Artifact, digits_onnx: Artifact, tmp_path: Path
) -> None:
    context = PassContext(workdir=tmp_path, reference=digits_torch)
    pruned = run_prune(
        digits_torch, PruneConfig(method="l1_unstructured", amount=0.2, layers=["Conv2d"]), context
    )
    # An ONNX file whose history holds that prune: the pruned module is not this pass's to find.
    after = Artifact(
        "onnx", "onnx", digits_onnx.signature, path=digits_onnx.path,
        provenance=[*pruned.provenance, *digits_onnx.provenance],
    )  # fmt: skip
    with pytest.raises(PassError, match="from: <name>"):
        run_convert_tflite(after, TfliteConfig(), context)
    # From the ONNX file made from the recipe's model, the model itself is converted.
    result = run_convert_tflite(digits_onnx, TfliteConfig(), context)
    assert [r.name for r in result.provenance] == ["convert_tflite"]


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, digits_torch: Artifact) -> None:
    from shipyard.passes.convert_tflite import import_litert_torch
    from shipyard.runtimes.litert import import_litert

    # None in sys.modules makes `import` raise ImportError, as if the package were absent.
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    expected = "TFLite target needs the 'tflite' extra: pip install 'shipyard[tflite]'"
    for load in (import_litert_torch, import_litert):
        with pytest.raises(MissingExtraError) as caught:
            load()
        assert str(caught.value).startswith(expected)
