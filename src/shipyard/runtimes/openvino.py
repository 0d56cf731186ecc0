"""OpenVINO as a Session backend: an IR (``.xml`` + ``.bin``) compiled for the CPU.

``open_session(artifact, threads=1)`` compiles with explicit settings instead of OpenVINO's
machine-dependent defaults: ``INFERENCE_NUM_THREADS`` = threads, ``PERFORMANCE_HINT``
``LATENCY`` (one stream) or ``THROUGHPUT`` (``hint="throughput"``), and
``INFERENCE_PRECISION_HINT`` ``f32``. The last one matters: on CPUs with AVX-512 BF16 or AMX
OpenVINO otherwise computes in bfloat16 (the default on the development machine), which
changes results by ~1e-2 and makes parity with PyTorch depend on the hardware.
``inference_precision="bf16"`` / ``"f16"`` opt into that on purpose.

openvino is an optional extra; it is imported only when a session or the pass needs it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from shipyard.artifact import Artifact
from shipyard.errors import BackendError, MissingExtraError
from shipyard.runtimes.base import Session
from shipyard.signature import Signature, TensorSpec

_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def import_openvino() -> ModuleType:
    """``import openvino``, or MissingExtraError naming the extra that provides it."""
    try:
        import openvino
    except ImportError as error:
        raise MissingExtraError("OpenVINO target", "openvino", "openvino") from error
    return openvino


def port_names(ports: Any) -> list[set[str]]:
    """The tensor names of each model input or output port, in order."""
    return [set(port.get_names()) for port in ports]


def match_ports(wanted: list[str], available: list[set[str]], what: str) -> list[int]:
    """Port index for each wanted name: by name where OpenVINO kept it, else by position.

    OpenVINO keeps ONNX names, but an IR converted from torch may have no output names, and an
    IR from elsewhere may use its own; position is the signature's contract then.
    """
    if len(wanted) != len(available):
        raise BackendError(
            f"the OpenVINO model has {len(available)} {what}s but the signature names "
            f"{len(wanted)} ({wanted})"
        )
    return [
        next((j for j, names in enumerate(available) if name in names), i)
        for i, name in enumerate(wanted)
    ]


class OpenVinoSession(Session):
    """One compiled model and one reused InferRequest.

    Thread safety: an InferRequest must not run twice at once, so ``run`` holds a lock;
    concurrent callers of one session are serialized, not parallel. For parallel inference
    open one session per worker (with ``hint="throughput"`` OpenVINO sizes its streams for
    several concurrent requests; one synchronous request per session does not use them).
    """

    backend = "openvino"

    def __init__(
        self,
        artifact: Artifact,
        device: str = "cpu",
        threads: int | None = None,
        hint: Literal["latency", "throughput"] = "latency",
        inference_precision: Literal["f32", "bf16", "f16"] = "f32",
    ) -> None:
        super().__init__(artifact, device, threads)
        ov = import_openvino()
        core = ov.Core()
        if device != "cpu":
            raise BackendError(
                f"device {device!r} is not supported by Shipyard's OpenVINO backend; use "
                f"device='cpu' (OpenVINO {ov.__version__} sees {core.available_devices})"
            )
        if hint not in _HINTS:
            raise BackendError(f"unknown hint {hint!r} for openvino; use {sorted(_HINTS)}")
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": _HINTS[hint],
            "INFERENCE_PRECISION_HINT": inference_precision,
        }
        if hint == "latency":
            config["NUM_STREAMS"] = 1  # one request at a time: every thread on that request
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(artifact.path))
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as error:  # OpenVINO raises RuntimeError with its own check text
            raise BackendError(f"OpenVINO cannot load {artifact.path}: {error}") from error
        # OpenVINO caps the threads at the usable cores and splits them among its streams;
        # one inference runs on one stream, so report that stream's share.
        self.streams = int(self._compiled.get_property("NUM_STREAMS"))
        total = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self._threads = max(1, total // self.streams)
        self.config = config
        signature = artifact.signature
        self._inputs = dict(
            zip(
                signature.input_names,
                match_ports(signature.input_names, port_names(model.inputs), "input"),
                strict=True,
            )
        )
        outputs = signature.output_names or [
            port.any_name if port.get_names() else f"output_{i}"
            for i, port in enumerate(model.outputs)
        ]
        self._outputs = dict(
            zip(outputs, match_ports(outputs, port_names(model.outputs), "output"), strict=True)
        )
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    @property
    def threads(self) -> int:
        return self._threads

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {self._inputs[name]: array for name, array in feeds.items()}
        with self._lock:
            # share_inputs: OpenVINO reads the numpy buffers in place (it copies only
            # non-contiguous arrays). share_outputs=False: the request reuses its output
            # buffers on the next call, so callers must get their own copies.
            result = self._request.infer(inputs, share_inputs=True, share_outputs=False)
        return {name: result[index] for name, index in self._outputs.items()}

    def close(self) -> None:
        # Drop the request and compiled model now instead of at garbage collection, so a
        # benchmark that opens many sessions does not hold their memory.
        self.__dict__.pop("_request", None)
        self.__dict__.pop("_compiled", None)


# OpenVINO element type names -> numpy dtype names.
_OV_DTYPES = {
    "f32": "float32",
    "f16": "float16",
    "f64": "float64",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "boolean": "bool",
}


def ir_signature(path: str | Path) -> Signature:
    """The inputs and outputs of an OpenVINO IR (``.xml``): names, dtypes, dynamic dims."""
    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(path))
    except RuntimeError as error:
        raise BackendError(f"{path} is not a readable OpenVINO IR: {error}") from error

    def specs(ports: Any, kind: str) -> tuple[TensorSpec, ...]:
        out = []
        for i, port in enumerate(ports):
            name = port.get_any_name() if port.get_names() else f"{kind}_{i}"
            shape = port.get_partial_shape()
            dims: list[int | str] = [
                "batch"
                if d.is_dynamic and axis == 0
                else f"{name}_d{axis}"
                if d.is_dynamic
                else d.get_length()
                for axis, d in enumerate(shape)
            ]
            element = port.get_element_type().get_type_name()
            if element not in _OV_DTYPES:
                raise BackendError(f"{path}: {kind} '{name}' has unsupported type {element}")
            out.append(TensorSpec(name=name, dtype=_OV_DTYPES[element], shape=tuple(dims)))
        return tuple(out)

    return Signature(inputs=specs(model.inputs, "input"), outputs=specs(model.outputs, "output"))
