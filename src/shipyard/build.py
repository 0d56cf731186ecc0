"""The build: recipe -> source -> passes -> validation -> benchmark -> package.

A build packages the files its passes make; when they make none and the model is a model
file (.onnx, .tflite, OpenVINO .xml), that file itself, which is its own reference: it is run
once on the data (``run_alone``) instead of compared with itself. A build that would package
nothing is refused before any work.

``build(recipe, output)`` returns a BuildResult and prints nothing; ``on_step`` receives a
typed :class:`~shipyard.events.StepEvent` after each step, and the CLI renders both.
A failed step (gate, export, bench) leaves no version folder.
The pieces (``prepare``, ``validate_artifact``, ``measure``, ``finish_package``) are shared
with the optimization search in ``optimize.py``.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact
from shipyard.bench import BenchReport, bench
from shipyard.build_processing import check_processing, package_processing
from shipyard.data import Dataset, load_data
from shipyard.errors import GateError, RecipeError
from shipyard.events import Stage, StepCallback, StepEvent
from shipyard.hardware import hardware_fingerprint
from shipyard.model_file import check_packages_something, copy_model_file
from shipyard.package import SCHEMA_VERSION, preflight, seal, staging
from shipyard.passes import PASSES
from shipyard.passes.context import PassContext
from shipyard.recipe import Recipe, default_recipe_path, load_recipe
from shipyard.report import candidate_rows, write_report
from shipyard.runtimes import default_backend
from shipyard.signing import sign_package, signing_identity
from shipyard.sources import load_model
from shipyard.stateful import Stepper
from shipyard.validate import Gates, ValidationReport, run_alone, validate

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
    steps: list[StepEvent] = field(default_factory=list)


class Steps:
    """Times each step and reports it to the caller's callback as a StepEvent."""

    def __init__(self, on_step: StepCallback | None) -> None:
        self.on_step = on_step
        self.done: list[StepEvent] = []
        self.started = self.last = time.perf_counter()

    def __call__(self, stage: Stage, message: str) -> None:
        now = time.perf_counter()
        event = StepEvent(stage, message, now - self.last)
        self.done.append(event)
        if self.on_step is not None:
            self.on_step(event)
        self.last = now

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def as_recipe(recipe: Recipe | str | Path | None) -> Recipe:
    """A Recipe from itself, a path, or None (the built-in digits example)."""
    if recipe is None:
        recipe = default_recipe_path()
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def prepare(
    recipe: Recipe, output: Path, overwrite: bool, steps: Steps
) -> tuple[Artifact, dict[str, Dataset]]:
    """Check the output and the extras first (fast failure), then load the model and the
    data sets."""
    preflight(output, recipe.name, recipe.version, overwrite)
    if recipe.sign is not None:
        signing_identity(**_sign_options(recipe))  # a key that cannot sign fails now
    for step in recipe.passes:
        PASSES[step.name].check_extra()
    weights = recipe.resolve(recipe.model.weights) if recipe.model.weights else None
    reference = load_model(
        recipe.resolve(recipe.model.source),
        recipe.signature,
        kwargs=recipe.model.kwargs,
        weights=weights,
        name="torch",
    )
    if reference.format != "torch":  # a model file: named as the pass that makes one would
        reference.name = reference.format
    steps(Stage.LOAD, f"loaded {recipe.model.source}")
    check_processing(recipe, reference.signature)
    sources = recipe.data.model_dump(exclude_none=True)
    processing = recipe.preprocess.resolved(recipe.base_dir) if recipe.preprocess else None
    signature = reference.signature
    if recipe.serve.sequence is not None:  # data holds what clients send: chunks, no state
        signature = Stepper(signature, recipe.serve.sequence).client
    data = {
        role: load_data(recipe.resolve(spec), signature, preprocess=processing)
        for role, spec in sources.items()
    }
    if data:
        steps(Stage.LOAD, "loaded data: " + ", ".join(f"{k} ({len(v)})" for k, v in data.items()))
    return reference, data


def validate_artifact(
    recipe: Recipe,
    reference: Artifact,
    artifact: Artifact,
    data: dict[str, Dataset],
    gates: Gates | None = None,
    reference_cache: dict[str, Any] | None = None,
) -> ValidationReport:
    """Validate ``artifact`` against ``reference`` with ``gates`` (default: the recipe's);
    ``reference_cache``: see ``validate`` (the reference runs once for all artifacts)."""
    settings = recipe.validate_
    return validate(
        reference,
        artifact,
        data.get("validation"),
        gates if gates is not None else settings.gates,
        samples=settings.samples,
        batch_size=settings.batch_size,
        task=recipe.task,
        reference_cache=reference_cache,
        sequence=recipe.serve.sequence,
    )


def measure(
    recipe: Recipe, artifacts: Sequence[Artifact], max_seconds: float | None = None
) -> BenchReport:
    """Bench ``artifacts`` interleaved with the recipe's settings (time cap per batch size)."""
    b = recipe.bench
    cap = b.max_seconds if max_seconds is None else min(max_seconds, b.max_seconds or max_seconds)
    return bench(
        list(artifacts),
        batch_sizes=b.batch_sizes,
        threads=b.threads,
        warmup=b.warmup,
        runs=b.runs,
        max_seconds=cap,
        sizes=b.sizes,
    )


