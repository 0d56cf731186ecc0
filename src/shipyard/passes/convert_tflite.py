"""Convert a PyTorch module to TFLite (LiteRT) with litert-torch: fp32 or int8 variants.

No TensorFlow and no ONNX are involved: ``litert_torch.convert`` lowers the module's
``torch.export`` graph itself. The module is the latest torch module of the recipe (the
artifact before this pass when it is a module; the recipe's model when that artifact is a
file made by file-level passes only; ``from: torch-pruned`` picks another).

``precision``:

- ``fp32``: converted with a dynamic batch. litert-torch fixes the batch inside reshape ops
  (``flatten(x, 1)`` becomes ``view(x, [2, 128])``), so the exported graph's reshapes are
  rewritten to ``-1`` on the batch axis first; where that export fails the file gets batch 1
  and the runtime runs larger batches in chunks (recorded in the notes).
- ``dynamic_int8``: int8 weights, activations quantized at run time (ai-edge-quantizer's
  ``dynamic_wi8_afp32`` on the fp32 file); float I/O.
- ``weight_only_int8``: int8 weights dequantized to float at load time (``weight_only_wi8_afp32``):
  a 4x smaller file, float compute.
- ``int8``: full integer model from PT2E static quantization (litert-torch's symmetric
  per-channel quantizer) calibrated on the recipe's calibration data. Its I/O tensors are
  int8; their scale and zero point are recorded in the notes and the runtime applies them,
  so the artifact still takes and returns float32. The converter fixes the batch of static
  int8 graphs: ``batch_size`` (default 1) is baked in and other batches run in chunks.

``channels_last_io: true`` makes the file take NHWC images, as TFLite's own models do (a
permute in front of the module, which the converter folds into the first op); the artifact's
signature says ``layout: NHWC`` so that validation transposes the channels-first data for it.
litert-torch 0.10 cannot lower that permute with a symbolic batch, so these files get batch 1
(the runtime runs larger batches in chunks; the notes say so).
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.artifact import Artifact, PassRecord, atomic_path
from shipyard.data import Dataset, check_dataset
from shipyard.errors import ConvertError, DataError, MissingExtraError, ShipyardError
from shipyard.passes.context import torch_source
from shipyard.passes.quiet import quiet
from shipyard.signature import Signature

if TYPE_CHECKING:
    import torch

    from shipyard.passes.context import PassContext

log = logging.getLogger("shipyard.convert_tflite")

_AEQ_RECIPES = {"dynamic_int8": "dynamic_wi8_afp32", "weight_only_int8": "weight_only_wi8_afp32"}
_LOGGERS = ("torchao", "torch.utils._pytree", "absl", "jax", "litert_torch")


class TfliteConfig(BaseModel):
    """``convert_tflite: {precision: int8, channels_last_io: true, calibration_samples: 256}``"""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "dynamic_int8", "weight_only_int8", "int8"] = Field(
        default="fp32",
        description="fp32, dynamic_int8, weight_only_int8, or int8 (full integer, calibrated)",
    )
    channels_last_io: bool = Field(
        default=False, description="NHWC inputs and outputs (what TFLite runtimes prefer)"
    )
    calibration_samples: int = Field(
        default=256, ge=1, description="int8: calibration samples used"
    )
    batch_size: int = Field(default=1, ge=1, description="int8: the batch size baked into the file")
    filename: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.tflite$",
        description="File name in the package",
    )
    name: str | None = Field(default=None, description="Artifact name (default tflite-<label>)")

    @model_validator(mode="after")
    def _consistent(self) -> TfliteConfig:
        # Compared with the defaults, not model_fields_set: a dumped config must load again.
        fields = type(self).model_fields
        for field in ("calibration_samples", "batch_size"):
            if self.precision != "int8" and getattr(self, field) != fields[field].default:
                raise ValueError(f"{field} applies to precision int8 only, not {self.precision!r}")
        return self

    def label(self) -> str:
        return self.precision.replace("_", "-") + ("-nhwc" if self.channels_last_io else "")

    def output_filename(self) -> str:
        return self.filename or f"model.{self.label()}.tflite"

    def artifact_name(self) -> str:
        return self.name or f"tflite-{self.label()}"


def import_litert_torch() -> ModuleType:
    """``litert_torch``, quietly, or MissingExtraError naming the ``tflite`` extra."""
    # Before the import: TensorFlow-style C++ logging and oneDNN banners; and keep
    # litert-torch from rewiring torch's loggers for the whole process at its first convert.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "0")
    os.environ.setdefault("LITERT_TORCH_SILENCE_TORCH_LOGS", "0")
    try:
        with quiet(log, "import litert_torch", loggers=_LOGGERS):
            import litert_torch
    except ImportError as error:
        raise MissingExtraError("TFLite target", "tflite", "litert_torch") from error
    return litert_torch


def _nhwc_signature(signature: Signature) -> Signature:
    inputs = []
    for spec in signature.inputs:
        if len(spec.shape) != 4:
            raise ConvertError(
                f"channels_last_io needs 4-D image inputs, but {spec.describe()} is not; "
                f"use channels_last_io: false"
            )
        n, c, h, w = spec.shape
        inputs.append(spec.model_copy(update={"shape": (n, h, w, c), "layout": "NHWC"}))
    return Signature(inputs=tuple(inputs), outputs=signature.outputs)


def _channels_last(module: torch.nn.Module) -> torch.nn.Module:
    import torch

    class ChannelsLast(torch.nn.Module):
        """Takes NHWC inputs and hands the wrapped module NCHW (a transpose TFLite's
        converter folds into the first op)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> Any:
            return self.inner(*(a.permute(0, 3, 1, 2) for a in args))

    return ChannelsLast(module)


