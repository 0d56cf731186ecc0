from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.errors import DataError, QuantizeError
from shipyard.passes import quantize
from shipyard.passes.context import PassContext
from shipyard.passes.quantize import QuantizeConfig, quantize_onnx, run_quantize
from shipyard.passes.quantize_config import PRESETS
from shipyard.runtimes import open_session
from shipyard.sources import load_model
from shipyard.validate import Gates, validate


@pytest.fixture(scope="module")
def calibration_data() -> Dataset:
    from shipyard.examples.digits import calibration

    x, _ = calibration(256)
    return Dataset({"x": x})


def _producers(model: onnx.ModelProto) -> dict[str, str]:
    return {output: node.op_type for node in model.graph.node for output in node.output}


def _float_initializers(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}


def test_static_qdq_u8s8_keeps_accuracy_and_shrinks_the_file(
    digits_onnx: Artifact, held_out: Dataset, calibration_data: Dataset, tmp_path: Path
) -> None:
    config = QuantizeConfig.static_qdq_u8s8()
    quantized = quantize_onnx(digits_onnx, tmp_path / "q.onnx", config, calibration_data)
    report = validate(digits_onnx, quantized, held_out, Gates(max_accuracy_drop=0.005))
    assert report.passed, [g.describe() for g in report.failures()]
    assert report.accuracy_candidate is not None and report.accuracy_candidate >= 0.97
    # 3.74x here: int8 weights with int32 biases and the Q/DQ nodes stop just short of 4x.
    assert digits_onnx.size_bytes / quantized.size_bytes >= 3.5
    onnx.checker.check_model(str(quantized.path), full_check=True)
    assert quantized.signature == digits_onnx.signature
    assert quantized.name == "onnx-int8-static-qdq-u8s8"
    assert [r.name for r in quantized.provenance] == ["export", "quantize"]
    record = quantized.provenance[-1]
    assert record.config == config.model_dump()
    notes = record.notes
    assert notes["bytes_before"] == digits_onnx.size_bytes
    assert notes["bytes_after"] == quantized.size_bytes
    assert notes["quantized_ops"]["Conv"] == 3 and notes["quantized_ops"]["Gemm"] == 1
    assert notes["preprocess"] == "ran"
    assert isinstance(notes["reduce_range"], bool) and notes["reduce_range_reason"].startswith(
        "auto"
    )
    assert notes["calibration"] == {"samples": 256, "batch": 8}
    # Nothing but the output is left beside it (no temporary folder, no half-written file).
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_in_ort_and_stays_accurate(
    preset: str,
    digits_onnx: Artifact,
    held_out: Dataset,
    calibration_data: Dataset,
    tmp_path: Path,
) -> None:
    config = PRESETS[preset]()
    out = quantize_onnx(digits_onnx, tmp_path / config.output_filename(), config, calibration_data)
    gates = {"static": Gates(max_accuracy_drop=0.005), "dynamic": Gates(max_accuracy_drop=0.01)}
    # fp16 keeps ~3 significant digits of every *intermediate* activation, so its output error
    # depends on the trained weights (0.0004-0.0103 max abs over the models our test runs
    # trained). A real fp16 bug (a wrong cast, overflow, NaN) lands far beyond these bounds.
    gates["fp16"] = Gates(atol=5e-2, min_cosine=0.99999, min_top1_agreement=1.0)
    report = validate(digits_onnx, out, held_out, gates[config.mode])
    assert report.passed, [g.describe() for g in report.failures()]
    if config.mode == "dynamic":
        assert out.provenance[-1].notes["quantized_ops"] == {"ConvInteger": 3, "MatMulInteger": 1}


def test_fp16_keeps_float32_inputs_and_outputs(digits_onnx: Artifact, tmp_path: Path) -> None:
    out = quantize_onnx(digits_onnx, tmp_path / "h.onnx", QuantizeConfig.fp16())
    model = onnx.load(str(out.path))
    io = [*model.graph.input, *model.graph.output]
    assert {v.type.tensor_type.elem_type for v in io} == {TensorProto.FLOAT}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    assert {i.data_type for i in model.graph.initializer if i.data_type in floats} == {floats[1]}
    assert out.signature == digits_onnx.signature
    assert out.provenance[-1].notes["ratio"] > 1.9
    report = validate(digits_onnx, out, gates=Gates(atol=5e-2, min_cosine=0.99999), samples=64)
    assert report.passed, [g.describe() for g in report.failures()]

    halves = quantize_onnx(
        digits_onnx, tmp_path / "h16.onnx", QuantizeConfig.fp16(keep_io_types=False)
    )
    assert [s.dtype for s in halves.signature.inputs] == ["float16"]
    feeds = {"x": np.zeros((2, 1, 8, 8), np.float16)}
    assert open_session(halves, threads=1).run(feeds)["output"].dtype == np.float16


