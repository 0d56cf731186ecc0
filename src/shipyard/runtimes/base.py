"""The Session contract and the backend registry."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from shipyard.artifact import Artifact
from shipyard.errors import BackendError, InputError
from shipyard.signature import Signature

# backend name -> "module:class"; imported lazily so that optional backends cost nothing.
BACKENDS: dict[str, str] = {
    "torch": "shipyard.runtimes.torch:TorchSession",
    "onnxruntime": "shipyard.runtimes.onnxruntime:OrtSession",
    "openvino": "shipyard.runtimes.openvino:OpenVinoSession",
    "litert": "shipyard.runtimes.litert:LiteRtSession",
    "tensorrt": "shipyard.runtimes.tensorrt:TensorRtSession",
}
# artifact format -> the backend used when none is named.
_DEFAULTS = {
    "torch": "torch",
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "tflite": "litert",
    "tensorrt": "tensorrt",
}

# backend -> the device used when none is named (a TensorRT engine runs on the GPU only).
_DEVICES = {"tensorrt": "cuda"}


class Session(ABC):
    """An artifact ready to run. Subclasses implement ``_run``; ``run`` checks inputs first."""

    backend: ClassVar[str]

    def __init__(self, artifact: Artifact, device: str, threads: int | None) -> None:
        self.artifact = artifact
        self.device = device
        self.requested_threads = threads

    @property
    def signature(self) -> Signature:
        return self.artifact.signature

    @property
    @abstractmethod
    def threads(self) -> int:
        """Threads the backend actually uses for one inference."""

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute once; return every output by name, in signature order."""

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Check ``feeds`` against the signature, run, and return the requested outputs."""
        self.signature.check_inputs(feeds)
        result = self._run(feeds)
        if outputs is None:
            return result
        unknown = [name for name in outputs if name not in result]
        if unknown:
            raise InputError(f"unknown output(s) {unknown}; the model has {list(result)}")
        return {name: result[name] for name in outputs}

    def close(self) -> None:  # noqa: B027 - optional hook; most backends hold nothing to free
        """Release backend resources (no-op by default)."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_backend(artifact: Artifact) -> str:
    return _DEFAULTS[artifact.format]


def open_session(
    artifact: Artifact,
    *,
    backend: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    **options: Any,
) -> Session:
    """Open ``artifact`` on ``backend`` (default: the natural one for its format).

    ``threads=None`` keeps the backend's own default; benchmarks pass an explicit count.
    ``options`` go to the backend (e.g. ``compile=True`` for torch).
    """
    name = backend or default_backend(artifact)
    device = device or _DEVICES.get(name, "cpu")
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known backends: {sorted(BACKENDS)}")
    if threads is not None and threads < 1:
        raise BackendError(f"threads must be >= 1, got {threads}")
    module_name, class_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    session: Session = cls(artifact, device=device, threads=threads, **options)
    return session
