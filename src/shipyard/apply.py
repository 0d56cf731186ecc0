"""One pass (or a short chain) on one model, as the one-off verbs run it.

``apply_passes([("quantize", config)], source, output)`` runs the registered passes into a
hidden folder beside ``output``, validates the result against ``source`` on the given data
(or on seeded random inputs from the signature, which the report says), and moves the files
into place only when every gate passes: a failed or interrupted run leaves nothing behind.
A torch module result (prune, finetune) is saved as ``.pt2`` (``torch.export``) or exported
to ``.onnx``, as ``output``'s suffix says.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from shipyard.artifact import Artifact, PassRecord
from shipyard.data import Dataset
from shipyard.errors import GateError, InputError, PackageError
from shipyard.passes import PASSES
from shipyard.passes.context import PassContext
from shipyard.passes.export import ExportConfig
from shipyard.validate import Gates, ValidationReport, validate

#: What ``-o`` may end in when the last pass makes a torch module.
MODULE_SUFFIXES = (".pt2", ".onnx")


@dataclass
class Applied:
    """The result at its final path, what it was made from, and its validation."""

    artifact: Artifact
    source: Artifact
    report: ValidationReport

    @property
    def files(self) -> list[Path]:
        return self.artifact.files()


def _with_filename(config: BaseModel, filename: str) -> BaseModel:
    if "filename" not in type(config).model_fields:
        return config
    return config.model_copy(update={"filename": filename})


def _save_program(artifact: Artifact, path: Path) -> Artifact:
    """A torch module as a ``torch.export`` program (``.pt2``), dynamic dims kept."""
    import torch

    from shipyard.passes.export import _dynamic_shapes
    from shipyard.sources import load_model

    assert artifact.module is not None
    signature = artifact.signature
    feeds = signature.example_inputs(batch=2)  # 2, not 1: size-1 dims get specialized
    args = tuple(torch.as_tensor(feeds[n]) for n in signature.input_names)
    try:
        program = torch.export.export(
            artifact.module, args, dynamic_shapes=_dynamic_shapes(signature)
        )
    except Exception as error:
        raise InputError(
            f"cannot save {artifact.name} as a torch.export program: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}; write -o NAME.onnx instead"
        ) from error
    torch.export.save(program, str(path))  # into the staging folder: moved whole later
    saved = load_model(str(path), signature, name=artifact.name)
    saved.provenance = [*artifact.provenance, PassRecord("save", {"format": "pt2"}, 0.0)]
    return saved


def _targets(artifact: Artifact, folder: Path, output: Path) -> list[tuple[Path, Path]]:
    """(made, final) for every file of ``artifact``: ``output``'s name with the file's suffix
    (``.onnx.data``, ``.bin``, ``.plan.json`` follow the main file)."""
    assert artifact.path is not None
    pairs = []
    for made in artifact.files():
        tail = made.name[len(artifact.path.name) :] if made != artifact.path else ""
        if made.suffix == ".bin" and artifact.format == "openvino":
            final = output.with_suffix(".bin")
        else:
            final = output.with_name(output.name + tail)
        pairs.append((made, final))
    return pairs


def apply_passes(
    steps: Sequence[tuple[str, BaseModel]],
    source: Artifact,
    output: str | Path,
    *,
    data: Dataset | None = None,
    validation: Dataset | None = None,
    gates: Gates | None = None,
    samples: int | None = None,
    overwrite: bool = False,
) -> Applied:
    """Run ``steps`` (pass name, its config) from ``source``; write the result at ``output``.

    ``data`` is what the passes learn from (training data for prune/finetune, calibration data
    for quantize and int8 conversion); ``validation`` is what the result is checked on against
    ``source`` (default: ``data``, else 64 seeded random inputs). Raises GateError (nothing
    written) when a gate fails, PackageError when ``output`` exists and not ``overwrite``.
    """
    if not steps:
        raise InputError("nothing to apply: give at least one pass")
    unknown = [name for name, _ in steps if name not in PASSES]
    if unknown:
        raise InputError(f"unknown pass(es) {unknown}; known: {list(PASSES)}")
    for name, _ in steps:
        PASSES[name].check_extra()
    output = Path(output)
    if output.is_dir():
        raise InputError(f"-o {output} is a folder; give a file name, e.g. {output}/model.onnx")
    if output.exists() and not overwrite:
        raise PackageError(f"{output} already exists; pass --overwrite to replace it")
    folder = output.parent if str(output.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=folder))
    except OSError as error:
        raise PackageError(f"cannot write into {folder}: {error.strerror}") from error
    try:
        context = PassContext(
            workdir=stage,
            reference=source,
            data={"train": data} if data is not None else {},
        )
        if validation is not None:
            context.data["validation"] = validation
        result = source
        for index, (name, config) in enumerate(steps):
            last = index == len(steps) - 1
            config = _with_filename(config, output.name if last else f"step{index}.onnx")
            result = PASSES[name].run(result, config, context)
        if result.format == "torch":
            if output.suffix not in MODULE_SUFFIXES:
                raise InputError(
                    f"-o {output}: {steps[-1][0]} makes a torch module; name the output "
                    f"NAME.pt2 (torch.export program) or NAME.onnx (exported)"
                )
            if output.suffix == ".onnx":
                config = ExportConfig(filename=output.name, name=f"{result.name}-onnx")
                result = PASSES["export"].run(result, config, context)
            else:
                result = _save_program(result, stage / output.name)
        report = validate(source, result, validation or data, gates, samples=samples)
        if not report.passed:
            failed = "; ".join(g.describe() for g in report.failures())
            raise GateError(f"{result.name} was not written: {failed}", report)
        moved = _targets(result, stage, output)
        for made, final in moved:
            os.replace(made, final)
        final_path = moved[0][1]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Applied(dataclasses.replace(result, path=final_path), source, report)
