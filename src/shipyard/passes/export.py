"""Export a torch module to ONNX: dynamo exporter first, TorchScript exporter as fallback.

The exported file is simplified (onnxslim, optional), checked with ``onnx.checker`` and
strict shape inference, and written atomically. Failures raise ExportError whose message is
the exporter's real reason in one paragraph (``--debug`` shows the full trace).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from shipyard.artifact import Artifact, PassRecord, atomic_path
from shipyard.errors import ExportError
from shipyard.passes.quiet import quiet
from shipyard.runtimes.onnxruntime import onnx_signature
from shipyard.signature import Signature
from shipyard.torch_modules import eval_mode, output_names

if TYPE_CHECKING:
    from shipyard.passes.context import PassContext

log = logging.getLogger("shipyard.export")

# The dynamo exporter logs through these even when verbose=False.
_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.fx.experimental.symbolic_shapes",
    "torch._export",
    "torch.export",
    "torch._dynamo",
    "onnxscript",
)
# Errors of this kind must not fall back to tracing: the tracer would silently freeze
# whichever branch the example input took.
_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent", "DYNAMIC_CONTROL_FLOW")


class ExportConfig(BaseModel):
    """``export: {format: onnx, opset: 18, dynamo: true, fallback: true, simplify: true}``"""

    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx"] = Field(default="onnx", description="Exported format")
    opset: int = Field(
        default=18, ge=13, le=23, description="ONNX opset (the dynamo exporter writes at least 18)"
    )
    dynamo: bool = Field(
        default=True,
        description="Use the dynamo exporter (torch.export); else the TorchScript exporter",
    )
    fallback: bool = Field(
        default=True,
        description="Fall back to the TorchScript exporter when the dynamo exporter fails",
    )
    simplify: bool = Field(default=True, description="Simplify the graph with onnxslim")
    filename: str = Field(
        default="model.onnx",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.onnx$",
        description="File name in the package",
    )
    name: str = Field(default="onnx", description="Artifact name (labels tables and reports)")


def summarize_export_error(error: BaseException) -> str:
    """The exporter's real reason in one paragraph: root cause, and the user's line."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root))
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(root).__name__)
    where = ""
    full = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    match = re.search(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', full)
    if match:
        where = f" at {match[1]}:{match[2]} in {match[3]} (`{match[4].strip()}`)"
    reason = f"{type(root).__name__}: {first}{where}"
    if any(marker in full for marker in _DATA_DEPENDENT):
        reason += (
            ". The model branches on tensor values (data-dependent control flow), which an "
            "exported graph cannot represent; rewrite the branch with torch.where or torch.cond"
        )
    return reason


def _dynamic_shapes(signature: Signature) -> tuple[dict[int, Any], ...]:
    dims: dict[str, Any] = {}
    return tuple(
        {
            axis: dims.setdefault(name, torch.export.Dim(name))
            for axis, name in spec.dynamic_dims.items()
        }
        for spec in signature.inputs
    )


def _export_dynamo(
    module: torch.nn.Module,
    args: tuple,
    signature: Signature,
    names: list[str],
    config: ExportConfig,
    path: Path,
) -> None:
    with quiet(log, "exporter", loggers=_NOISY_LOGGERS):
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=config.opset,
            verbose=False,
            input_names=signature.input_names,
            output_names=names,
            dynamic_shapes=_dynamic_shapes(signature),
            optimize=True,
        )
        assert program is not None
        program.save(str(path), external_data=False)


def _export_torchscript(
    module: torch.nn.Module,
    args: tuple,
    signature: Signature,
    names: list[str],
    config: ExportConfig,
    path: Path,
) -> None:
    dynamic_axes: dict[str, dict[int, str]] = {
        spec.name: spec.dynamic_dims for spec in signature.inputs if spec.dynamic_dims
    }
    for spec_name, spec in zip(names, signature.outputs, strict=False):
        if spec.dynamic_dims:
            dynamic_axes[spec_name] = spec.dynamic_dims
    with quiet(log, "exporter", loggers=_NOISY_LOGGERS):
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=min(config.opset, 20),
            input_names=signature.input_names,
            output_names=names,
            dynamic_axes=dynamic_axes,
        )


def _check_and_simplify(path: Path, simplify: bool) -> dict[str, Any]:
    import onnx

    notes: dict[str, Any] = {}
    if simplify:
        import onnxslim

        before = onnx.load(str(path))
        with quiet(log, "exporter", loggers=_NOISY_LOGGERS):
            slim = onnxslim.slim(before)
        notes["nodes_before_simplify"] = len(before.graph.node)
        if slim is not None:
            notes["nodes"] = len(slim.graph.node)
            onnx.save(slim, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the exported ONNX file fails onnx.checker: {error}") from error
    return notes


def export_onnx(
    artifact: Artifact, path: str | Path, config: ExportConfig | None = None
) -> Artifact:
    """Export a torch artifact to ONNX at ``path``; return the ONNX artifact.

    Dynamic dims of the signature become dynamic ONNX dims with the same names.
    """
    config = config or ExportConfig()
    if artifact.format != "torch":
        raise ExportError(
            f"export makes an ONNX file from a PyTorch model, but {artifact.describe()} is "
            f"already a model file: in a recipe, drop the export step (a model "
            f"file is packaged as it is when no step makes another; quantize and "
            f"convert_openvino start from an ONNX file)"
        )
    module = artifact.module
    assert module is not None
    signature = artifact.signature
    names = output_names(len(signature.outputs), signature.output_names)
    feeds = signature.example_inputs(batch=2)  # 2, not 1: size-1 dims get specialized
    args = tuple(torch.as_tensor(feeds[n]) for n in signature.input_names)
    path = Path(path)
    started = time.perf_counter()
    exporter = "dynamo" if config.dynamo else "torchscript"
    with atomic_path(path) as tmp:
        eval_mode(module)
        try:
            if config.dynamo:
                try:
                    _export_dynamo(module, args, signature, names, config, tmp)
                except Exception as error:
                    reason = summarize_export_error(error)
                    if not config.fallback or any(m in str(error) for m in _DATA_DEPENDENT):
                        raise ExportError(f"cannot export to ONNX: {reason}") from error
                    warnings.warn(
                        f"dynamo exporter failed ({reason}); falling back to the TorchScript "
                        f"exporter",
                        stacklevel=2,
                    )
                    exporter = "torchscript"
                    _export_torchscript(module, args, signature, names, config, tmp)
            else:
                _export_torchscript(module, args, signature, names, config, tmp)
        except ExportError:
            raise
        except Exception as error:
            raise ExportError(f"cannot export to ONNX: {summarize_export_error(error)}") from error
        notes = _check_and_simplify(tmp, config.simplify)
    notes["exporter"] = exporter
    exported = onnx_signature(path)
    onnx_sig = Signature(inputs=signature.inputs, outputs=exported.outputs)
    record = PassRecord("export", config.model_dump(), time.perf_counter() - started, notes)
    return Artifact(
        config.name, "onnx", onnx_sig, path=path, provenance=[*artifact.provenance, record]
    )


def run_export(artifact: Artifact, config: ExportConfig, context: PassContext) -> Artifact:
    path = context.new_file("export", config.filename, "'filename' and 'name'")
    return export_onnx(artifact, path, config)
