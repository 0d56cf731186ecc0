"""What a pass may use besides its input artifact and config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.errors import PassError


@dataclass
class PassContext:
    """``workdir`` is the (staging) package folder a pass writes its files into."""

    workdir: Path
    reference: Artifact
    data: dict[str, Dataset] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("shipyard.passes"))

    def output_path(self, filename: str) -> Path:
        return self.workdir / filename

    def new_file(self, step: str, filename: str, fields: str = "'filename'") -> Path:
        """``output_path(filename)``, refused when an earlier pass already wrote that file
        (the package folder starts empty); the error names the step's ``fields`` to change."""
        path = self.output_path(filename)
        if path.exists():
            raise PassError(
                f"{step}: {path.name} was already written by an earlier pass of this recipe; "
                f"give this {step} its own {fields}"
            )
        return path

    def calibration(self) -> tuple[str | None, Dataset | None]:
        """The data set that calibrates: ``data: calibration:``, else ``data: train:``."""
        key = next((k for k in ("calibration", "train") if k in self.data), None)
        return key, self.data[key] if key else None


def torch_source(artifact: Artifact, reference: Artifact | None, what: str) -> Artifact:
    """The latest torch module behind ``artifact``, for passes that convert from PyTorch.

    ``artifact`` itself when it is a module (after ``prune``/``finetune``, or the model);
    ``reference`` (the recipe's model) when ``artifact`` is a file made from it by file-level
    passes only (those whose registry entry ``makes`` a file: they leave the module as it
    was). After any other pass that module is gone, and a model file has none: PassError,
    naming ``what``.
    """
    # Imported here: the registry imports the passes, and the passes import this module.
    from shipyard.passes import PASSES

    if artifact.format == "torch":
        return artifact
    if reference is not None and reference.format != "torch":
        raise PassError(
            f"{what} needs a PyTorch model, but the recipe's model is a model file "
            f"({reference.describe()}); give the PyTorch model as model: source:, or use a "
            f"step that starts from the file (quantize, convert_openvino from ONNX)"
        )
    base = len(reference.provenance) if reference is not None else 0
    steps = artifact.provenance[base:]
    if (
        reference is not None
        and artifact.provenance[:base] == reference.provenance
        and all(r.name in PASSES and PASSES[r.name].makes == "file" for r in steps)
    ):
        return reference
    done = ", ".join(r.name for r in steps) or "no recorded passes"
    raise PassError(
        f"{what} needs the torch module, but {artifact.describe()} was made by {done}, and "
        f"the module after those torch passes is gone; start this step from the torch "
        f"artifact with 'from: <name>' (e.g. from: torch-pruned) or put it right after the "
        f"torch passes"
    )
