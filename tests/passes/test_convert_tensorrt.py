"""convert_tensorrt: config, the int8 QDQ check and the profile run everywhere; builds need a GPU.

Without TensorRT or a GPU (CI) the checks that come before TensorRT is touched are tested for
real, and every test that builds an engine skips with the reason.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.errors import ConvertError, MissingExtraError, PassError
from shipyard.passes.context import PassContext
from shipyard.passes.convert_tensorrt import (
    TensorRtConfig,
    convert_tensorrt,
    profile_shapes,
    qdq_problems,
    run_convert_tensorrt,
)
from shipyard.passes.quantize import QuantizeConfig, quantize_onnx
from shipyard.runtimes import open_session
from shipyard.runtimes.tensorrt import record_path
from shipyard.signature import Signature, TensorSpec

HAS_TENSORRT = find_spec("tensorrt") is not None
needs_gpu = pytest.mark.skipif(
    not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs TensorRT and a CUDA GPU"
)


@pytest.fixture(scope="module")
def calibration() -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset({"x": rng.standard_normal((32, 1, 8, 8)).astype(np.float32)})


@pytest.fixture(scope="module")
def symmetric_qdq(
    small_onnx: Artifact, calibration: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Artifact:
    """A QDQ model TensorRT can build: int8, symmetric, float biases (the tensorrt preset)."""
    target = tmp_path_factory.mktemp("qdq") / "symmetric.onnx"
    return quantize_onnx(small_onnx, target, QuantizeConfig.tensorrt_s8s8(), calibration)


def _context(tmp_path: Path, reference: Artifact) -> PassContext:
    return PassContext(workdir=tmp_path, reference=reference)


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_and_names() -> None:
    config = TensorRtConfig()
    assert (config.precision, config.min_batch, config.opt_batch, config.max_batch) == (
        "fp32",
        1,
        8,
        32,
    )
    assert config.workspace_mb == 1024 and config.tf32 is False
    assert config.output_filename() == "model.fp32.plan"
    assert TensorRtConfig(precision="int8").artifact_name() == "tensorrt-int8"
    assert TensorRtConfig(precision="fp16").output_filename() == "model.fp16.plan"
    named = TensorRtConfig(name="trt", filename="resnet.engine")
    assert (named.artifact_name(), named.output_filename()) == ("trt", "resnet.engine")
    assert TensorRtConfig(dims={"seq": (1, 64, 128)}).range_of("seq") == (1, 64, 128)
    assert config.range_of("batch") == (1, 8, 32)
    dumped = TensorRtConfig(precision="fp16", dims={"seq": (1, 2, 3)}).model_dump(mode="json")
    assert TensorRtConfig(**dumped).dims == {"seq": (1, 2, 3)}


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="min_batch <= opt_batch <= max_batch"):
        TensorRtConfig(min_batch=4, opt_batch=2)
    with pytest.raises(ValidationError, match="min_batch <= opt_batch <= max_batch"):
        TensorRtConfig(opt_batch=64, max_batch=32)
    with pytest.raises(ValidationError):
        TensorRtConfig(min_batch=0)
    with pytest.raises(ValidationError, match="dims.seq must satisfy"):
        TensorRtConfig(dims={"seq": (8, 4, 16)})
    with pytest.raises(ValidationError, match="extra"):
        TensorRtConfig(calibrator="entropy")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TensorRtConfig(precision="int4")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TensorRtConfig(filename="../model.plan")
    with pytest.raises(ValidationError):
        TensorRtConfig(optimization_level=6)
    with pytest.raises(ValidationError):
        TensorRtConfig(workspace_mb=0)


# --- what is checked before TensorRT is touched -----------------------------------------------


def test_only_onnx_artifacts_are_converted(
    small_torch: Artifact, small_onnx: Artifact, tmp_path: Path
) -> None:
    with pytest.raises(ConvertError, match="needs an ONNX artifact.*put 'export'"):
        run_convert_tensorrt(small_torch, TensorRtConfig(), _context(tmp_path, small_torch))
    assert list(tmp_path.iterdir()) == []


def test_int8_needs_a_qdq_model(small_onnx: Artifact, tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="no QuantizeLinear nodes.*mode: static, format: qdq"):
        convert_tensorrt(small_onnx, tmp_path / "m.plan", TensorRtConfig(precision="int8"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("preset", "reason"),
    [
        ("static_qdq_u8s8", "uint8 zero points"),
        ("static_qdq_s8s8", "non-zero int8 zero points"),
    ],
)
def test_int8_refuses_asymmetric_qdq(
    preset: str, reason: str, small_onnx: Artifact, calibration: Dataset, tmp_path: Path
) -> None:
    """Shipyard's static presets calibrate asymmetric activations, which TensorRT cannot run."""
    config = getattr(QuantizeConfig, preset)()
    quantized = quantize_onnx(small_onnx, tmp_path / "q.onnx", config, calibration)
    target = tmp_path / "out" / "m.plan"
    with pytest.raises(ConvertError, match=reason) as caught:
        convert_tensorrt(quantized, target, TensorRtConfig(precision="int8"))
    message = str(caught.value)
    assert "symmetric int8 QDQ" in message and "'ActivationSymmetric': True" in message
    assert "int32 constants (quantized biases)" in message  # ORT quantizes biases by default
    assert not target.parent.exists()


def test_symmetric_qdq_passes_the_check(symmetric_qdq: Artifact) -> None:
    assert symmetric_qdq.path is not None
    assert qdq_problems(onnx.load(str(symmetric_qdq.path))) == []


def test_a_quantized_model_is_built_as_int8_only(symmetric_qdq: Artifact, tmp_path: Path) -> None:
    for precision in ("fp32", "fp16"):
        config = TensorRtConfig(precision=precision)
        with pytest.raises(ConvertError, match="is quantized.*precision: int8"):
            convert_tensorrt(symmetric_qdq, tmp_path / "m.plan", config)


