"""The report's classifier sections: agreement with the baseline, and top-k per example.

``agreement(manifest)`` reads ``manifest["validation"]``: per candidate and classifier output,
top-1 and top-5 agreement with the baseline and top-1 where the baseline is confident.
``examples(manifest)`` reads ``manifest["examples"]`` (a build with ``data: examples:``): each
example's ``k`` most likely classes for the baseline and every artifact. Both give plain
text cells; the renderers escape them (label files and example names are user data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shipyard.validate import CONFIDENT

#: Columns of the agreement table; "{ref}" is the baseline's name.
AGREEMENT_COLUMNS = (
    "candidate",
    "output",
    "top-1",
    "top-5",
    "top-1 where {ref} is confident",
)


@dataclass(frozen=True)
class ExampleRow:
    """One artifact's answer for one example: its classes, best first, as "name 38.2 %"."""

    example: str
    artifact: str
    classes: tuple[str, ...]
    agrees: bool  # same top-1 class as the baseline
    baseline: bool
    first: bool  # the example's first row (the renderers group rows by example)


def _percent(value: Any) -> str:
    return "—" if value is None else f"{float(value) * 100:.2f} %"


def agreement(manifest: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of ``AGREEMENT_COLUMNS``: one per candidate and classifier output (none for
    outputs without top-5 agreement, such as regressions or older manifests)."""
    rows: list[tuple[str, ...]] = []
    for report in manifest.get("validation") or []:
        for out in report.get("outputs") or []:
            if out.get("top5_agreement") is None:
                continue
            count = out.get("confident_samples")
            confident = (
                f"{_percent(out.get('confident_top1_agreement'))} of {count}"
                if count
                else "no confident sample"
            )
            rows.append(
                (
                    str(report.get("candidate")),
                    str(out.get("name")),
                    _percent(out.get("top1_agreement")),
                    _percent(out.get("top5_agreement")),
                    confident,
                )
            )
    return rows


def agreement_reference(manifest: dict[str, Any]) -> str:
    reports = manifest.get("validation") or []
    return str(reports[0].get("reference")) if reports else "the baseline"


def agreement_note(reference: str) -> str:
    """How to read the agreement table."""
    return (
        f"top-1: the candidate's most likely class is {reference}'s; top-5: {reference}'s "
        f"most likely class is among the candidate's five most likely; confident: the "
        f"samples where {reference}'s top-1 probability is at least {CONFIDENT:g} (below "
        f"that the best classes often nearly tie, and a flip says little)."
    )


def _class(entry: dict[str, Any]) -> str:
    label = entry.get("label")
    name = str(label) if label is not None else f"class {entry.get('index')}"
    return f"{name} {float(entry.get('probability', 0.0)) * 100:.1f} %"


def examples(manifest: dict[str, Any]) -> list[ExampleRow]:
    """One row per example and artifact, the baseline (the first artifact) first."""
    section = manifest.get("examples") or {}
    names = [str(name) for name in section.get("names") or []]
    predictions: dict[str, list[list[dict[str, Any]]]] = section.get("predictions") or {}
    if not names or not predictions:
        return []
    baseline = next(iter(predictions))
    rows = []
    for i, example in enumerate(names):
        reference = predictions[baseline][i][0]["index"] if predictions[baseline][i] else None
        for j, (artifact, answers) in enumerate(predictions.items()):
            answer = answers[i] if i < len(answers) else []
            rows.append(
                ExampleRow(
                    example=example,
                    artifact=str(artifact),
                    classes=tuple(_class(entry) for entry in answer),
                    agrees=bool(answer) and answer[0].get("index") == reference,
                    baseline=artifact == baseline,
                    first=j == 0,
                )
            )
    return rows