def _artifact_entry(artifact: Artifact, folder: Path) -> dict[str, Any]:
    assert artifact.path is not None
    return {
        "name": artifact.name,
        "format": artifact.format,
        "file": str(artifact.path.relative_to(folder)),
        "backend": default_backend(artifact),
        "bytes": artifact.size_bytes,
        "signature": artifact.signature.model_dump(mode="json"),
        "provenance": [record.to_dict() for record in artifact.provenance],
    }


def finish_package(
    folder: Path,
    recipe: Recipe,
    reference: Artifact,
    packaged: Sequence[Artifact],
    reports: Sequence[ValidationReport],
    bench_report: BenchReport | None,
    candidates: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    default: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Write the report and ``shipyard.json``, and ``model.sig`` when the recipe says
    ``sign:``; return the manifest as written.

    The manifest's hashes cover every file but the reports (see ``package.REPORT_FILES``).
    ``default``: (artifact, why) to serve; default :func:`choose_default`'s rule.
    """
    chosen, reason = default or choose_default(recipe, packaged, reports, bench_report)
    manifest: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "name": recipe.name,
        "version": recipe.version,
        "description": recipe.description,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": recipe.task,
        "signature": reference.signature.model_dump(mode="json"),
        "default_artifact": chosen,
        "default_artifact_reason": reason,
        "artifacts": [_artifact_entry(a, folder) for a in packaged],
        "validation": [r.to_dict() for r in reports],
        "benchmark": bench_report.to_dict() if bench_report else None,
        "hardware": bench_report.fingerprint if bench_report else hardware_fingerprint(),
        "provenance": {"recipe": recipe.to_dict(), "versions": library_versions()},
        "serving": recipe.serve.model_dump(mode="json"),
        **(extra or {}),
    }
    manifest["candidates"] = candidates or candidate_rows(
        reference, packaged, reports, bench_report, chosen
    )
    write_report(folder, manifest)
    written = seal(folder, manifest)
    if recipe.sign is not None:  # in staging: no unsigned version ever appears
        sign_package(folder, **_sign_options(recipe))
    return written


def _sign_options(recipe: Recipe) -> dict[str, Any]:
    """The recipe's ``sign:`` section as :func:`~shipyard.signing.sign_package` options."""
    assert recipe.sign is not None
    settings = recipe.sign
    return {
        "key": recipe.resolve(settings.key),
        "certificate": recipe.resolve(settings.certificate) if settings.certificate else None,
        "certificate_chain": [recipe.resolve(path) for path in settings.certificate_chain],
    }


def check_served_artifact(recipe: Recipe, made: Sequence[Artifact]) -> None:
    """``serve: artifact:`` must name an artifact this build makes (checked before the
    slow validation and bench steps)."""
    named = recipe.serve.artifact
    names = [a.name for a in made]
    if named is not None and named not in names:
        raise RecipeError(
            f"serve: artifact: {named!r} is not an artifact of this build; it makes {names}"
        )


def choose_default(
    recipe: Recipe,
    packaged: Sequence[Artifact],
    reports: Sequence[ValidationReport],
    bench_report: BenchReport | None,
) -> tuple[str | None, str]:
    """Which artifact a server serves by default, and why, in one stated rule:
    the one ``serve: artifact:`` names; else the fastest (p50 at the smallest batch size
    benchmarked, on this machine) of those that passed their gates; else, without a
    benchmark, the last one made."""
    if not packaged:
        return None, "the package holds no artifact"
    if recipe.serve.artifact is not None:
        return recipe.serve.artifact, "named by the recipe's serve: artifact:"
    passed = [a for a, r in zip(packaged, reports, strict=True) if r.passed] or list(packaged)
    measured = {r.name for r in bench_report.results} if bench_report else set()
    timed = [a for a in passed if a.name in measured]
    if len(packaged) == 1:
        return packaged[0].name, "the only artifact"
    if bench_report is None or not timed:
        return packaged[-1].name, "the last artifact made (no benchmark to choose by)"
    batch = min(bench_report.batch_sizes)
    fastest = min(timed, key=lambda a: bench_report.get(a.name).at(batch).p50_ms)
    p50 = bench_report.get(fastest.name).at(batch).p50_ms
    return fastest.name, (
        f"fastest at batch {batch} here ({p50:.3f} ms p50) of the {len(timed)} that passed"
    )


def relocate(artifacts: Sequence[Artifact], package_dir: Path) -> list[Artifact]:
    """The same artifacts, pointing into the final version folder instead of staging."""
    return [
        Artifact(
            a.name, a.format, a.signature, path=package_dir / a.path.name, provenance=a.provenance
        )
        for a in artifacts
        if a.path is not None
    ]


def run_passes(
    recipe: Recipe, reference: Artifact, context: PassContext, steps: Steps
) -> tuple[list[Artifact], dict[str, Gates]]:
    """Run the recipe's passes; return the file artifacts made and each step's own gates.

    A step starts from the previous step's result, or from the artifact its ``from:`` names
    (``source``: the recipe's model, also known by its own name, ``torch`` for a module).
    What a step makes (a torch module or a file) is its registry entry's ``makes``.
    File artifacts' names must be unique: they label tables and ``from:`` refers to them
    (a torch pass run twice, e.g. two ``prune`` steps, leaves its latest module under its name).
    """
    current = reference
    made: dict[str, Artifact] = {"source": reference, reference.name: reference}
    produced: list[Artifact] = []
    gates: dict[str, Gates] = {}
    for index, entry in enumerate(recipe.passes):
        where = f"passes.{index}.{entry.name}"
        spec = PASSES[entry.name]
        if entry.gates is not None and spec.makes == "module":
            raise RecipeError(
                f"{where}: gates: apply to the file artifact a step makes, but "
                f"{entry.name} makes a torch module; set them on the export or convert step"
            )
        if entry.from_ is not None:
            if entry.from_ not in made:
                raise RecipeError(
                    f"{where}: from: {entry.from_!r} is not an artifact made before this step; "
                    f"known so far: {list(made)}"
                )
            current = made[entry.from_]
        current = spec.run(current, entry.config, context)
        if spec.makes == "file" and current.name in made:
            raise RecipeError(
                f"{where}: makes a second artifact named {current.name!r}; give this step "
                f"its own 'name' (and 'filename') so that each artifact can be told apart"
            )
        made[current.name] = current
        if entry.gates is not None:
            gates[current.name] = entry.gates
        if spec.makes == "file":
            produced.append(current)
        place = current.path.name if current.path else "in memory"
        steps(
            Stage.PASS,
            f"{entry.name}: {current.name} -> {place} ({current.size_bytes / 1e6:.2f} MB)",
        )
    return produced, gates


def build(
    recipe: Recipe | str | Path | None = None,
    output: str | Path = "out",
    *,
    overwrite: bool = False,
    run_bench: bool | None = None,
    on_step: StepCallback | None = None,
) -> BuildResult:
    """Run ``recipe`` (default: the built-in digits example) and write its package.

    ``on_step(event)`` is called after each step with a :class:`StepEvent` (stage, message,
    seconds); the CLI prints these.
    Raises GateError when a validation gate fails; nothing is written then.
    """
    recipe = as_recipe(recipe)
    check_packages_something(recipe)
    steps = Steps(on_step)
    output = Path(output)
    reference, data = prepare(recipe, output, overwrite, steps)
    with staging(output, recipe.name, recipe.version, overwrite) as folder:
        context = PassContext(workdir=folder, reference=reference, data=data)
        produced, gates = run_passes(recipe, reference, context, steps)
        if not produced:  # the model file itself: from here on, the reference is its copy
            reference = copy_model_file(reference, folder)
            file, size = reference.files()[0].name, reference.size_bytes / 1e6
            steps(Stage.PASS, f"packaged {reference.name} as it is -> {file} ({size:.2f} MB)")
        packaged = produced or [reference]
        check_served_artifact(recipe, packaged)
        cache: dict[str, Any] = {}  # the reference's outputs: it runs once for all artifacts
        reports = [_check(recipe, reference, a, data, gates, steps, cache) for a in produced]
        if not produced:
            reports.append(_run_alone(recipe, reference, data))
            steps(Stage.VALIDATE, f"ran {reference.name} (the model itself: nothing to compare)")
        bench_report = None
        if run_bench if run_bench is not None else recipe.bench.enabled:
            bench_report = measure(recipe, [reference, *produced])
            steps(Stage.BENCH, "benchmarked " + ", ".join(a.name for a in [reference, *produced]))
        extra = package_processing(recipe, folder, [reference, *produced], data)
        manifest = finish_package(
            folder, recipe, reference, packaged, reports, bench_report, extra=extra
        )
    package_dir = output / recipe.name / str(recipe.version)
    return BuildResult(
        recipe,
        package_dir,
        manifest,
        relocate(packaged, package_dir),
        reports,
        bench_report,
        steps.elapsed,
        steps.done,
    )


def _check(
    recipe: Recipe,
    reference: Artifact,
    artifact: Artifact,
    data: dict[str, Dataset],
    gates: dict[str, Gates],
    steps: Steps,
    cache: dict[str, Any] | None = None,
) -> ValidationReport:
    """Validate one artifact the passes made; GateError (nothing written) when a gate fails.
    ``cache`` keeps the reference's outputs between artifacts."""
    gate = gates.get(artifact.name)
    report = validate_artifact(recipe, reference, artifact, data, gate, cache)
    steps(Stage.VALIDATE, f"validated {artifact.name}")
    if not report.passed:
        failed = "; ".join(g.describe() for g in report.failures())
        raise GateError(f"validation of '{artifact.name}' failed: {failed}", report)
    return report


def _run_alone(recipe: Recipe, model: Artifact, data: dict[str, Dataset]) -> ValidationReport:
    settings = recipe.validate_
    return run_alone(
        model,
        data.get("validation"),
        samples=settings.samples,
        batch_size=settings.batch_size,
        task=recipe.task,
        sequence=recipe.serve.sequence,
    )
