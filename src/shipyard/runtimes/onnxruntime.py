"""ONNX Runtime as a Session backend, with explicit threads and verified providers.

``onnx_signature(path)`` reads an ONNX file's inputs and outputs, as ``tflite_signature`` and
``ir_signature`` do for the other file formats.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from shipyard.artifact import Artifact
from shipyard.errors import BackendError, SourceError
from shipyard.runtimes.base import Session
from shipyard.signature import Signature, TensorSpec

# device -> providers in priority order; CPU stays last as ORT requires a fallback.
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def onnx_signature(path: str | Path) -> Signature:
    """Read the graph's inputs and outputs (initializers excluded) as a Signature."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise SourceError(f"{path} is not a readable ONNX model: {error}") from error
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dims: list[int | str] = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or f"{value.name}_d{axis}")
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return TensorSpec(name=value.name, dtype=dtype, shape=tuple(dims))

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return Signature(inputs=tuple(inputs), outputs=tuple(spec(v) for v in model.graph.output))


def onnx_external_files(path: str | Path) -> list[str]:
    """The external data files an ONNX file refers to, as written in it (relative to its
    folder, in order of first use): the files that must travel with it."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise SourceError(f"{path} is not a readable ONNX model: {error}") from error
    files: dict[str, None] = {}
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            files[entries["location"]] = None
    return list(files)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in [
                *([attribute.g] if attribute.HasField("g") else []),
                *attribute.graphs,
            ]:
                yield from _tensors(subgraph)


class OrtSession(Session):
    backend = "onnxruntime"

    def __init__(
        self,
        artifact: Artifact,
        device: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        provider_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``provider_options`` go to the device's first provider, e.g. for ``tensorrt``:
        ``{"trt_fp16_enable": True, "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "/var/cache/ort-trt"}`` (without a cache ORT rebuilds the
        engine at every session start)."""
        super().__init__(artifact, device, threads)
        if device not in _PROVIDERS:
            raise BackendError(f"unknown device {device!r} for onnxruntime; use {list(_PROVIDERS)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        wanted = _PROVIDERS[device]
        if provider_options and device == "cpu":
            # ORT ignores options given to its CPU provider without a word: refuse instead.
            raise BackendError(
                "provider_options apply to the cuda and tensorrt devices; on cpu set threads "
                "and optimization instead"
            )
        providers: list[Any] = list(wanted)
        if provider_options:
            providers[0] = (wanted[0], dict(provider_options))
        try:
            self._session = ort.InferenceSession(str(artifact.path), options, providers=providers)
        except Exception as error:  # ORT raises its own Fail/InvalidGraph types
            raise BackendError(f"ONNX Runtime cannot load {artifact.path}: {error}") from error
        # ORT silently falls back to CPU when a GPU provider cannot start: check what is active.
        active = self._session.get_providers()
        if wanted[0] not in active:
            raise BackendError(
                f"device {device!r} needs {wanted[0]}, but ONNX Runtime started only {active} "
                f"(installed onnxruntime {ort.__version__}, available: "
                f"{ort.get_available_providers()}); install onnxruntime-gpu with matching "
                f"CUDA/TensorRT libraries or use device='cpu'"
            )
        self.providers = active
        self._threads = threads or os.cpu_count() or 1
        self._output_names = [o.name for o in self._session.get_outputs()]

    @property
    def threads(self) -> int:
        return self._threads

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, values, strict=True))
