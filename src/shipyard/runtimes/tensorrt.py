"""TensorRT as a Session backend: a serialized engine (``.plan``) run on an NVIDIA GPU.

A TensorRT engine is compiled for one GPU model and one TensorRT version: it is not portable.
The ``convert_tensorrt`` pass therefore writes a *build record* beside every engine
(``model.fp16.plan`` -> ``model.fp16.plan.json``) naming the GPU, its compute capability, the
TensorRT version, the precision, the optimization profile and the engine's sha256. Opening the
engine reads that record first and refuses, with a message that says so, to load an engine
built elsewhere (:func:`compatibility_problems` is the pure comparison), instead of failing
inside TensorRT or running an engine tuned for another chip.

Device memory is managed with torch CUDA tensors (torch is a core dependency), so the only
extra dependency is ``tensorrt`` itself (the ``tensorrt`` extra). Inputs are copied to the GPU,
the input shapes are set on the execution context for every call (dynamic batch within the
engine's optimization profile; outside it is an InputError), the engine runs with
``execute_async_v3`` on a private CUDA stream, and the outputs come back as numpy arrays named
by the signature.

Written against the TensorRT 10 Python API (tensor-name I/O: ``num_io_tensors``,
``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), which
TensorRT 11 keeps.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from shipyard.artifact import Artifact, sha256_file
from shipyard.errors import BackendError, InputError, MissingExtraError
from shipyard.runtimes.base import Session

log = logging.getLogger("shipyard.tensorrt")

#: The build record's ``format`` field; bump it when its meaning changes.
RECORD_FORMAT = "shipyard.tensorrt-build/1"
#: What must match between the build record and this machine for an engine to load.
PORTABILITY_KEYS = ("gpu", "compute_capability", "tensorrt")
_WHAT = {"gpu": "GPU", "compute_capability": "compute capability", "tensorrt": "TensorRT"}


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or MissingExtraError naming the extra that provides it.

    OSError too: a wheel whose native libraries cannot be loaded is as missing as no wheel.
    """
    try:
        import tensorrt
    except (ImportError, OSError) as error:
        raise MissingExtraError("TensorRT target", "tensorrt", "tensorrt") from error
    return tensorrt


def record_path(engine: Path) -> Path:
    """The build record beside ``engine``: ``model.fp16.plan`` -> ``model.fp16.plan.json``."""
    return engine.with_name(engine.name + ".json")


def cuda_device_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:1`` -> 1; anything else is a BackendError."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and (not index or index.isdigit()):
        return int(index or 0)
    if kind == "cpu":
        raise BackendError(
            "TensorRT needs an NVIDIA GPU: it cannot run on device 'cpu'; open the engine with "
            "device='cuda', or run the ONNX artifact on the CPU (backend onnxruntime) instead"
        )
    raise BackendError(f"unknown device {device!r} for tensorrt; use 'cuda' or 'cuda:N'")


def require_cuda(what: str, index: int = 0) -> Any:
    """torch, after checking that CUDA GPU ``index`` exists (torch is how we see the GPU)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendError(
            f"{what} needs an NVIDIA GPU with CUDA, but torch {torch.__version__} sees none "
            f"(torch.cuda.is_available() is False; a CPU-only torch build cannot see a GPU "
            f"either); engines are built and run on the GPU they are for"
        )
    if index >= torch.cuda.device_count():
        raise BackendError(
            f"{what}: device cuda:{index} asked for, but torch sees "
            f"{torch.cuda.device_count()} CUDA GPU(s)"
        )
    return torch


def build_environment(trt: ModuleType, index: int = 0) -> dict[str, str]:
    """What an engine built or run here depends on: GPU name, compute capability, TensorRT."""
    torch = require_cuda("TensorRT", index)
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "gpu": str(torch.cuda.get_device_name(index)),
        "compute_capability": f"{major}.{minor}",
        "tensorrt": str(trt.__version__),
        "cuda": str(torch.version.cuda),
    }


def compatibility_problems(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between the machine an engine was built on and this one (empty: none).

    Pure: compares the build record with :func:`build_environment`'s answer. A missing field
    in the record counts as a difference, since nothing then says the engine fits.
    """
    problems = []
    for key in PORTABILITY_KEYS:
        want, have = recorded.get(key), current.get(key)
        if want is None or str(want) != str(have):
            problems.append(
                f"{_WHAT[key]}: built for {want or 'unrecorded'}, this machine has {have}"
            )
    return problems


