"""Build a TensorRT engine (``.plan``) from an ONNX artifact, on the GPU it will run on.

``convert_tensorrt: {precision: fp16, min_batch: 1, opt_batch: 8, max_batch: 32}`` parses the
ONNX file with TensorRT's ONNX parser, builds a serialized engine with the official
``tensorrt`` Python API and writes it atomically as ``model.<precision>.plan``, together with a
build record ``model.<precision>.plan.json`` (GPU name, compute capability, TensorRT and CUDA
versions, precision, optimization profile, sha256 of the plan). The same facts go into the pass
record's notes. The TensorRT runtime reads the build record and refuses an engine built for
another GPU or TensorRT version: engines are not portable.

``precision``:

- ``fp32``: full float32; TF32 tensor cores only with ``tf32: true`` (TensorRT's own default
  enables them, which costs ~1e-3 relative error against PyTorch on the CPU).
- ``fp16``: TensorRT may run layers in float16 (``BuilderFlag.FP16``; inputs and outputs stay
  as the ONNX declares them). TensorRT 11 removed that flag (weak typing): there, fp16 needs an
  ONNX whose weights are already float16 (``quantize: {mode: fp16}``), built as it is.
- ``int8``: explicit quantization from a QDQ ONNX (QuantizeLinear/DequantizeLinear nodes, as
  the ``quantize`` pass writes with ``mode: static, format: qdq``); no calibrator (TensorRT's
  implicit INT8 calibration is deprecated since 10.1). TensorRT runs only *symmetric int8*
  Q/DQ: every zero point int8 and 0. The graph is checked with ``onnx`` before TensorRT is
  touched, so a model TensorRT would reject (or, with uint8 zero points, silently reinterpret
  as int8) fails with a message that says why.

Dynamic dimensions get one optimization profile: every dynamic dim of the signature ranges over
``min_batch``/``opt_batch``/``max_batch``, unless ``dims`` names it with its own
``[min, opt, max]`` (e.g. ``dims: {seq: [1, 128, 512]}``); fixed dims stay fixed. The runtime
refuses shapes outside the profile with an InputError.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import onnx
from onnx import numpy_helper
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shipyard.artifact import Artifact, PassRecord, atomic_path, sha256_file, write_text_atomic
from shipyard.errors import ConvertError
from shipyard.runtimes.tensorrt import (
    RECORD_FORMAT,
    build_environment,
    import_tensorrt,
    make_logger,
    record_path,
    require_cuda,
)
from shipyard.signature import Signature

if TYPE_CHECKING:
    from shipyard.passes.context import PassContext

log = logging.getLogger("shipyard.convert_tensorrt")

_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Quantized graphs TensorRT cannot build: QOperator format and dynamic quantization.
_INTEGER_OPS = ("QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear")
_INT8, _INT32 = onnx.TensorProto.INT8, onnx.TensorProto.INT32
_SYMMETRIC_HINT = (
    "quantize symmetrically: in the recipe 'quantize: {mode: static, activations: int8, "
    "symmetric: true, quantize_bias: false}' (QuantizeConfig.tensorrt_s8s8(); ONNX Runtime's "
    "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True, 'QuantizeBias': "
    "False}); or build with precision: fp16"
)


class TensorRtConfig(BaseModel):
    """``convert_tensorrt: {precision: int8, min_batch: 1, opt_batch: 8, max_batch: 32}``"""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32",
        description="fp32, fp16, or int8 (from symmetric QDQ: the tensorrt_s8s8 preset)",
    )
    min_batch: int = Field(default=1, ge=1, description="Smallest batch of the profile")
    opt_batch: int = Field(default=8, ge=1, description="Batch the engine is tuned for")
    max_batch: int = Field(default=32, ge=1, description="Largest batch of the profile")
    dims: dict[str, tuple[int, int, int]] = Field(
        default_factory=dict,
        description="Other dynamic dims by name: [min, opt, max] (default: the batch range)",
    )
    workspace_mb: int = Field(default=1024, ge=1, description="Builder workspace limit, MB")
    tf32: bool = Field(default=False, description="Allow TF32 math (Ampere and newer)")
    optimization_level: int | None = Field(
        default=None,
        ge=0,
        le=5,
        description="Builder optimization level 0..5 (None: TensorRT's default, 3)",
    )
    filename: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.(plan|engine)$",
        description="File name of the engine in the package",
    )
    name: str | None = Field(
        default=None, description="Artifact name (default tensorrt-<precision>)"
    )

    @field_validator("dims")
    @classmethod
    def _ranges(cls, value: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
        for dim, (low, opt, high) in value.items():
            if not 1 <= low <= opt <= high:
                raise ValueError(
                    f"dims.{dim} must satisfy 1 <= min <= opt <= max, got [{low}, {opt}, {high}]"
                )
        return value

    @model_validator(mode="after")
    def _batch_range(self) -> TensorRtConfig:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need min_batch <= opt_batch <= max_batch, got {self.min_batch}, "
                f"{self.opt_batch}, {self.max_batch}"
            )
        return self

    def range_of(self, dim: str) -> tuple[int, int, int]:
        """(min, opt, max) of the dynamic dimension named ``dim``."""
        return self.dims.get(dim, (self.min_batch, self.opt_batch, self.max_batch))

    def output_filename(self) -> str:
        return self.filename or f"model.{self.precision}.plan"

    def artifact_name(self) -> str:
        return self.name or f"tensorrt-{self.precision}"


def _zero_point_problem(tensor: onnx.TensorProto) -> str | None:
    """Why this zero point stops TensorRT (uint8, or non-zero), or None; unknown data passes."""
    if tensor.data_type == onnx.TensorProto.UINT8:
        return "uint8"
    if tensor.data_type != _INT8 or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    values = numpy_helper.to_array(tensor)
    return "non-zero" if values.size and values.any() else None


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT cannot build ``model`` as explicitly quantized int8 (empty: it can).

    Pure: reads the graph only. TensorRT takes QuantizeLinear/DequantizeLinear with int8 data
    and zero point 0 (symmetric); a uint8 zero point it reinterprets as int8, a non-zero one
    it rejects, and it dequantizes no int32 (ONNX Runtime's quantized biases).
    """
    graph = model.graph
    ops = Counter(node.op_type for node in graph.node)
    integer = sorted({op for op in ops if op.startswith(_INTEGER_OPS)})
    if not ops["QuantizeLinear"]:
        what = f"integer ops {', '.join(integer)} (QOperator or dynamic)" if integer else "none"
        return [
            f"the ONNX graph has no QuantizeLinear nodes ({what}): precision int8 builds an "
            f"explicitly quantized QDQ model, e.g. from the quantize pass with mode: static, "
            f"format: qdq, symmetric int8; TensorRT's own INT8 calibration is not used"
        ]
    problems = []
    if integer:
        problems.append(f"integer ops TensorRT does not build: {', '.join(integer)}")
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    kinds: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type not in _QDQ_OPS:
            continue
        if len(node.input) > 2 and node.input[2] in initializers:
            problem = _zero_point_problem(initializers[node.input[2]])
            if problem:
                kinds[problem] += 1
        data = initializers.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.data_type == _INT32:
            kinds["int32"] += 1
    if kinds["uint8"]:
        problems.append(
            f"{kinds['uint8']} Q/DQ nodes use uint8 zero points (asymmetric uint8, e.g. the "
            f"static_qdq_u8s8 preset); TensorRT quantizes to int8 only"
        )
    if kinds["non-zero"]:
        problems.append(
            f"{kinds['non-zero']} Q/DQ nodes have non-zero int8 zero points (asymmetric); "
            f"TensorRT supports only symmetric quantization (zero point 0)"
        )
    if kinds["int32"]:
        problems.append(
            f"{kinds['int32']} DequantizeLinear nodes dequantize int32 constants (quantized "
            f"biases); TensorRT dequantizes int8 only"
        )
    return problems


