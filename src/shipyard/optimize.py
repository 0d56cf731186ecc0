"""The accuracy-aware search: try candidates, measure each here, keep the best that passes.

Candidates: every torch variant (the original, plus structured pruning at each level with
fine-tuning when training data exists) exported to ONNX fp32, and each quantization preset
applied to that export. Each candidate is validated against the original on the held-out data;
all candidates are then benchmarked together, interleaved, and the best passing one by the
objective becomes the package. A search that finds nothing passing still packages the
closest candidate and says by how much it missed. The budget stops the search early; what
was evaluated so far is kept.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact
from shipyard.bench import BenchReport
from shipyard.build import (
    BuildResult,
    Steps,
    as_recipe,
    finish_package,
    measure,
    prepare,
    relocate,
    validate_artifact,
)
from shipyard.build_processing import package_processing
from shipyard.data import Dataset
from shipyard.errors import ShipyardError
from shipyard.events import Stage, StepCallback
from shipyard.package import staging
from shipyard.passes.context import PassContext
from shipyard.passes.export import ExportConfig, export_onnx
from shipyard.passes.finetune import run_finetune
from shipyard.passes.prune import PruneConfig, run_prune
from shipyard.passes.quantize import QuantizeConfig, quantize_onnx
from shipyard.passes.quantize_config import PRESETS
from shipyard.recipe import Objective, OptimizeSettings, Recipe
from shipyard.report import candidate_rows
from shipyard.validate import Gates, ValidationReport

BUDGET_SPENT = "budget spent"


@dataclass
class Candidate:
    artifact: Artifact
    report: ValidationReport

    @property
    def name(self) -> str:
        return self.artifact.name


def miss(report: ValidationReport) -> float:
    """How far a candidate is from passing: the largest relative gate overshoot (0 = passes)."""
    return max((gate.overshoot() for gate in report.failures()), default=0.0)


def score(candidate: Candidate, bench: BenchReport, objective: Objective, batch: int) -> float:
    """Lower is better for every objective."""
    if objective == "size":
        return float(candidate.artifact.size_bytes)
    stats = bench.get(candidate.name).at(batch)
    if objective == "latency":
        return stats.p50_ms
    if objective == "throughput":
        return -stats.samples_per_s
    raise ValueError(f"unknown objective {objective!r}")  # unreachable: the schema checks it


def prunable(task: str, has_train: bool) -> bool:
    """Whether the search prunes: pruned variants are fine-tuned, which needs training data and
    trains classifiers (cross-entropy), not ``task: binary`` or ``detection`` models."""
    return has_train and task not in ("binary", "detection")


def plan_size(settings: OptimizeSettings, can_prune: bool) -> int:
    """How many candidates a search plans: each torch variant (the model, and each pruning
    level when it can prune: see ``prunable``), exported, then each preset of it."""
    variants = 1 + (len(settings.prune_levels) if can_prune else 0)
    return variants * (1 + len(settings.quantize))


class _Search:
    """One search run: the candidate loop with its deadline and its staging folder."""

    def __init__(
        self,
        recipe: Recipe,
        settings: OptimizeSettings,
        reference: Artifact,
        data: dict[str, Dataset],
        folder: Path,
        steps: Steps,
    ) -> None:
        self.recipe, self.settings, self.reference, self.data = recipe, settings, reference, data
        self.folder, self.steps = folder, steps
        self.work = folder / "candidates"
        self.work.mkdir()
        self.deadline = time.monotonic() + settings.budget
        self.candidates: list[Candidate] = []
        self.skipped: list[str] = []
        self.skipped_for_budget = 0
        self.plan = self.variants()
        self.planned = plan_size(settings, prunable(recipe.task, "train" in data))
        self.context = PassContext(workdir=self.work, reference=reference, data=data)
        # The reference's outputs on the validation data: it runs once for all candidates.
        self.reference_outputs: dict[str, Any] = {}

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    @property
    def gates(self) -> Gates:
        if self.settings.gates is not None:
            return self.settings.gates
        validation = self.data.get("validation")
        labelled = validation is not None and validation.labels is not None
        if self.recipe.task == "embedding":  # per-sample cosine; with groups, the ranking
            ranked = {"min_ranking_agreement": 1.0} if labelled else {}
            return Gates(min_sample_cosine=0.98, min_mean_cosine=0.99, **ranked)
        if validation is not None and validation.labels is not None:
            if self.recipe.task == "binary":
                return Gates(max_auc_drop=0.005)
            if self.recipe.task == "detection":
                return Gates(max_f1_drop=0.005)
            return Gates(max_accuracy_drop=0.005)
        return Gates(min_cosine=0.99)

    def evaluate(self, artifact: Artifact) -> None:
        report = validate_artifact(
            self.recipe, self.reference, artifact, self.data, self.gates, self.reference_outputs
        )
        self.candidates.append(Candidate(artifact, report))
        accuracy = (
            f"accuracy {report.accuracy_candidate:.2%} (drop {report.accuracy_drop * 100:+.2f})"
            if report.accuracy_drop is not None and report.accuracy_candidate is not None
            else f"AUC {report.auc_candidate:.4f} (drop {report.auc_drop:+.4f})"
            if report.auc_drop is not None and report.auc_candidate is not None
            else f"F1 {report.f1_candidate:.4f} (drop {report.f1_drop:+.4f})"
            if report.f1_drop is not None and report.f1_candidate is not None
            else f"max abs {max(o.max_abs for o in report.outputs):.2g}"
        )
        verdict = "passes" if report.passed else f"fails ({miss(report):.2f} over a gate)"
        self.steps(
            Stage.CANDIDATE,
            f"candidate {artifact.name}: {artifact.size_bytes / 1e6:.2f} MB, {accuracy}, {verdict}",
        )

    def variants(self) -> list[tuple[str, float | None]]:
        levels: list[float] = []
        if prunable(self.recipe.task, "train" in self.data):
            levels = list(self.settings.prune_levels)
        elif self.recipe.task in ("binary", "detection") and self.settings.prune_levels:
            why = f"fine-tuning trains classifiers, not task: {self.recipe.task}"
            self.skip("structured pruning", why)
        elif self.settings.prune_levels:
            self.skip("structured pruning", "no 'data: train:' to fine-tune with")
        return [("", None), *[(f"pruned{round(level * 100)}-", level) for level in levels]]

    def torch_variant(self, level: float | None) -> Artifact:
        if level is None:
            return self.reference
        pruned = run_prune(
            self.reference, PruneConfig(method="structured", target_macs=level), self.context
        )
        return run_finetune(pruned, self.settings.finetune, self.context)

    def skip(self, what: str, why: str, count: int = 1) -> None:
        self.skipped.append(f"{what} ({why})")
        if why == BUDGET_SPENT:
            self.skipped_for_budget += count

    def run(self) -> None:
        """Evaluate every planned candidate the budget allows. The first (the model exported
        as it is) is always evaluated: the package needs at least one artifact."""
        calibration = self.data.get("calibration") or self.data.get("train")
        for prefix, level in self.plan:
            if level is not None and self.out_of_time():
                self.skip(f"{prefix}*", BUDGET_SPENT, 1 + len(self.settings.quantize))
                continue
            variant = self.torch_variant(level)
            fp32 = export_onnx(
                variant, self.work / f"{prefix}fp32.onnx", ExportConfig(name=f"{prefix}fp32")
            )
            self.evaluate(fp32)
            for preset in self.settings.quantize:
                name = f"{prefix}{preset}"
                if self.out_of_time():
                    self.skip(name, BUDGET_SPENT)
                    continue
                config: QuantizeConfig = PRESETS[preset]()
                if config.mode == "static" and calibration is None:
                    self.skip(name, "no calibration data")
                    continue
                config = config.model_copy(update={"name": name})
                self.evaluate(quantize_onnx(fp32, self.work / f"{name}.onnx", config, calibration))


def optimize(
    recipe: Recipe | str | Path | None = None,
    output: str | Path = "out",
    *,
    settings: OptimizeSettings | None = None,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
) -> BuildResult:
    """Search for the best artifact that passes the recipe's gates; package it.

    ``settings`` default to the recipe's ``optimize:`` section. The result's manifest holds
    every candidate's numbers under ``candidates`` and the verdict under ``search``.
    """
    recipe = as_recipe(recipe).model_copy(deep=True)  # the bench settings change below
    settings = settings or recipe.optimize or OptimizeSettings()
    steps = Steps(on_step)
    output = Path(output)
    reference, data = prepare(recipe, output, overwrite, steps)
    with staging(output, recipe.name, recipe.version, overwrite) as folder:
        search = _Search(recipe, settings, reference, data, folder, steps)
        try:
            search.run()
        except KeyboardInterrupt:
            search.skip("the rest", "interrupted")
        if not search.candidates:
            raise ShipyardError("the search evaluated no candidate; raise --budget")
        remaining = max(search.deadline - time.monotonic(), 10.0)
        artifacts = [c.artifact for c in search.candidates]
        recipe.bench.batch_sizes = sorted({*recipe.bench.batch_sizes, settings.batch_size})
        bench_report = measure(recipe, [reference, *artifacts], max_seconds=remaining / 2)
        steps(Stage.BENCH, f"benchmarked {len(artifacts)} candidates and the original, interleaved")
        passing = [c for c in search.candidates if c.report.passed]
        pool = passing or sorted(search.candidates, key=lambda c: miss(c.report))[:1]
        best = min(
            pool, key=lambda c: score(c, bench_report, settings.objective, settings.batch_size)
        )
        verdict = (
            f"chose {best.name}: best {settings.objective} of {len(passing)} passing"
            if passing
            else f"no candidate passed the gates; kept the closest, {best.name}, which misses "
            f"by {miss(best.report):.2f} (relative overshoot of its worst gate)"
        )
        steps(Stage.VERDICT, verdict)
        rows = candidate_rows(
            reference,
            artifacts,
            [c.report for c in search.candidates],
            bench_report,
            chosen=best.name,
            batch=settings.batch_size,
        )
        assert best.artifact.path is not None
        chosen_path = folder / "model.onnx"
        shutil.move(best.artifact.path, chosen_path)
        shutil.rmtree(search.work)
        packaged = Artifact(
            best.name,
            "onnx",
            best.artifact.signature,
            path=chosen_path,
            provenance=best.artifact.provenance,
        )
        extra = {
            "search": {
                "objective": settings.objective,
                "batch_size": settings.batch_size,
                "budget_s": settings.budget,
                "seconds": round(steps.elapsed, 1),
                "planned": search.planned,
                "evaluated": len(search.candidates),
                "passed": len(passing),
                "skipped": search.skipped,
                "skipped_for_budget": search.skipped_for_budget,
                "chosen": best.name,
                "gates": search.gates.model_dump(exclude_none=True),
                "verdict": verdict,
            }
        }
        extra.update(package_processing(recipe, folder, [reference, packaged], data))
        manifest = finish_package(
            folder,
            recipe,
            reference,
            [packaged],
            [best.report],
            bench_report,
            candidates=rows,
            extra=extra,
            default=(best.name, f"chosen by the search: {verdict}"),
        )
    package_dir = output / recipe.name / str(recipe.version)
    return BuildResult(
        recipe,
        package_dir,
        manifest,
        relocate([packaged], package_dir),
        [best.report],
        bench_report,
        steps.elapsed,
        steps.done,
    )
