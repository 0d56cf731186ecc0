"""The TensorRT Session: device and portability checks run everywhere; engines need a GPU.

The refusal logic (cpu device, missing extra, build record vs this machine, optimization
profile) is pure or runs before TensorRT is imported, so it is tested on every machine; every
test that runs an engine skips with the reason where TensorRT or a CUDA GPU is missing.
"""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.artifact import Artifact, sha256_file
from shipyard.errors import BackendError, InputError, MissingExtraError
from shipyard.runtimes import open_session
from shipyard.runtimes.tensorrt import (
    RECORD_FORMAT,
    TensorRtSession,
    check_compatible,
    compatibility_problems,
    cuda_device_index,
    import_tensorrt,
    profile_violation,
    read_build_record,
    record_path,
)

HAS_TENSORRT = find_spec("tensorrt") is not None
HAS_GPU = HAS_TENSORRT and torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs TensorRT and a CUDA GPU")

MISSING = (
    "TensorRT target needs the 'tensorrt' extra: pip install 'shipyard[tensorrt]' "
    "(could not import 'tensorrt')"
)
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.9.0.34"}


def _engine(
    small_onnx: Artifact, folder: Path, record: dict[str, object] | None = None
) -> Artifact:
    """A tensorrt artifact on disk (bytes that are no real plan) with its build record."""
    path = folder / "model.fp16.plan"
    path.write_bytes(b"not a real engine")
    if record is not None:
        full = {"format": RECORD_FORMAT, "sha256": sha256_file(path), **H100, **record}
        record_path(path).write_text(json.dumps(full), encoding="utf-8")
    return Artifact("tensorrt-fp16", "tensorrt", small_onnx.signature, path=path)


# --- before TensorRT is imported --------------------------------------------------------------


def test_the_cpu_is_refused_with_the_way_out(small_onnx: Artifact, tmp_path: Path) -> None:
    engine = _engine(small_onnx, tmp_path)
    with pytest.raises(BackendError, match="TensorRT needs an NVIDIA GPU") as caught:
        open_session(engine, device="cpu")
    assert "run the ONNX artifact on the CPU" in str(caught.value)
    with pytest.raises(BackendError, match="unknown device 'gpu' for tensorrt"):
        open_session(engine, device="gpu")


@pytest.mark.skipif(HAS_GPU, reason="checks the failure where TensorRT or a GPU is missing")
def test_without_a_device_an_engine_opens_on_the_gpu(small_onnx: Artifact, tmp_path: Path) -> None:
    # open_session's default device is the backend's own: "cuda" for TensorRT, so validation,
    # bench and serve (which name no device) reach TensorRT instead of a CPU refusal.
    with pytest.raises(BackendError, match="'tensorrt' extra|needs an NVIDIA GPU with CUDA"):
        open_session(_engine(small_onnx, tmp_path))


def test_device_names() -> None:
    assert cuda_device_index("cuda") == 0 and cuda_device_index("cuda:3") == 3
    with pytest.raises(BackendError, match="unknown device"):
        cuda_device_index("cuda:x")


def test_missing_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(MissingExtraError) as caught:
        import_tensorrt()
    assert str(caught.value) == MISSING


def test_opening_on_cuda_without_tensorrt_or_gpu_says_which(
    small_onnx: Artifact, tmp_path: Path
) -> None:
    if HAS_GPU:
        pytest.skip("needs a machine without TensorRT or without a CUDA GPU")
    engine = _engine(small_onnx, tmp_path, {})
    expected = (MissingExtraError, MISSING) if not HAS_TENSORRT else (BackendError, "NVIDIA GPU")
    with pytest.raises(expected[0]) as caught:
        open_session(engine, device="cuda")
    assert expected[1] in str(caught.value)


# --- portability: the build record against this machine (pure) ----------------------------


def test_same_machine_is_compatible() -> None:
    assert compatibility_problems(H100, {**H100, "cuda": "12.8"}) == []
    check_compatible(H100, dict(H100), "model.plan")  # no error


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (
            {"gpu": "NVIDIA A100-SXM4-80GB"},
            "GPU: built for NVIDIA H100 80GB HBM3, this machine has NVIDIA A100-SXM4-80GB",
        ),
        ({"compute_capability": "8.0"}, "compute capability: built for 9.0, this machine has 8.0"),
        ({"tensorrt": "10.3.0"}, "TensorRT: built for 10.9.0.34, this machine has 10.3.0"),
    ],
)
def test_a_different_machine_is_refused(changed: dict[str, str], expected: str) -> None:
    current = {**H100, **changed}
    assert compatibility_problems(H100, current) == [expected]
    with pytest.raises(BackendError) as caught:
        check_compatible(H100, current, "out/model.fp16.plan")
    message = str(caught.value)
    assert message.startswith(
        "the TensorRT engine out/model.fp16.plan was built on another machine"
    )
    assert expected in message
    assert "not portable" in message and "rebuild the engine on this machine" in message