def test_excluded_nodes_stay_float(
    digits_onnx: Artifact, held_out: Dataset, calibration_data: Dataset, tmp_path: Path
) -> None:
    graph = onnx.load(str(digits_onnx.path)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    gemm = next(n.name for n in graph.node if n.op_type == "Gemm")
    # a glob for the first conv, an op type for the classifier head
    config = QuantizeConfig.static_qdq_u8s8(
        exclude_nodes=["*" + convs[0][1:]], exclude_op_types=["Gemm"]
    )
    out = quantize_onnx(digits_onnx, tmp_path / "x.onnx", config, calibration_data)
    assert out.provenance[-1].notes["excluded_nodes"] == sorted([convs[0], gemm])
    model = onnx.load(str(out.path))
    producers, floats = _producers(model), _float_initializers(model)
    nodes = {n.name: n for n in model.graph.node}
    for name in (convs[0], gemm):  # float inputs, float weights
        assert not any(producers.get(i) == "DequantizeLinear" for i in nodes[name].input)
        assert nodes[name].input[1] in floats
    for name in convs[1:]:  # the others really are quantized
        assert any(producers.get(i) == "DequantizeLinear" for i in nodes[name].input)
    assert out.provenance[-1].notes["quantized_ops"]["Conv"] == 2
    report = validate(digits_onnx, out, held_out, Gates(max_accuracy_drop=0.005))
    assert report.passed


def test_bad_exclusions_list_real_names(digits_onnx: Artifact, tmp_path: Path) -> None:
    names = [n.name for n in onnx.load(str(digits_onnx.path)).graph.node]
    config = QuantizeConfig.dynamic_s8(exclude_nodes=["/head/*"])
    with pytest.raises(QuantizeError, match="'/head/\\*' matches none") as error:
        quantize_onnx(digits_onnx, tmp_path / "q.onnx", config)
    assert sum(name in str(error.value) for name in names) == 5
    with pytest.raises(QuantizeError, match="'conv' is not in the model.*Conv, Gemm"):
        quantize_onnx(
            digits_onnx, tmp_path / "q.onnx", QuantizeConfig.fp16(exclude_op_types=["conv"])
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("x", "problem"),
    [
        (np.zeros((16, 8, 8), np.float32), "has shape"),
        (np.zeros((16, 1, 8, 8), np.float64), "has dtype float64"),
    ],
)
def test_calibration_data_must_fit_the_signature(
    digits_onnx: Artifact, tmp_path: Path, x: np.ndarray, problem: str
) -> None:
    with pytest.raises(DataError, match=f"calibration.*{problem}"):
        quantize_onnx(
            digits_onnx, tmp_path / "q.onnx", QuantizeConfig.static_qdq_u8s8(), Dataset({"x": x})
        )
    with pytest.raises(DataError, match=r"missing input\(s\) \['x'\]"):
        quantize_onnx(
            digits_onnx,
            tmp_path / "q.onnx",
            QuantizeConfig.static_qdq_u8s8(),
            Dataset({"image": x}),
        )
    assert list(tmp_path.iterdir()) == []


def test_static_needs_calibration_data(digits_onnx: Artifact, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'data: calibration:'"):
        quantize_onnx(digits_onnx, tmp_path / "q.onnx", QuantizeConfig.static_qdq_s8s8())
    context = PassContext(workdir=tmp_path, reference=digits_onnx)
    with pytest.raises(DataError, match="'data: calibration:'"):
        run_quantize(digits_onnx, QuantizeConfig.static_qdq_s8s8(), context)


def test_pass_calibrates_on_train_data_when_no_calibration_set(
    digits_onnx: Artifact, calibration_data: Dataset, tmp_path: Path
) -> None:
    context = PassContext(tmp_path, digits_onnx, data={"train": calibration_data})
    config = QuantizeConfig.static_qdq_u8s8(calibration_samples=20)
    out = run_quantize(digits_onnx, config, context)
    assert out.path == tmp_path / config.output_filename()
    assert out.path.name.startswith("model.int8-static-qdq-u8s8-")  # + a digest of the samples
    assert out.provenance[-1].notes["calibration"] == {"samples": 20, "batch": 8, "data": "train"}


def test_torch_input_is_refused(digits_torch: Artifact, tmp_path: Path) -> None:
    source = digits_torch
    with pytest.raises(QuantizeError, match="put 'export' before 'quantize'"):
        quantize_onnx(source, tmp_path / "q.onnx", QuantizeConfig.dynamic_s8())


def test_failed_preprocess_warns_and_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # com.microsoft.Inverse runs in ORT, but ORT's symbolic shape inference does not know it:
    # quant_pre_process fails and (ORT 1.32) saves its temporary model into the current folder.
    weight = numpy_helper.from_array(np.eye(32, dtype=np.float32) * 2, "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
            helper.make_node("Inverse", ["m"], ["y"], domain="com.microsoft", name="inverse"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32, 32])],
        [weight],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), tmp_path / "inverse.onnx")
    source = load_model(str(tmp_path / "inverse.onnx"))
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.warns(UserWarning, match="quant_pre_process failed .*Incomplete symbolic shape"):
        quantized = quantize_onnx(source, out / "q.onnx", QuantizeConfig.dynamic_s8())
    assert quantized.provenance[-1].notes["preprocess"].startswith("failed: ")
    assert quantized.provenance[-1].notes["quantized_ops"] == {"MatMulInteger": 1}
    assert list(cwd.iterdir()) == [] and [p.name for p in out.iterdir()] == ["q.onnx"]
    x = np.tile(np.eye(32, dtype=np.float32), (2, 1, 1))
    np.testing.assert_allclose(
        open_session(quantized, threads=1).run({"x": x})["y"], x / 2, atol=0.02
    )