def _dynamic_shapes(module: Any, count: int, batch: Any) -> tuple:
    """Axis 0 of each input is ``batch``, shaped like ``forward``'s parameters: a forward
    taking ``*args`` (litert-torch's NHWC wrapper) needs the specs nested one level."""
    per_input = tuple({0: batch} for _ in range(count))
    parameters = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return (per_input,)
    return per_input


def _batch_agnostic(module: torch.nn.Module, sample: tuple, batch: Any) -> Any:
    """``module`` exported with a dynamic batch, its reshapes rewritten to -1 on that axis.

    litert-torch lowers ``view(x, [s0, 128])`` with a symbolic ``s0`` to JAX, which needs
    concrete sizes; ``reshape(x, [-1, 128])`` lowers fine and keeps the batch dynamic.
    """
    import torch

    program = torch.export.export(
        module, sample, dynamic_shapes=_dynamic_shapes(module, len(sample), batch), strict=False
    )
    graph_module = program.module()
    aten = torch.ops.aten
    reshapes = {
        aten.flatten.using_ints,
        aten.view.default,
        aten.reshape.default,
        aten._unsafe_view.default,
    }
    graph = graph_module.graph
    for node in list(graph.nodes):
        value = node.meta.get("val")
        if node.op != "call_function" or node.target not in reshapes:
            continue
        if not isinstance(value, torch.Tensor):
            continue
        # Symbolic sizes (the batch) become -1; a reshape can infer only one of them.
        sizes = [d if isinstance(d, int) else -1 for d in value.shape]
        if sizes.count(-1) != 1:
            continue
        with graph.inserting_before(node):
            replacement = graph.call_function(aten.reshape.default, (node.args[0], sizes))
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


def _torch_inputs(signature: Signature, arrays: dict[str, np.ndarray]) -> tuple:
    import torch

    return tuple(torch.as_tensor(arrays[name]) for name in signature.input_names)


