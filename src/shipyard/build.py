"""The build: recipe -> source -> passes -> validation -> benchmark -> package.

``build(recipe, output)`` returns a BuildResult and prints nothing unless given a console;
the CLI renders the result. A failed step (gate, export, bench) leaves no version folder.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact
from shipyard.bench import BenchReport, bench, hardware_fingerprint
from shipyard.data import Dataset, load_data
from shipyard.errors import GateError
from shipyard.package import SCHEMA_VERSION, file_hashes, preflight, staging, write_manifest
from shipyard.passes import PASSES
from shipyard.passes.context import PassContext
from shipyard.recipe import Recipe, default_recipe_path, load_recipe
from shipyard.report import candidate_rows, write_report
from shipyard.sources import load_model
from shipyard.validate import ValidationReport, validate

_VERSIONED = ("shipyard", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "numpy")


@dataclass
class BuildResult:
    recipe: Recipe
    package_dir: Path
    manifest: dict[str, Any]
    artifacts: list[Artifact]
    validation: list[ValidationReport]
    benchmark: BenchReport | None
    seconds: float
    steps: list[tuple[str, float]] = field(default_factory=list)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _load_data(recipe: Recipe, artifact: Artifact) -> dict[str, Dataset]:
    sources = recipe.data.model_dump(exclude_none=True)
    return {
        role: load_data(recipe.resolve(spec), artifact.signature) for role, spec in sources.items()
    }


def _artifact_entry(artifact: Artifact, folder: Path, backend: str) -> dict[str, Any]:
    assert artifact.path is not None
    return {
        "name": artifact.name,
        "format": artifact.format,
        "file": str(artifact.path.relative_to(folder)),
        "backend": backend,
        "bytes": artifact.size_bytes,
        "signature": artifact.signature.model_dump(mode="json"),
        "provenance": [record.to_dict() for record in artifact.provenance],
    }


def build(
    recipe: Recipe | str | Path | None = None,
    output: str | Path = "out",
    *,
    overwrite: bool = False,
    run_bench: bool | None = None,
    on_step: Callable[[str, float], None] | None = None,
) -> BuildResult:
    """Run ``recipe`` (default: the built-in digits example) and write its package.

    ``on_step(message, seconds)`` is called after each step (the CLI prints these).
    Raises GateError when a validation gate fails; nothing is written then.
    """
    started = time.perf_counter()
    if recipe is None:
        recipe = default_recipe_path()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    steps: list[tuple[str, float]] = []

    def step(message: str, since: float) -> float:
        seconds = time.perf_counter() - since
        steps.append((message, seconds))
        if on_step is not None:
            on_step(message, seconds)
        return time.perf_counter()

    preflight(Path(output), recipe.name, recipe.version, overwrite)
    t = time.perf_counter()
    weights = recipe.resolve(recipe.model.weights) if recipe.model.weights else None
    reference = load_model(
        recipe.resolve(recipe.model.source),
        recipe.signature,
        kwargs=recipe.model.kwargs,
        weights=weights,
        name="torch",
    )
    t = step(f"loaded {recipe.model.source}", t)
    data = _load_data(recipe, reference)
    if data:
        t = step("loaded data: " + ", ".join(f"{k} ({len(v)})" for k, v in data.items()), t)

    with staging(Path(output), recipe.name, recipe.version, overwrite) as folder:
        context = PassContext(workdir=folder, reference=reference, data=data)
        current, produced = reference, []
        for entry in recipe.passes:
            spec = PASSES[entry.name]
            current = spec.run(current, entry.config, context)
            if current.format != "torch":
                produced.append(current)
            where = current.path.name if current.path else "in memory"
            t = step(
                f"{entry.name}: {current.name} -> {where} ({current.size_bytes / 1e6:.2f} MB)", t
            )

        settings = recipe.validate_
        reports = []
        for artifact in produced:
            report = validate(
                reference,
                artifact,
                data.get("validation"),
                settings.gates,
                samples=settings.samples,
                batch_size=settings.batch_size,
                task=recipe.task,
            )
            reports.append(report)
            t = step(f"validated {artifact.name}", t)
            if not report.passed:
                failed = "; ".join(g.describe() for g in report.failures())
                raise GateError(f"validation of '{artifact.name}' failed: {failed}", report)

        bench_report = None
        if run_bench if run_bench is not None else recipe.bench.enabled:
            b = recipe.bench
            bench_report = bench(
                [reference, *produced],
                batch_sizes=b.batch_sizes,
                threads=b.threads,
                warmup=b.warmup,
                runs=b.runs,
                max_seconds=b.max_seconds,
            )
            t = step("benchmarked " + ", ".join(a.name for a in [reference, *produced]), t)

        manifest = {
            "schema": SCHEMA_VERSION,
            "name": recipe.name,
            "version": recipe.version,
            "description": recipe.description,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "task": recipe.task,
            "signature": reference.signature.model_dump(mode="json"),
            "default_artifact": produced[-1].name if produced else None,
            "artifacts": [_artifact_entry(a, folder, "onnxruntime") for a in produced],
            "validation": [r.to_dict() for r in reports],
            "benchmark": bench_report.to_dict() if bench_report else None,
            "hardware": bench_report.fingerprint if bench_report else hardware_fingerprint(),
            "provenance": {"recipe": recipe.to_dict(), "versions": library_versions()},
        }
        default = manifest["default_artifact"]
        manifest["candidates"] = candidate_rows(reference, produced, reports, bench_report, default)
        write_report(folder, manifest)
        manifest["files"] = file_hashes(folder)
        write_manifest(folder, manifest)
    package_dir = Path(output) / recipe.name / str(recipe.version)
    # Artifacts now live in the final folder, not the staging one.
    final = [
        Artifact(
            a.name, a.format, a.signature, path=package_dir / a.path.name, provenance=a.provenance
        )
        for a in produced
        if a.path is not None
    ]
    return BuildResult(
        recipe,
        package_dir,
        manifest,
        final,
        reports,
        bench_report,
        time.perf_counter() - started,
        steps,
    )
