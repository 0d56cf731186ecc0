"""Convert a model to OpenVINO IR (``.xml`` + ``.bin``), in fp32, fp16 weights or int8.

Where the model comes from (``source``):

- ``onnx`` (default): the ONNX file of the artifact before this pass (``export``, or
  ``quantize``: a QDQ model then runs as int8 in OpenVINO as it is). An OpenVINO fp32 artifact
  is accepted too, so ``export -> convert_openvino -> convert_openvino: {precision: int8}``
  chains; its IR is read back unchanged.
- ``torch``: the latest torch module of the recipe, through OpenVINO's PyTorch frontend (no
  ONNX involved): the artifact before this pass when it is a torch module (after
  ``prune``/``finetune``, or first in the list); when it is a file made from the recipe's
  model by file-level passes only (``export``, ``quantize``, ``convert_openvino``), the
  recipe's model (``context.reference``). So ``export -> quantize -> convert_openvino:
  {source: torch, precision: int8}`` packages ORT int8 and OpenVINO int8 side by side. After
  any other pass (``prune``, ``finetune``...) that module is no longer available, so that
  raises. The artifact then has that module's signature and provenance.

``precision``: ``fp32``; ``fp16`` stores weights as float16 (``compress_to_fp16``, the CPU
still computes in fp32); ``int8`` runs NNCF post-training quantization on the recipe's
calibration data (``data: calibration:``, else ``data: train:``).

Both files are written into a temporary folder beside the target and renamed into place:
an old ``.xml`` is removed first and the new one renamed last, so an ``.xml`` is never
visible without its own ``.bin``. Dynamic dims of the signature are checked in the saved IR.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.artifact import Artifact, PassRecord
from shipyard.data import Dataset, check_dataset
from shipyard.errors import ConvertError, DataError, MissingExtraError, ShipyardError
from shipyard.passes.context import torch_source
from shipyard.passes.quiet import quiet
from shipyard.runtimes.openvino import import_openvino
from shipyard.signature import Signature

if TYPE_CHECKING:
    from shipyard.passes.context import PassContext

log = logging.getLogger("shipyard.convert_openvino")


class OpenVinoConfig(BaseModel):
    """``convert_openvino: {source: onnx, precision: int8, calibration_samples: 300}``"""

    model_config = ConfigDict(extra="forbid")

    source: Literal["onnx", "torch"] = Field(
        default="onnx", description="Convert from the ONNX artifact or from the torch module"
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32",
        description="fp32, fp16 (compressed weights) or int8 (NNCF post-training quantization)",
    )
    calibration_samples: int = Field(
        default=300, ge=1, description="int8: calibration samples used"
    )
    filename: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.xml$",
        description="File name of the .xml in the package (the .bin sits beside it)",
    )
    name: str | None = Field(
        default=None, description="Artifact name (default openvino-<precision>)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> OpenVinoConfig:
        # Compared with the default, not model_fields_set: a dumped config must load again.
        default = type(self).model_fields["calibration_samples"].default
        if self.precision != "int8" and self.calibration_samples != default:
            raise ValueError(f"calibration_samples does not apply to precision {self.precision!r}")
        return self

    def output_filename(self) -> str:
        suffix = "" if self.precision == "fp32" else f"-{self.precision}"
        return self.filename or f"model.openvino{suffix}.xml"

    def artifact_name(self) -> str:
        return self.name or f"openvino-{self.precision}"


def _read_source(ov: Any, artifact: Artifact, source: Artifact | None) -> Any:
    """``artifact`` as an ov.Model, or ``source`` (the torch module) for source: torch."""
    if source is not None:
        import torch

        from shipyard.torch_modules import eval_mode

        assert source.module is not None
        feeds = source.signature.example_inputs(batch=2)  # 2, not 1: size-1 dims specialize
        example = tuple(torch.as_tensor(feeds[n]) for n in source.signature.input_names)
        shapes = [
            # positional (no names): the frontend matches names against forward()'s arguments
            (
                ov.PartialShape([-1 if isinstance(d, str) else d for d in spec.shape]),
                ov.Type(spec.dtype),
            )
            for spec in source.signature.inputs
        ]
        return ov.convert_model(eval_mode(source.module), example_input=example, input=shapes)
    if artifact.format == "onnx" and artifact.path is not None:
        return ov.convert_model(str(artifact.path))
    last = artifact.provenance[-1] if artifact.provenance else None
    fp32 = (
        last is not None and last.name == "convert_openvino" and last.config["precision"] == "fp32"
    )
    if artifact.format == "openvino" and fp32 and artifact.path is not None:
        return ov.Core().read_model(str(artifact.path))
    raise ConvertError(
        f"convert_openvino with source: onnx needs an ONNX (or fp32 OpenVINO) artifact, got "
        f"{artifact.describe()}: put 'export' before it in the recipe's passes, or use "
        f"source: torch"
    )


def _name_ports(model: Any, signature: Signature) -> None:
    """Give the IR's ports the signature's tensor names (the torch frontend leaves outputs
    unnamed); names make the IR self-describing for other OpenVINO tools."""
    for ports, specs in ((model.inputs, signature.inputs), (model.outputs, signature.outputs)):
        if specs and len(ports) != len(specs):
            raise ConvertError(
                f"the OpenVINO model has {len(ports)} ports where the signature has "
                f"{len(specs)}: {[s.name for s in specs]}"
            )
        for port, spec in zip(ports, specs, strict=False):
            port.get_tensor().set_names({spec.name, *port.get_names()})


def _check_shapes(ov: Any, xml: Path, signature: Signature) -> dict[str, str]:
    """Read the saved IR back: dynamic dims of the signature must still be dynamic there."""
    model = ov.Core().read_model(str(xml))
    shapes = {}
    for port, spec in zip(model.inputs, signature.inputs, strict=True):
        shape = port.get_partial_shape()
        shapes[spec.name] = str(shape)
        for axis, dim in enumerate(spec.shape):
            if shape.rank.is_dynamic or (isinstance(dim, str) and shape[axis].is_static):
                raise ConvertError(
                    f"the OpenVINO IR gives input '{spec.name}' the shape {shape}, but the "
                    f"signature declares {spec.describe()}: dimension {axis} must stay dynamic"
                )
    return shapes


def _calibration_items(
    calibration: Dataset | None, signature: Signature, samples: int
) -> list[list[Any]]:
    """One item per sample (batch 1), inputs in signature order: NNCF's ``subset_size``
    counts items, so it then counts samples."""
    if calibration is None:
        raise DataError(
            "convert_openvino with precision: int8 needs calibration data: set 'data: "
            "calibration:' in the recipe ('data: train:' works too), pass calibration= to "
            "convert_openvino, or use precision: fp32/fp16"
        )
    check_dataset(calibration, signature, "calibration")
    data = calibration.take(samples)
    return [[data.inputs[n][i : i + 1] for n in signature.input_names] for i in range(len(data))]


def _quantize(model: Any, items: list[list[Any]]) -> tuple[Any, str]:
    try:
        import nncf
    except ImportError as error:
        raise MissingExtraError("OpenVINO int8 quantization", "openvino", "nncf") from error
    with quiet(log, "openvino/nncf", loggers=("nncf",)):
        # Target CPU: the OpenVINO backend here runs on the CPU only.
        quantized = nncf.quantize(
            model,
            nncf.Dataset(items),
            subset_size=len(items),
            target_device=nncf.TargetDevice.CPU,
        )
    return quantized, nncf.__version__


def _save_ir(ov: Any, model: Any, path: Path, fp16: bool, signature: Signature) -> dict[str, str]:
    """Save ``model`` as ``path`` (.xml) + its .bin; neither appears without the other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bin_path = path.with_suffix(".bin")
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp_xml = workdir / path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=fp16)
        shapes = _check_shapes(ov, tmp_xml, signature)
        for tmp in (tmp_xml, tmp_xml.with_suffix(".bin")):
            os.chmod(tmp, 0o644)  # mkdtemp's folder is private; the files must not be
        # Old .xml out first, new .xml in last: a reader sees no IR, or a complete one.
        path.unlink(missing_ok=True)
        os.replace(tmp_xml.with_suffix(".bin"), bin_path)
        os.replace(tmp_xml, path)
    except BaseException:
        if not path.exists():
            bin_path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return shapes


