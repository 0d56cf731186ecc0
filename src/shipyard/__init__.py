"""Shipyard: take a trained PyTorch model to production.

The Python API mirrors the CLI and returns objects instead of printing::

    import shipyard
    result = shipyard.build("examples/digits/recipe.yaml", output="out")
    best = shipyard.optimize("examples/digits/recipe.yaml", output="opt")
    onnx = shipyard.export("my.models:build", "model.onnx", signature=sig)
    report = shipyard.validate(reference, onnx, data)
    timings = shipyard.bench([reference, onnx])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact
from shipyard.bench import BenchReport, bench
from shipyard.build import BuildResult, build
from shipyard.compare import bisect, compare
from shipyard.data import Dataset, load_data
from shipyard.errors import ShipyardError
from shipyard.optimize import optimize
from shipyard.package import Package, load_package
from shipyard.passes.export import ExportConfig, export_onnx
from shipyard.recipe import Recipe, load_recipe
from shipyard.runtimes import Session, open_session
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import load_model as load
from shipyard.validate import Gates, ValidationReport, validate

__version__ = "0.1.0"


def export(
    model: str | Artifact,
    output: str | Path = "model.onnx",
    *,
    signature: Signature | None = None,
    **config: Any,
) -> Artifact:
    """Export ``model`` (a source string or a torch Artifact) to ONNX at ``output``.

    ``config`` takes :class:`ExportConfig` fields (``opset``, ``dynamo``, ``simplify``...).
    """
    artifact = model if isinstance(model, Artifact) else load(model, signature)
    return export_onnx(artifact, output, ExportConfig(**config))


__all__ = [
    "Artifact",
    "BenchReport",
    "BuildResult",
    "Dataset",
    "ExportConfig",
    "Gates",
    "Package",
    "Recipe",
    "Session",
    "ShipyardError",
    "Signature",
    "TensorSpec",
    "ValidationReport",
    "__version__",
    "bench",
    "bisect",
    "build",
    "compare",
    "export",
    "load",
    "load_data",
    "load_package",
    "load_recipe",
    "open_session",
    "optimize",
    "validate",
]