def _is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type in _QDQ_OPS for node in model.graph.node)


def _float16_weights(model: onnx.ModelProto) -> bool:
    """True when most float weights of the graph are float16 (``quantize: {mode: fp16}``)."""
    sizes: Counter[int] = Counter()
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        sizes[tensor.data_type] += count
    half, single = sizes[onnx.TensorProto.FLOAT16], sizes[onnx.TensorProto.FLOAT]
    return half > single


def check_source(artifact: Artifact, config: TensorRtConfig) -> onnx.ModelProto:
    """The artifact's ONNX graph (weights not loaded), after the checks that need no GPU."""
    if artifact.format != "onnx" or artifact.path is None:
        raise ConvertError(
            f"convert_tensorrt needs an ONNX artifact, got {artifact.describe()}: put 'export' "
            f"(and for int8 a static QDQ 'quantize') before it in the recipe's passes"
        )
    model = onnx.load(str(artifact.path), load_external_data=False)
    if config.precision == "int8":
        problems = qdq_problems(model)
        if problems:
            raise ConvertError(
                f"convert_tensorrt with precision int8 cannot use {artifact.describe()}: "
                f"{'; '.join(problems)}. TensorRT needs symmetric int8 QDQ; {_SYMMETRIC_HINT}"
            )
    elif _is_quantized(model):
        raise ConvertError(
            f"{artifact.describe()} is quantized (QuantizeLinear/DequantizeLinear nodes): build "
            f"it with precision: int8, or convert the float ONNX with precision "
            f"{config.precision}"
        )
    return model


