"""LiteRT (TFLite) as a Session backend: a ``.tflite`` file run by ``ai_edge_litert``.

``ai_edge_litert.interpreter.Interpreter`` with an explicit thread count (tf.lite's
interpreter was 8x slower with 2 threads on the development machine); no TensorFlow and no
litert-torch are needed to run a model.

- Batch: a file converted with a dynamic batch (``shape_signature`` -1 on axis 0) is resized
  to each call's batch. A file with a fixed batch B (full-int8 files: the converter fixes
  the batch of static int8 graphs) runs any batch in chunks of B, the last one padded.
- Integer I/O: a full-int8 file takes int8 inputs and returns int8 outputs; the session
  takes and returns float32 as its signature says and applies the file's scale and zero
  point on the way in and out.
- Thread safety: the interpreter must not be used by two threads at once (measured: half of
  the calls raised when shared without a lock), so ``run`` holds a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from shipyard.artifact import Artifact
from shipyard.errors import BackendError, MissingExtraError
from shipyard.runtimes.base import Session
from shipyard.signature import Signature, TensorSpec


def import_litert() -> ModuleType:
    """``ai_edge_litert.interpreter``, or MissingExtraError naming the ``tflite`` extra."""
    try:
        from ai_edge_litert import interpreter
    except ImportError as error:
        raise MissingExtraError("TFLite target", "tflite", "ai_edge_litert") from error
    return interpreter


def _interpreter(path: Path, threads: int | None) -> Any:
    module = import_litert()
    try:
        return module.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
    except (ValueError, RuntimeError) as error:
        raise BackendError(f"LiteRT cannot load {path}: {error}") from error


def _quantization(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    """(scale, zero point) of an integer I/O tensor; None for float tensors."""
    if np.dtype(detail["dtype"]).kind == "f":
        return None
    scale, zero_point = detail["quantization"]
    if not scale:
        raise BackendError(
            f"tensor '{detail['name']}' is {np.dtype(detail['dtype']).name} without "
            f"quantization parameters; Shipyard runs float or quantized (scale, zero point) I/O"
        )
    return float(scale), int(zero_point)


_LOG = logging.getLogger("shipyard.runtimes.litert")
_DELEGATE_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
_allocation = threading.Lock()  # sessions open rarely: no fast path needed
_allocated_once = False


@contextlib.contextmanager
def _fd2_captured() -> Iterator[list[str]]:
    """Point file descriptor 2 at a temporary file; the lines it got land in the yielded
    list on exit. For C++ code that writes to stderr directly, past ``sys.stderr``."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += capture.read().decode(errors="replace").splitlines()


def _allocate(interpreter: Any) -> None:
    """``allocate_tensors()``. LiteRT announces its XNNPACK delegate on the process's first
    allocation with an INFO line on stderr, in every CLI run that touches a .tflite file: that
    one call keeps the line for the debug log and passes anything else through."""
    global _allocated_once
    with _allocation:
        if _allocated_once:
            interpreter.allocate_tensors()
            return
        with _fd2_captured() as lines:
            interpreter.allocate_tensors()
        _allocated_once = True
    for line in lines:
        if line.strip() == _DELEGATE_NOTICE:
            _LOG.debug("LiteRT: %s", line)
        else:
            print(line, file=sys.stderr)


def tflite_signature(path: str | Path) -> Signature:
    """The inputs and outputs of a ``.tflite`` file as the session takes them.

    Quantized (int8) I/O is float32 here, since the session applies scale and zero point;
    axis 0 is ``batch`` (dynamic files resize, fixed ones run in chunks).
    """
    interpreter = _interpreter(Path(path), 1)

    def specs(details: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        out = []
        for detail in details:
            dims = [int(d) for d in detail["shape_signature"]] or [int(d) for d in detail["shape"]]
            shape: list[int | str] = [
                "batch" if axis == 0 else d if d > 0 else f"d{axis}" for axis, d in enumerate(dims)
            ]
            dtype = np.dtype(detail["dtype"])
            name = "float32" if _quantization(detail) else dtype.name
            out.append(TensorSpec(name=detail["name"], dtype=name, shape=tuple(shape)))
        return tuple(out)

    return Signature(
        inputs=specs(interpreter.get_input_details()),
        outputs=specs(interpreter.get_output_details()),
    )


class LiteRtSession(Session):
    """One interpreter; tensors matched to the signature by position."""

    backend = "litert"

    def __init__(self, artifact: Artifact, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(artifact, device, threads)
        if device != "cpu":
            raise BackendError(
                f"device {device!r} is not supported by Shipyard's LiteRT backend; use "
                f"device='cpu' (GPU and NPU delegates are not wired in)"
            )
        assert artifact.path is not None
        self._interpreter = _interpreter(artifact.path, threads)
        self._threads = threads or os.cpu_count() or 1
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        signature = artifact.signature
        if len(inputs) != len(signature.inputs) or (
            signature.outputs and len(outputs) != len(signature.outputs)
        ):
            raise BackendError(
                f"{artifact.path.name} has {len(inputs)} inputs and {len(outputs)} outputs, but "
                f"the signature names {signature.input_names} and {signature.output_names}"
            )
        self._inputs = [(spec.name, d) for spec, d in zip(signature.inputs, inputs, strict=True)]
        names = signature.output_names or [d["name"] for d in outputs]
        self._outputs = list(zip(names, outputs, strict=True))
        first = inputs[0]
        dims = list(first["shape_signature"]) or list(first["shape"])
        # A fixed first axis is the batch the file was converted for.
        self.fixed_batch: int | None = int(dims[0]) if dims and dims[0] > 0 else None
        self._allocated: dict[int, tuple[int, ...]] = {}
        self._lock = threading.Lock()
        _allocate(self._interpreter)

    @property
    def threads(self) -> int:
        return self._threads

    def _invoke(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        interpreter = self._interpreter
        resized = False
        for name, detail in self._inputs:
            shape = tuple(feeds[name].shape)
            if self.fixed_batch is None and self._allocated.get(detail["index"]) != shape:
                interpreter.resize_tensor_input(detail["index"], list(shape))
                self._allocated[detail["index"]] = shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, detail in self._inputs:
            array = feeds[name]
            quant = _quantization(detail)
            if quant is not None:
                info = np.iinfo(detail["dtype"])
                scaled = np.round(array / quant[0]) + quant[1]
                array = np.clip(scaled, info.min, info.max).astype(detail["dtype"])
            interpreter.set_tensor(detail["index"], np.ascontiguousarray(array))
        interpreter.invoke()
        results = []
        for _, detail in self._outputs:
            value = interpreter.get_tensor(detail["index"])  # a copy
            quant = _quantization(detail)
            if quant is not None:
                value = (value.astype(np.float32) - quant[1]) * np.float32(quant[0])
            results.append(value)
        return results

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [name for name, _ in self._outputs]
        batch = self.fixed_batch
        total = len(next(iter(feeds.values())))
        with self._lock:
            if batch is None or total == batch:
                return dict(zip(names, self._invoke(feeds), strict=True))
            chunks: list[list[np.ndarray]] = []
            for start in range(0, total, batch):
                part = {k: v[start : start + batch] for k, v in feeds.items()}
                short = batch - len(next(iter(part.values())))
                if short:  # pad the last chunk to the file's batch; drop the padding after
                    part = {k: np.concatenate([v, np.zeros_like(v[:1]).repeat(short, 0)])
                            for k, v in part.items()}  # fmt: skip
                out = self._invoke(part)
                chunks.append([o[: batch - short] for o in out])
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}

    def close(self) -> None:
        self.__dict__.pop("_interpreter", None)