def test_qdq_problems_names_each_kind() -> None:
    """The pure graph check on hand-made graphs: QOperator, dynamic, and a clean QDQ pair."""
    from onnx import TensorProto, helper

    def graph(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    pair = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    assert qdq_problems(graph(pair, [scale, zero])) == []
    shifted = helper.make_tensor("z", TensorProto.INT8, [], [3])
    assert "2 Q/DQ nodes have non-zero" in qdq_problems(graph(pair, [scale, shifted]))[0]
    dynamic = [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "ys", "yz"])]
    problems = qdq_problems(graph(dynamic, []))
    assert len(problems) == 1 and "DynamicQuantizeLinear (QOperator or dynamic)" in problems[0]


def test_profile_covers_every_dynamic_dim() -> None:
    signature = Signature(
        inputs=(
            TensorSpec(name="ids", dtype="int64", shape=("batch", "seq")),
            TensorSpec(name="image", shape=("batch", 3, 224, 224)),
        )
    )
    config = TensorRtConfig(min_batch=1, opt_batch=4, max_batch=16, dims={"seq": (8, 64, 256)})
    network = {"ids": (-1, -1), "image": (-1, 3, 224, 224)}
    assert profile_shapes(network, signature, config) == {
        "ids": {"min": [1, 8], "opt": [4, 64], "max": [16, 256]},
        "image": {"min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [16, 3, 224, 224]},
    }
    # a dynamic dim not named in dims takes the batch range; static networks need no profile
    plain = TensorRtConfig()
    assert profile_shapes({"ids": (-1, -1)}, signature, plain)["ids"]["max"] == [32, 32]
    fixed = Signature(inputs=(TensorSpec(name="x", shape=(2, 1, 8, 8)),))
    assert profile_shapes({"x": (2, 1, 8, 8)}, fixed, plain) == {}


def test_profile_refuses_a_network_that_lost_a_dynamic_dim() -> None:
    signature = Signature(inputs=(TensorSpec(name="x", shape=("batch", 1, 8, 8)),))
    with pytest.raises(ConvertError, match="fixes dimension 0 of input 'x' to 1"):
        profile_shapes({"x": (1, 1, 8, 8)}, signature, TensorRtConfig())
    with pytest.raises(ConvertError, match="does not describe"):
        profile_shapes({"x": (-1, 8, 8)}, signature, TensorRtConfig())


def test_a_second_pass_may_not_overwrite_the_first(small_onnx: Artifact, tmp_path: Path) -> None:
    (tmp_path / "model.fp16.plan").write_bytes(b"earlier")
    with pytest.raises(PassError, match="give this convert_tensorrt its own 'filename'"):
        run_convert_tensorrt(
            small_onnx, TensorRtConfig(precision="fp16"), _context(tmp_path, small_onnx)
        )


@pytest.mark.skipif(HAS_TENSORRT, reason="needs a machine without TensorRT")
def test_without_tensorrt_the_extra_is_named(small_onnx: Artifact, tmp_path: Path) -> None:
    with pytest.raises(MissingExtraError) as caught:
        convert_tensorrt(small_onnx, tmp_path / "m.plan", TensorRtConfig(precision="fp16"))
    assert str(caught.value) == (
        "TensorRT target needs the 'tensorrt' extra: pip install 'shipyard[tensorrt]' "
        "(could not import 'tensorrt')"
    )
    assert list(tmp_path.iterdir()) == []


# --- real builds: TensorRT and a CUDA GPU -------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_runs_like_onnxruntime(precision: str, small_onnx: Artifact, tmp_path: Path) -> None:
    config = TensorRtConfig(precision=precision, max_batch=16)  # type: ignore[arg-type]
    engine = run_convert_tensorrt(small_onnx, config, _context(tmp_path, small_onnx))
    assert (engine.format, engine.name) == ("tensorrt", f"tensorrt-{precision}")
    assert engine.path == tmp_path / f"model.{precision}.plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"model.{precision}.plan",
        f"model.{precision}.plan.json",
    ]
    record = json.loads(record_path(engine.path).read_text())
    assert record["precision"] == precision and record["gpu"] == torch.cuda.get_device_name(0)
    assert record["profile"] == {
        "x": {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [16, 1, 8, 8]}
    }
    notes = engine.provenance[-1].notes
    assert [r.name for r in engine.provenance] == ["export", "convert_tensorrt"]
    assert notes["tensorrt"] == record["tensorrt"] and notes["build_record"].endswith(".json")
    atol = 1e-4 if precision == "fp32" else 2e-2
    with open_session(small_onnx) as ort_session, open_session(engine, device="cuda") as trt:
        for batch in (1, 5, 16):
            feeds = small_onnx.signature.example_inputs(batch=batch, seed=batch)
            got, want = trt.run(feeds)["logits"], ort_session.run(feeds)["logits"]
            np.testing.assert_allclose(got, want, atol=atol, rtol=atol)


@needs_gpu
def test_int8_from_symmetric_qdq(
    symmetric_qdq: Artifact, small_onnx: Artifact, tmp_path: Path
) -> None:
    engine = convert_tensorrt(symmetric_qdq, tmp_path / "q.plan", TensorRtConfig(precision="int8"))
    assert "explicit quantization" in engine.provenance[-1].notes["mode"]
    feeds = small_onnx.signature.example_inputs(batch=8, seed=1)
    with open_session(small_onnx) as ort_session, open_session(engine, device="cuda") as trt:
        got, want = trt.run(feeds)["logits"], ort_session.run(feeds)["logits"]
    cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine > 0.98