def profile_shapes(
    network_shapes: dict[str, tuple[int, ...]], signature: Signature, config: TensorRtConfig
) -> dict[str, dict[str, list[int]]]:
    """Input name -> {min, opt, max} shapes for the inputs with dynamic dims (-1).

    ``network_shapes`` are the parsed network's input shapes. Each -1 takes the range of the
    signature's dim at that axis (a fixed int there fixes it); a dim the signature declares
    dynamic must be dynamic in the network too.
    """
    specs = {spec.name: spec for spec in signature.inputs}
    profile = {}
    for position, (name, shape) in enumerate(network_shapes.items()):
        spec = specs.get(name) or (
            signature.inputs[position] if position < len(signature.inputs) else None
        )
        if spec is None or len(spec.shape) != len(shape):
            raise ConvertError(
                f"TensorRT parsed input '{name}' with shape {list(shape)}, which the signature "
                f"({signature.describe_inputs()}) does not describe"
            )
        low: list[int] = []
        opt: list[int] = []
        high: list[int] = []
        for axis, (dim, declared) in enumerate(zip(shape, spec.shape, strict=True)):
            if dim >= 0 and isinstance(declared, str):
                raise ConvertError(
                    f"the ONNX file fixes dimension {axis} of input '{name}' to {dim}, but the "
                    f"signature declares {spec.describe()}: export it with that dim dynamic"
                )
            if dim >= 0:
                values = (dim, dim, dim)
            elif isinstance(declared, str):
                values = config.range_of(declared)
            else:
                values = (declared, declared, declared)
            for target, value in zip((low, opt, high), values, strict=True):
                target.append(value)
        if any(dim < 0 for dim in shape):
            profile[name] = {"min": low, "opt": opt, "max": high}
    return profile