def test_an_incomplete_record_is_not_trusted() -> None:
    problems = compatibility_problems({"gpu": H100["gpu"]}, H100)
    assert problems == [
        "compute capability: built for unrecorded, this machine has 9.0",
        "TensorRT: built for unrecorded, this machine has 10.9.0.34",
    ]


def test_build_record_is_read_and_must_match_the_engine(
    small_onnx: Artifact, tmp_path: Path
) -> None:
    engine = _engine(small_onnx, tmp_path, {"precision": "fp16"})
    assert engine.path is not None
    record = read_build_record(engine.path)
    assert record["precision"] == "fp16" and record["gpu"] == H100["gpu"]
    engine.path.write_bytes(b"another engine")  # replaced without its record
    with pytest.raises(BackendError, match="describes another engine.*sha256 differs"):
        read_build_record(engine.path)
    record_path(engine.path).write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(BackendError, match="not a shipyard TensorRT build record"):
        read_build_record(engine.path)
    record_path(engine.path).unlink()
    with pytest.raises(BackendError, match="no build record model.fp16.plan.json.*verify_build"):
        read_build_record(engine.path)


def test_profile_violations_name_the_range() -> None:
    assert profile_violation("x", (8, 3, 224, 224), (1, 3, 224, 224), (32, 3, 224, 224)) is None
    message = profile_violation("x", (64, 3, 224, 224), (1, 3, 224, 224), (32, 3, 224, 224))
    assert message is not None
    assert "dimension 0 is 64, but the TensorRT engine was built for 1..32" in message
    assert "min_batch/max_batch covering 64" in message
    fixed = profile_violation("x", (2, 3, 32, 32), (2, 3, 224, 224), (2, 3, 224, 224))
    assert fixed is not None and "dimension 2 is 32" in fixed and "built for 224 " in fixed


# --- real engines: TensorRT and a CUDA GPU ---------------------------------------------------


@pytest.fixture(scope="module")
def small_engine(small_onnx: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    from shipyard.passes.convert_tensorrt import TensorRtConfig, convert_tensorrt

    if not HAS_GPU:
        pytest.skip("needs TensorRT and a CUDA GPU")
    folder = tmp_path_factory.mktemp("trt")
    config = TensorRtConfig(precision="fp32", min_batch=1, opt_batch=4, max_batch=8)
    return convert_tensorrt(small_onnx, folder / "small.plan", config)


@needs_gpu
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch_matches_onnxruntime(
    batch: int, small_onnx: Artifact, small_engine: Artifact
) -> None:
    feeds = small_onnx.signature.example_inputs(batch=batch, seed=batch)
    with open_session(small_engine, device="cuda") as session:
        assert isinstance(session, TensorRtSession) and session.backend == "tensorrt"
        outputs = session.run(feeds)
    assert list(outputs) == ["logits"]
    assert outputs["logits"].shape == (batch, 10) and outputs["logits"].dtype == np.float32
    want = open_session(small_onnx, threads=1).run(feeds)["logits"]
    np.testing.assert_allclose(outputs["logits"], want, atol=1e-4, rtol=1e-4)


@needs_gpu
def test_outside_the_profile_is_an_input_error(small_engine: Artifact) -> None:
    session = open_session(small_engine, device="cuda")
    assert session.profile == {"x": ((1, 1, 8, 8), (8, 1, 8, 8))}  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="dimension 0 is 9.*built for 1..8"):
        session.run(small_engine.signature.example_inputs(batch=9))
    with pytest.raises(InputError, match="dtype float64"):
        session.run({"x": np.zeros((2, 1, 8, 8))})


@needs_gpu
def test_an_engine_from_another_machine_is_refused(small_engine: Artifact, tmp_path: Path) -> None:
    assert small_engine.path is not None
    copy = tmp_path / small_engine.path.name
    copy.write_bytes(small_engine.path.read_bytes())
    record = json.loads(record_path(small_engine.path).read_text())
    record_path(copy).write_text(json.dumps({**record, "gpu": "NVIDIA Some Other GPU"}))
    moved = Artifact("t", "tensorrt", small_engine.signature, path=copy)
    with pytest.raises(BackendError, match="built for NVIDIA Some Other GPU.*not portable"):
        open_session(moved, device="cuda")
    # unchecked, TensorRT itself loads it (it is this GPU's engine after all)
    with open_session(moved, device="cuda", verify_build=False) as session:
        assert session.run(moved.signature.example_inputs(batch=2))["logits"].shape == (2, 10)
