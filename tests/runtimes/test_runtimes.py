from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from shipyard.artifact import Artifact
from shipyard.errors import BackendError, InputError
from shipyard.runtimes import open_session


@pytest.mark.parametrize("which", ["torch", "onnx"])
def test_one_contract_for_both_backends(
    which: str, small_torch: Artifact, small_onnx: Artifact
) -> None:
    artifact = small_torch if which == "torch" else small_onnx
    feeds = artifact.signature.example_inputs(batch=4)
    with open_session(artifact, threads=1) as session:
        outputs = session.run(feeds)
        assert list(outputs) == ["logits"]
        assert outputs["logits"].shape == (4, 10) and outputs["logits"].dtype == np.float32
        assert session.threads == 1
        assert session.run(feeds, outputs=["logits"]).keys() == {"logits"}
        with pytest.raises(InputError, match="unknown output"):
            session.run(feeds, outputs=["probs"])


@pytest.mark.parametrize("which", ["torch", "onnx"])
def test_inputs_are_checked_before_running(
    which: str, small_torch: Artifact, small_onnx: Artifact
) -> None:
    artifact = small_torch if which == "torch" else small_onnx
    session = open_session(artifact, threads=1)
    with pytest.raises(InputError, match="dimension 1 must be 1, got 3"):
        session.run({"x": np.zeros((2, 3, 8, 8), np.float32)})
    with pytest.raises(InputError, match="dtype float64, expected float32"):
        session.run({"x": np.zeros((2, 1, 8, 8))})
    with pytest.raises(InputError, match="missing input"):
        session.run({})


def test_torch_and_onnxruntime_agree(small_torch: Artifact, small_onnx: Artifact) -> None:
    feeds = small_torch.signature.example_inputs(batch=8, seed=3)
    a = open_session(small_torch).run(feeds)["logits"]
    b = open_session(small_onnx).run(feeds)["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers() and ort.get_device() == "GPU",
    reason="needs a machine without a CUDA GPU",
)
def test_gpu_provider_that_cannot_start_fails_loudly(small_onnx: Artifact) -> None:
    # ORT silently falls back to CPU; the session must notice and refuse.
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        open_session(small_onnx, device="cuda")


def test_provider_options_are_not_dropped_silently(small_onnx: Artifact) -> None:
    # ORT accepts and ignores options given to its CPU provider; we refuse them instead.
    with pytest.raises(BackendError, match="provider_options apply to the cuda and tensorrt"):
        open_session(small_onnx, provider_options={"trt_fp16_enable": True})
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match="TensorrtExecutionProvider"):
            open_session(small_onnx, device="tensorrt", provider_options={"trt_fp16_enable": True})


def test_torch_cuda_without_gpu_fails(small_torch: Artifact) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    with pytest.raises(BackendError, match="no CUDA GPU"):
        open_session(small_torch, device="cuda")


def test_unknown_backend_and_bad_threads(small_onnx: Artifact) -> None:
    with pytest.raises(BackendError, match="unknown backend 'tvm'"):
        open_session(small_onnx, backend="tvm")
    with pytest.raises(BackendError, match="threads must be >= 1"):
        open_session(small_onnx, threads=0)


def test_torch_compile_option(small_torch: Artifact) -> None:
    feeds = small_torch.signature.example_inputs(batch=2)
    eager = open_session(small_torch).run(feeds)["logits"]
    compiled = open_session(small_torch, compile=True).run(feeds)["logits"]
    np.testing.assert_allclose(eager, compiled, atol=1e-5)
