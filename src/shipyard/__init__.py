"""Shipyard: take a trained PyTorch model to production.

The Python API mirrors the CLI and returns objects instead of printing::

    import shipyard
    result = shipyard.build("examples/digits/recipe.yaml", output="out")
    best = shipyard.optimize("examples/digits/recipe.yaml", output="opt")
    done = shipyard.predict("out/digits/1", "images.npy", "logits.npy")
    onnx = shipyard.export("my.models:build", "model.onnx", signature=sig)
    int8 = shipyard.quantize(onnx, "model.int8.onnx", preset="static_qdq_u8s8", data=data)
    report = shipyard.validate(reference, onnx, data)
    timings = shipyard.bench([reference, onnx])
    packaged = shipyard.package_file("model.onnx", output="out", serving={"max_batch_size": 8})
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shipyard.apply import Applied
from shipyard.artifact import Artifact
from shipyard.bench import BenchReport, bench
from shipyard.build import BuildResult, build
from shipyard.compare import bisect, compare
from shipyard.data import Dataset, load_data
from shipyard.errors import ShipyardError
from shipyard.optimize import optimize
from shipyard.package import Package, load_package
from shipyard.passes.export import ExportConfig, export_onnx
from shipyard.predict import Prediction, predict
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


def quantize(
    model: str | Artifact,
    output: str | Path,
    *,
    preset: str | None = None,
    data: Dataset | None = None,
    validation: Dataset | None = None,
    gates: Gates | None = None,
    overwrite: bool = False,
    **fields: Any,
) -> Applied:
    """Quantize an ONNX model (a path or an Artifact) into ``output``, as ``shipyard quantize``.

    ``preset`` names one of ``QuantizeConfig``'s presets (``static_qdq_u8s8``...); ``fields``
    override its settings (``per_channel=True``). ``data`` calibrates; the result is
    validated on ``validation`` (else ``data``) and written only when ``gates`` pass. Returns
    the result's Artifact and its ValidationReport.
    """
    from shipyard.apply import apply_passes
    from shipyard.passes.quantize_config import PRESETS, QuantizeConfig

    if preset is not None and preset not in PRESETS:
        raise ShipyardError(f"unknown preset {preset!r}; known: {list(PRESETS)}")
    base = PRESETS[preset]().model_dump(exclude_defaults=True) if preset else {}
    config = QuantizeConfig.model_validate({**base, **fields})
    source = model if isinstance(model, Artifact) else load(str(model))
    return apply_passes(
        [("quantize", config)],
        source,
        output,
        data=data,
        validation=validation,
        gates=gates,
        overwrite=overwrite,
    )


def package_file(
    path: str | Path,
    output: str | Path = "out",
    *,
    name: str | None = None,
    version: int = 1,
    serving: Mapping[str, Any] | None = None,
    data: str | None = None,
    samples: int | None = None,
    task: str = "classification",
    overwrite: bool = False,
    run_bench: bool = True,
) -> BuildResult:
    """Package one model file (``.onnx``, ``.tflite``, OpenVINO ``.xml``) as it is, as
    ``shipyard package`` does: ``output/<name>/<version>/``, named after the file unless
    ``name`` is given; ``serving`` takes :class:`~shipyard.serving.ServingConfig` fields;
    ``data`` (``pkg.module:function``, ``.npz``, ``.npy``; at most ``samples`` of it) is what
    it runs on once, labels giving its accuracy. The same build as a recipe with no passes.
    """
    from shipyard.model_file import file_recipe

    recipe = file_recipe(
        path, name=name, version=version, serving=serving, data=data, samples=samples, task=task
    )
    return build(recipe, output, overwrite=overwrite, run_bench=run_bench)


__all__ = [
    "Applied",
    "Artifact",
    "BenchReport",
    "BuildResult",
    "Dataset",
    "ExportConfig",
    "Gates",
    "Package",
    "Prediction",
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
    "package_file",
    "predict",
    "quantize",
    "validate",
]