def test_config_rejects_what_ort_cannot_do() -> None:
    with pytest.raises(ValueError, match="int8 activations with uint8 weights"):
        QuantizeConfig(mode="static", activations="int8", weights="uint8")
    with pytest.raises(ValueError, match="format, calibration do.*not apply to mode 'dynamic'"):
        QuantizeConfig(mode="dynamic", format="qoperator", calibration="entropy")
    with pytest.raises(ValueError, match="per_channel do.*not apply to mode 'fp16'"):
        QuantizeConfig.fp16(per_channel=True)
    with pytest.raises(ValueError, match="filename"):
        QuantizeConfig.fp16(filename="../model.onnx")
    with pytest.raises(ValueError, match="extra"):
        QuantizeConfig.model_validate({"mode": "dynamic", "bits": 4})


def test_presets_have_unique_names_and_round_trip() -> None:
    configs = [make() for make in PRESETS.values()]
    assert len({c.output_filename() for c in configs}) == len({c.artifact_name() for c in configs})
    assert len({c.artifact_name() for c in configs}) == len(PRESETS)
    assert QuantizeConfig.fp16().output_filename() == "model.fp16.onnx"
    for config in configs:
        assert QuantizeConfig.model_validate(config.model_dump()) == config
    # a changed field that the label does not spell out still changes the file name
    assert QuantizeConfig.dynamic_s8(exclude_op_types=["Conv"]).label() != "int8-dynamic-s8"


def test_explicit_reduce_range_is_used_and_recorded(
    digits_onnx: Artifact, held_out: Dataset, tmp_path: Path
) -> None:
    config = QuantizeConfig.dynamic_s8(reduce_range=True)
    out = quantize_onnx(digits_onnx, tmp_path / config.output_filename(), config)
    notes = out.provenance[-1].notes
    assert out.path.name == "model.int8-dynamic-s8-rr.onnx"
    assert notes["reduce_range"] is True and notes["reduce_range_reason"] == "set in the config"
    assert validate(digits_onnx, out, held_out, Gates(max_accuracy_drop=0.01)).passed
    auto_u8 = quantize_onnx(digits_onnx, tmp_path / "u8.onnx", QuantizeConfig.dynamic_u8())
    assert auto_u8.provenance[-1].notes["reduce_range"] is False  # u8u8 never saturates


@pytest.mark.parametrize(
    ("isa", "expected", "reason"),
    [
        (["avx2", "sse4_2"], True, "x86 CPU without VNNI"),  # u8s8 kernels may saturate
        (["avx2", "avx512_vnni", "avx512f"], False, "has avx512_vnni"),
        (["avx2", "avx_vnni"], False, "has avx_vnni"),
        (["asimd", "neon"], False, "not an x86 CPU"),
        ([], False, "isa unknown"),
    ],
)
def test_auto_reduce_range_follows_the_cpus_isa(
    isa: list[str], expected: bool, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quantize, "hardware_fingerprint", lambda: {"isa": isa})
    decided, why = quantize._decide_reduce_range(QuantizeConfig.static_qdq_u8s8())
    assert decided is expected and why.startswith("auto: ") and reason in why
    # uint8 weights never need it, whatever the CPU
    assert quantize._decide_reduce_range(QuantizeConfig.dynamic_u8())[0] is False