def _set_precision(trt: Any, builder_config: Any, config: TensorRtConfig, fp16_onnx: bool) -> str:
    """Set the builder flags for ``config.precision``; return how, for the notes."""
    flags = trt.BuilderFlag
    tf32 = getattr(flags, "TF32", None)
    if tf32 is not None and not config.tf32:
        builder_config.clear_flag(tf32)  # TensorRT enables TF32 by default
    if config.precision == "fp16":
        fp16 = getattr(flags, "FP16", None)
        if fp16 is not None:
            builder_config.set_flag(fp16)
            return "weakly typed, BuilderFlag.FP16"
        if not fp16_onnx:
            raise ConvertError(
                f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (TensorRT 11 builds strongly "
                f"typed networks only): convert the ONNX to float16 first (quantize: {{mode: "
                f"fp16}}) and build that with precision: fp16"
            )
        return "strongly typed, float16 ONNX"
    if config.precision == "int8":
        int8 = getattr(flags, "INT8", None)
        if int8 is not None:  # explicit quantization in a weakly typed network needs it
            builder_config.set_flag(int8)
            return "explicit quantization (QDQ), BuilderFlag.INT8"
        return "explicit quantization (QDQ), strongly typed"
    return "fp32" + (" with TF32" if config.tf32 else "")


def _failure_hint(model: onnx.ModelProto) -> str:
    problems = qdq_problems(model) if _is_quantized(model) else []
    return f" (note: {'; '.join(problems)})" if problems else ""


def build_engine(
    trt: Any, onnx_path: Path, signature: Signature, config: TensorRtConfig, model: onnx.ModelProto
) -> tuple[Any, dict[str, Any]]:
    """Parse ``onnx_path`` and build a serialized engine (an IHostMemory); return it and notes."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): the parser then finds external weights (.onnx.data)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConvertError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: "
            f"{'; '.join(errors) or '; '.join(logger.errors) or 'no reason given'}"
            f"{_failure_hint(model)}"
        )
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes[tensor.name] = tuple(int(d) for d in tensor.shape)
    notes: dict[str, Any] = {"profile": profile_shapes(shapes, signature, config)}
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    notes["mode"] = _set_precision(trt, builder_config, config, _float16_weights(model))
    if config.optimization_level is not None:
        builder_config.builder_optimization_level = config.optimization_level
    if notes["profile"]:
        profile = builder.create_optimization_profile()
        for name, shape in notes["profile"].items():
            profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
        builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ConvertError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path.name} "
            f"(precision {config.precision}, workspace {config.workspace_mb} MB): "
            f"{'; '.join(logger.errors[-5:]) or 'no reason given'}{_failure_hint(model)}"
        )
    return serialized, notes


def convert_tensorrt(
    artifact: Artifact, path: str | Path, config: TensorRtConfig | None = None
) -> Artifact:
    """Build a TensorRT engine from the ONNX ``artifact`` into ``path`` (+ its build record).

    Checks that need no GPU come first (format, QDQ for int8), then TensorRT is imported
    (MissingExtraError without the ``tensorrt`` extra) and a CUDA GPU is required
    (BackendError). Raises ConvertError when TensorRT cannot parse or build the model, with
    TensorRT's reason. The plan is written atomically; the build record after it.
    """
    config = config or TensorRtConfig()
    started, path = time.perf_counter(), Path(path)
    model = check_source(artifact, config)
    assert artifact.path is not None
    trt = import_tensorrt()
    require_cuda("building a TensorRT engine")
    environment = build_environment(trt)
    serialized, notes = build_engine(trt, artifact.path, artifact.signature, config, model)
    with atomic_path(path) as tmp:
        tmp.write_bytes(memoryview(serialized))
    seconds = time.perf_counter() - started
    record = {
        "format": RECORD_FORMAT,
        "engine": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        **environment,
        "precision": config.precision,
        "tf32": config.tf32,
        "workspace_mb": config.workspace_mb,
        "optimization_level": config.optimization_level,
        **notes,
        "source": artifact.name,
        "built": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(record_path(path), json.dumps(record, indent=2) + "\n")
    log.info("built %s in %.1f s on %s", path.name, seconds, environment["gpu"])
    summary = {
        **{k: record[k] for k in ("gpu", "compute_capability", "tensorrt", "cuda", "sha256")},
        **notes,
        "build_record": record_path(path).name,
        "bytes": record["bytes"],
        "bytes_before": artifact.size_bytes,
        "build_seconds": round(seconds, 3),
    }
    pass_record = PassRecord("convert_tensorrt", config.model_dump(mode="json"), seconds, summary)
    provenance = [*artifact.provenance, pass_record]
    return Artifact(
        config.artifact_name(), "tensorrt", artifact.signature, path=path, provenance=provenance
    )


def run_convert_tensorrt(
    artifact: Artifact, config: TensorRtConfig, context: PassContext
) -> Artifact:
    """The pass: builds on this machine's GPU, into the package folder."""
    path = context.new_file("convert_tensorrt", config.output_filename())
    return convert_tensorrt(artifact, path, config)