def convert_openvino(
    artifact: Artifact,
    path: str | Path,
    config: OpenVinoConfig | None = None,
    calibration: Dataset | None = None,
    *,
    reference: Artifact | None = None,
) -> Artifact:
    """Convert ``artifact`` to an OpenVINO IR at ``path`` (``.xml``; the ``.bin`` beside it).

    ``reference`` is the torch artifact a file artifact was made from, used by
    ``source: torch`` (see the module docstring). ``calibration`` (inputs by name, first axis
    = samples; its first ``calibration_samples`` are used) is needed by ``precision: int8``.
    The result has the signature and provenance of what was converted: ``artifact``, or with
    ``source: torch`` the torch module (``reference`` when ``artifact`` is a file). Raises
    ConvertError for an input the source cannot use or a conversion failure (with OpenVINO's
    reason), DataError for missing or mismatched calibration data, MissingExtraError without
    openvino (or nncf, for int8).
    """
    config = config or OpenVinoConfig()
    ov = import_openvino()
    started, path = time.perf_counter(), Path(path)
    module = (
        torch_source(artifact, reference, "convert_openvino with source: torch")
        if config.source == "torch"
        else None
    )
    source = artifact if module is None else module
    signature = source.signature
    items = None
    if config.precision == "int8":  # check the data before the slow steps
        items = _calibration_items(calibration, signature, config.calibration_samples)
    notes: dict[str, Any] = {"openvino": ov.__version__}
    try:
        with quiet(log, "openvino/nncf", loggers=("nncf",)):
            model = _read_source(ov, artifact, module)
        notes["converted_from"] = source.describe()
        notes["convert_seconds"] = round(time.perf_counter() - started, 3)
        _name_ports(model, signature)
        if items is not None:
            began = time.perf_counter()
            model, notes["nncf"] = _quantize(model, items)
            notes["calibration"] = {"samples": len(items), "batch": 1}
            notes["quantize_seconds"] = round(time.perf_counter() - began, 3)
        notes["input_shapes"] = _save_ir(ov, model, path, config.precision == "fp16", signature)
    except ShipyardError:
        raise
    except Exception as error:  # OpenVINO's frontends raise RuntimeError/OpConversionFailure
        raise ConvertError(
            f"convert_openvino ({config.source} -> {config.precision}) failed on "
            f"{artifact.describe()}: {type(error).__name__}: {error}"
        ) from error
    notes["bytes"] = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    notes["bytes_before"] = source.size_bytes
    seconds = time.perf_counter() - started
    record = PassRecord("convert_openvino", config.model_dump(), seconds, notes)
    provenance = [*source.provenance, record]
    return Artifact(config.artifact_name(), "openvino", signature, path=path, provenance=provenance)


def run_convert_openvino(
    artifact: Artifact, config: OpenVinoConfig, context: PassContext
) -> Artifact:
    """The pass: calibrates on ``data: calibration:``, else on ``data: train:``."""
    path = context.new_file("convert_openvino", config.output_filename())
    key, data = context.calibration()
    result = convert_openvino(artifact, path, config, data, reference=context.reference)
    if config.precision == "int8":
        result.provenance[-1].notes["calibration"]["data"] = key
    return result