def _convert_float(
    lt: ModuleType, module: torch.nn.Module, signature: Signature, notes: dict[str, Any]
) -> bytes:
    """fp32 flatbuffer bytes, with a dynamic batch where the graph allows it."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    sample = _torch_inputs(signature, signature.example_inputs(batch=2))  # 1 would specialize
    try:
        graph = _batch_agnostic(module, sample, batch)
        shapes = _dynamic_shapes(graph, len(sample), batch)
        model = lt.convert(graph, sample, dynamic_shapes=shapes)
        notes["batch"] = "dynamic"
    except Exception as error:  # the fallback below names the reason in the notes
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        log.debug("dynamic-batch conversion failed, converting with batch 1: %s", reason)
        sample = _torch_inputs(signature, signature.example_inputs(batch=1))
        model = lt.convert(module, sample)
        notes["batch"] = 1
        notes["dynamic_batch_failed"] = reason
    content: bytes = model.model_content()
    return content


def _calibration(calibration: Dataset | None, signature: Signature, samples: int) -> Dataset:
    if calibration is None:
        raise DataError(
            "convert_tflite with precision: int8 needs calibration data: set 'data: "
            "calibration:' in the recipe ('data: train:' works too), or use precision "
            "dynamic_int8 or weight_only_int8, which need none"
        )
    check_dataset(calibration, signature, "calibration")
    return calibration.take(samples)


def _convert_int8(
    lt: ModuleType,
    module: torch.nn.Module,
    signature: Signature,
    data: Dataset,
    batch_size: int,
    notes: dict[str, Any],
) -> bytes:
    """Full-integer flatbuffer bytes: PT2E static quantization, calibrated on ``data``."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    sample = _torch_inputs(signature, signature.example_inputs(batch=batch_size))
    graph = prepare_pt2e(torch.export.export(module, sample, strict=False).module(), quantizer)
    seen = 0
    with torch.no_grad():
        for start in range(0, len(data) - batch_size + 1, batch_size):
            arrays = {k: v[start : start + batch_size] for k, v in data.inputs.items()}
            graph(*_torch_inputs(signature, arrays))
            seen += batch_size
    if seen == 0:
        raise DataError(
            f"convert_tflite int8 calibrates in batches of {batch_size}, but only {len(data)} "
            f"calibration samples were given"
        )
    graph = convert_pt2e(graph, fold_quantize=False)
    graph.training = False  # litert-torch warns about "training mode" otherwise
    model = lt.convert(graph, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    notes["batch"] = batch_size
    notes["calibration"] = {"samples": seen, "batch": batch_size}
    content: bytes = model.model_content()
    return content


def _quantize_weights(content: bytes, precision: str) -> bytes:
    """ai-edge-quantizer's recipe for ``precision`` applied to an fp32 flatbuffer."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as error:
        raise MissingExtraError("TFLite int8 weights", "tflite", "ai_edge_quantizer") from error
    chosen = getattr(recipe, _AEQ_RECIPES[precision])()
    result = quantizer.Quantizer(content, chosen).quantize(enable_progress_report=False)
    quantized: bytes = result.quantized_model
    return quantized


def _io_details(path: Path) -> dict[str, Any]:
    """Dtype, shape and (for integer I/O) scale/zero point of each tensor of the file."""
    from shipyard.runtimes.litert import import_litert

    interpreter = import_litert().Interpreter(model_path=str(path), num_threads=1)

    def describe(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for d in details:
            item = {
                "name": d["name"],
                "dtype": np.dtype(d["dtype"]).name,
                "shape": [int(x) for x in d["shape_signature"]],
            }
            if np.dtype(d["dtype"]).kind != "f":
                scale, zero_point = d["quantization"]
                item.update(scale=float(scale), zero_point=int(zero_point))
            out.append(item)
        return out

    return {
        "inputs": describe(interpreter.get_input_details()),
        "outputs": describe(interpreter.get_output_details()),
    }


def convert_tflite(
    artifact: Artifact,
    path: str | Path,
    config: TfliteConfig | None = None,
    calibration: Dataset | None = None,
    *,
    reference: Artifact | None = None,
) -> Artifact:
    """Convert the torch module behind ``artifact`` to a ``.tflite`` file at ``path``.

    ``reference`` is the torch artifact a file artifact was made from (see the module
    docstring); ``calibration`` is needed by ``precision: int8``. Raises ConvertError when
    the conversion fails (with litert-torch's reason), DataError for missing calibration
    data, MissingExtraError without the ``tflite`` extra.
    """
    config = config or TfliteConfig()
    lt = import_litert_torch()
    started, path = time.perf_counter(), Path(path)
    source = torch_source(artifact, reference, "convert_tflite")
    assert source.module is not None
    signature = source.signature
    data = None
    if config.precision == "int8":  # check the data before the slow steps
        data = _calibration(calibration, signature, config.calibration_samples)
    module = source.module.eval()
    target_signature = signature
    if config.channels_last_io:
        target_signature = _nhwc_signature(signature)
        module = _channels_last(module).eval()
        if data is not None:
            specs = {s.name: s for s in target_signature.inputs}
            data = Dataset({k: specs[k].from_channels_first(v) for k, v in data.inputs.items()})
    notes: dict[str, Any] = {"litert_torch": _version("litert-torch")}
    try:
        with quiet(log, "litert-torch", loggers=_LOGGERS, root=True):
            if data is not None:
                content = _convert_int8(
                    lt, module, target_signature, data, config.batch_size, notes
                )
            else:
                content = _convert_float(lt, module, target_signature, notes)
                if config.precision in _AEQ_RECIPES:
                    notes["ai_edge_quantizer"] = _version("ai-edge-quantizer")
                    notes["recipe"] = _AEQ_RECIPES[config.precision]
                    content = _quantize_weights(content, config.precision)
    except ShipyardError:  # ours (DataError included) already say what to do
        raise
    except Exception as error:
        raise ConvertError(
            f"convert_tflite ({config.precision}) failed on {source.describe()}: "
            f"{type(error).__name__}: {str(error).strip()[:800]}"
        ) from error
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    notes["io"] = _io_details(path)
    notes["bytes"] = path.stat().st_size
    notes["bytes_before"] = source.size_bytes
    record = PassRecord("convert_tflite", config.model_dump(), time.perf_counter() - started, notes)
    provenance = [*source.provenance, record]
    return Artifact(
        config.artifact_name(), "tflite", target_signature, path=path, provenance=provenance
    )


def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def run_convert_tflite(artifact: Artifact, config: TfliteConfig, context: PassContext) -> Artifact:
    """The pass: int8 calibrates on ``data: calibration:``, else on ``data: train:``."""
    path = context.new_file("convert_tflite", config.output_filename(), "'filename' and 'name'")
    key, data = context.calibration()
    result = convert_tflite(artifact, path, config, data, reference=context.reference)
    if config.precision == "int8":
        result.provenance[-1].notes["calibration"]["data"] = key
    return result