def check_compatible(
    recorded: Mapping[str, Any], current: Mapping[str, Any], engine: Path | str
) -> None:
    """Raise BackendError when the engine was built for another GPU or TensorRT version."""
    problems = compatibility_problems(recorded, current)
    if problems:
        raise BackendError(
            f"the TensorRT engine {engine} was built on another machine ({'; '.join(problems)}). "
            f"TensorRT engines are not portable across GPU models or TensorRT versions: rebuild "
            f"the engine on this machine (run the convert_tensorrt pass here, from the ONNX "
            f"artifact), or serve the ONNX artifact instead"
        )


def read_build_record(engine: Path) -> dict[str, Any]:
    """The build record beside ``engine``, checked to describe exactly this engine file."""
    path = record_path(engine)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise BackendError(
            f"the TensorRT engine {engine} has no build record {path.name} beside it, so nothing "
            f"says which GPU and TensorRT version it was built for (engines are not portable); "
            f"rebuild it with the convert_tensorrt pass, or pass verify_build=False to "
            f"open_session to load it unchecked"
        ) from error
    except (OSError, json.JSONDecodeError) as error:
        raise BackendError(f"cannot read the build record {path}: {error}") from error
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise BackendError(
            f"{path} is not a shipyard TensorRT build record (format {RECORD_FORMAT!r})"
        )
    digest = record.get("sha256")
    if digest is not None and digest != sha256_file(engine):
        raise BackendError(
            f"the build record {path.name} describes another engine than {engine.name} (sha256 "
            f"differs): the engine was replaced without its record; rebuild it"
        )
    return record


def profile_violation(
    name: str, shape: Sequence[int], low: Sequence[int], high: Sequence[int]
) -> str | None:
    """Why ``shape`` is outside the optimization profile [low, high] of input ``name``, or None."""
    if len(shape) != len(low):
        return f"input '{name}' has {len(shape)} dims, the engine expects {len(low)}"
    for axis, (got, lo, hi) in enumerate(zip(shape, low, high, strict=True)):
        if not lo <= got <= hi:
            allowed = f"{lo}" if lo == hi else f"{lo}..{hi}"
            return (
                f"input '{name}' has shape {tuple(shape)}: dimension {axis} is {got}, but the "
                f"TensorRT engine was built for {allowed} (its optimization profile); split the "
                f"batch, or rebuild with convert_tensorrt min_batch/max_batch covering {got}"
            )
    return None


