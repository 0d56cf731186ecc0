"""Gates: the pass/fail limits a validation report is judged by, and their verdicts.

``Gates`` is the recipe's ``validate: gates:`` (and a step's own ``gates:``); ``gate_results``
turns a :class:`~shipyard.validate.ValidationReport`'s numbers into :class:`GateResult`s, each
with its bound (``min`` gates need value >= limit, ``max`` gates value <= limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shipyard.errors import InputError

if TYPE_CHECKING:
    from shipyard.validate import ValidationReport


class Gates(BaseModel):
    """Pass/fail limits. ``atol``/``rtol`` are element-wise: |c - r| <= atol + rtol * |r|."""

    model_config = ConfigDict(extra="forbid")

    atol: float | None = Field(default=None, ge=0)
    rtol: float | None = Field(default=None, ge=0)
    min_cosine: float | None = Field(default=None, ge=-1, le=1)
    # Outputs of rows: every sample's cosine with the reference's (the minimum), and their mean.
    min_sample_cosine: float | None = Field(default=None, ge=-1, le=1)
    min_mean_cosine: float | None = Field(default=None, ge=-1, le=1)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    min_top5_agreement: float | None = Field(default=None, ge=0, le=1)  # see OutputComparison
    min_confident_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)
    max_auc_drop: float | None = Field(default=None, ge=0, le=1)  # task: binary
    max_f1_drop: float | None = Field(default=None, ge=0, le=1)  # task: detection
    # task: embedding: share of triplets ordered as the reference orders them (embedding_metrics)
    min_ranking_agreement: float | None = Field(default=None, ge=0, le=1)

    def merged(self, **overrides: float | None) -> Gates:
        """These gates with every non-None override applied (command-line flags win).

        Raises InputError naming the gate when an override is out of range (``atol=-1``).
        """
        values = self.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return Gates(**values)
        except ValidationError as error:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in error.errors())
            raise InputError(f"gates: {problems}") from error


@dataclass
class GateResult:
    """One gate's verdict. ``bound`` says which side of ``limit`` passes: ``"min"`` gates
    (every ``min_*``: ``min_cosine``, ``min_top1_agreement``...) need value >= limit,
    ``"max"`` gates the rest."""

    gate: str
    limit: float
    value: float | None
    passed: bool
    output: str | None = None
    bound: Literal["min", "max"] = "max"

    def overshoot(self) -> float:
        """How far the value is on the wrong side of the limit, relative to the limit (0 when
        it passes; infinite when it could not be measured)."""
        if self.passed:
            return 0.0
        if self.value is None:
            return float("inf")
        gap = self.limit - self.value if self.bound == "min" else self.value - self.limit
        return max(gap, 0.0) / max(abs(self.limit), 1e-9)

    def describe(self) -> str:
        where = f" [{self.output}]" if self.output else ""
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.gate}{where}: {value} (limit {self.limit:g}) {verdict}"


def _at_least(gate: str, gates: Gates, value: float | None, output: str | None) -> GateResult:
    """The verdict of a ``min_*`` gate: ``value`` (None: not measurable, fails) >= limit."""
    limit = getattr(gates, gate)
    return GateResult(gate, limit, value, value is not None and value >= limit, output, "min")


def gate_results(report: ValidationReport, gates: Gates) -> list[GateResult]:
    """Every gate's verdict on ``report``: NaN/Inf always, then each gate ``gates`` sets."""
    results: list[GateResult] = []
    for out in report.outputs:
        # A candidate that produces NaN/Inf where the reference does not always fails.
        results.append(
            GateResult(
                "nonfinite",
                out.nonfinite_reference,
                out.nonfinite_candidate,
                out.nonfinite_candidate <= out.nonfinite_reference,
                out.name,
            )
        )
        if out.violations is not None:
            ok = out.violations == 0
            if gates.rtol is None:
                results.append(GateResult("atol", gates.atol or 0.0, out.max_abs, ok, out.name))
            elif gates.atol is None:
                results.append(GateResult("rtol", gates.rtol, out.max_rel, ok, out.name))
            else:  # combined: the value is the count of elements outside atol + rtol*|ref|
                name = f"atol {gates.atol:g} + rtol {gates.rtol:g}, elements outside"
                results.append(GateResult(name, 0, out.violations, ok, out.name))
        if gates.min_cosine is not None:
            results.append(
                GateResult(
                    "min_cosine",
                    gates.min_cosine,
                    out.cosine,
                    out.cosine >= gates.min_cosine,
                    out.name,
                    bound="min",
                )
            )
        for gate, value in (
            ("min_sample_cosine", out.sample_cosine_min),
            ("min_mean_cosine", out.sample_cosine_mean),
        ):
            if getattr(gates, gate) is not None and out.shape[1:]:  # outputs of rows only
                results.append(_at_least(gate, gates, value, out.name))
        if gates.min_top1_agreement is not None and out.top1_agreement is not None:
            results.append(
                GateResult(
                    "min_top1_agreement",
                    gates.min_top1_agreement,
                    out.top1_agreement,
                    out.top1_agreement >= gates.min_top1_agreement,
                    out.name,
                    bound="min",
                )
            )
        if gates.min_top5_agreement is not None and out.top5_agreement is not None:
            results.append(_at_least("min_top5_agreement", gates, out.top5_agreement, out.name))
        if gates.min_confident_top1_agreement is not None and out.top1_agreement is not None:
            # No confident sample: the gate cannot be measured, so it fails rather than passes.
            value = out.confident_top1_agreement
            results.append(_at_least("min_confident_top1_agreement", gates, value, out.name))
    if gates.max_accuracy_drop is not None:
        drop = report.accuracy_drop
        # Without labels the gate cannot be measured: fail rather than pass silently.
        results.append(
            GateResult(
                "max_accuracy_drop",
                gates.max_accuracy_drop,
                drop,
                drop is not None and drop <= gates.max_accuracy_drop + 1e-12,
            )
        )
    if gates.max_auc_drop is not None:  # unmeasured (no labels, NaN scores): fails
        auc_drop = report.auc_drop
        ok = auc_drop is not None and auc_drop <= gates.max_auc_drop + 1e-12
        results.append(GateResult("max_auc_drop", gates.max_auc_drop, auc_drop, ok))
    if gates.max_f1_drop is not None:  # unmeasured (no labels, no positive frame): fails
        f1_drop = report.f1_drop
        ok = f1_drop is not None and f1_drop <= gates.max_f1_drop + 1e-12
        results.append(GateResult("max_f1_drop", gates.max_f1_drop, f1_drop, ok))
    if gates.min_ranking_agreement is not None:  # unmeasured (no labels, not task embedding)
        value = report.ranking_agreement
        results.append(_at_least("min_ranking_agreement", gates, value, None))
    return results