def make_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps the errors (for our messages) and logs the rest to Python."""

    class _Logger(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            severity = trt.ILogger.Severity
            self._errors = {severity.INTERNAL_ERROR, severity.ERROR}
            self._levels = {severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG}

        def log(self, severity: Any, msg: str) -> None:
            if severity in self._errors:
                self.errors.append(str(msg))
                log.debug("TensorRT error: %s", msg)
            elif severity in self._levels:
                log.log(self._levels[severity], "TensorRT: %s", msg)

    return _Logger()


def torch_dtype(trt: ModuleType, dtype: Any) -> Any:
    """The torch dtype of a TensorRT DataType (the I/O types an ONNX model can have)."""
    import torch

    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int8: torch.int8,
        trt.uint8: torch.uint8,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise BackendError(f"TensorRT I/O type {dtype} has no torch equivalent")
    return table[dtype]


class TensorRtSession(Session):
    """One deserialized engine and one execution context on one CUDA GPU.

    ``verify_build=False`` skips the build record check (for engines built by other tools, on
    your own responsibility: TensorRT itself still refuses a plan from another version).
    Thread safety: the execution context holds the input shapes and tensor addresses of a
    call, so ``run`` holds a lock; open one session per worker for parallel inference.
    """

    backend = "tensorrt"

    def __init__(
        self,
        artifact: Artifact,
        device: str = "cuda",
        threads: int | None = None,
        verify_build: bool = True,
    ) -> None:
        super().__init__(artifact, device, threads)
        index = cuda_device_index(device)  # refuses 'cpu' before anything is imported
        if artifact.path is None:
            raise BackendError(f"{artifact.describe()} has no engine file")
        trt = import_tensorrt()
        torch = require_cuda("TensorRT", index)
        self._trt, self._torch = trt, torch
        self._device = torch.device("cuda", index)
        path = Path(artifact.path)
        self.build_record = read_build_record(path) if verify_build else None
        self.environment = build_environment(trt, index)
        if self.build_record is not None:
            check_compatible(self.build_record, self.environment, path)
        self._logger = make_logger(trt)
        with torch.cuda.device(self._device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise BackendError(
                    f"TensorRT {trt.__version__} cannot deserialize {path}: "
                    f"{'; '.join(self._logger.errors) or 'no reason given'}"
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise BackendError(
                    f"TensorRT cannot create an execution context for {path}: "
                    f"{'; '.join(self._logger.errors) or 'out of GPU memory?'}"
                )
            self._stream = torch.cuda.Stream(self._device)
        self._inputs, self._outputs = self._io_tensors(path)
        self._lock = threading.Lock()

    def _io_tensors(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """Input name -> (dtype, profile min, max); signature output name -> engine name."""
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        signature = self.signature
        missing = [n for n in signature.input_names if n not in inputs]
        if missing or len(inputs) != len(signature.inputs):
            raise BackendError(
                f"the TensorRT engine {path} takes inputs {inputs}, but the signature names "
                f"{signature.input_names}"
            )
        specs: dict[str, Any] = {}
        for name in signature.input_names:
            dtype = torch_dtype(trt, engine.get_tensor_dtype(name))
            if any(d < 0 for d in engine.get_tensor_shape(name)):
                low, _opt, high = engine.get_tensor_profile_shape(name, 0)
                specs[name] = (dtype, tuple(low), tuple(high))
            else:
                fixed = tuple(engine.get_tensor_shape(name))
                specs[name] = (dtype, fixed, fixed)
        wanted = signature.output_names or outputs
        if len(wanted) != len(outputs):
            raise BackendError(
                f"the TensorRT engine {path} has {len(outputs)} outputs {outputs}, but the "
                f"signature names {len(wanted)} ({wanted})"
            )
        # by name where the engine kept the ONNX names, else by position (the signature rules)
        mapping = {want: want if want in outputs else outputs[i] for i, want in enumerate(wanted)}
        return specs, mapping

    @property
    def threads(self) -> int:
        return 1  # the GPU runs the model; one host thread feeds it

    @property
    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min shape, max shape) the engine accepts."""
        return {name: (low, high) for name, (_, low, high) in self._inputs.items()}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, (_, low, high) in self._inputs.items():
            problem = profile_violation(name, feeds[name].shape, low, high)
            if problem:
                raise InputError(problem)
        torch, context = self._torch, self._context
        with self._lock, torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            keep = []  # the GPU tensors must live until the stream is done with them
            for name, (dtype, _, _) in self._inputs.items():
                host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                tensor = host.to(self._device).to(dtype).contiguous()
                keep.append(tensor)
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise InputError(
                        f"TensorRT refused shape {tuple(tensor.shape)} for input '{name}': "
                        f"{'; '.join(self._logger.errors[-3:]) or 'outside the engine profile'}"
                    )
                context.set_tensor_address(name, tensor.data_ptr())
            results = {}
            for want, name in self._outputs.items():
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"output '{name}' has a data-dependent shape {shape}, which Shipyard's "
                        f"TensorRT backend does not support"
                    )
                dtype = torch_dtype(self._trt, self._engine.get_tensor_dtype(name))
                out = torch.empty(shape, dtype=dtype, device=self._device)
                context.set_tensor_address(name, out.data_ptr())
                results[want] = out
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError(
                    f"TensorRT execution failed: "
                    f"{'; '.join(self._logger.errors[-3:]) or 'no reason given'}"
                )
            # .cpu() copies on this stream and waits for it: the engine has finished then
            arrays = {want: out.cpu().numpy() for want, out in results.items()}
            del keep
        return arrays

    def close(self) -> None:
        # Free the GPU memory now rather than at garbage collection (context before engine).
        for attribute in ("_context", "_engine", "_runtime"):
            self.__dict__.pop(attribute, None)
