"""The candidate rows: one per artifact, the data every report is drawn from.

``candidate_rows`` builds ``manifest["candidates"]``; ``mark_pareto`` marks which rows are on
the size/latency/accuracy front.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shipyard.artifact import Artifact
from shipyard.bench import BenchReport
from shipyard.validate import ValidationReport


def candidate_rows(
    reference: Artifact,
    artifacts: Sequence[Artifact],
    reports: Sequence[ValidationReport],
    bench: BenchReport | None,
    chosen: str | None = None,
    batch: int | None = None,
) -> list[dict[str, Any]]:
    """One row per artifact (reference first) for the manifest's ``candidates`` table.

    ``batch``: where the Pareto front is judged (default: the largest batch measured).
    """
    measured = {r.name: r for r in bench.results} if bench else {}

    def latency(name: str) -> dict[str, dict[str, float]]:
        if name not in measured:
            return {}
        return {
            str(s.batch): {"p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "samples_per_s": s.samples_per_s}
            for s in measured[name].latency
        }

    first = reports[0] if reports else None
    # A model file packaged as it is is its own reference: one row, with the accuracy of its
    # one run (run_alone), and no comparison of it with itself.
    accuracy = (
        (first.accuracy_reference if first.parity else first.accuracy_candidate) if first else None
    )
    auc = (first.auc_reference if first.parity else first.auc_candidate) if first else None
    f1 = (first.f1_reference if first.parity else first.f1_candidate) if first else None
    rows = [
        {
            "name": reference.name,
            "baseline": True,
            "bytes": reference.size_bytes,
            "latency": latency(reference.name),
            "accuracy": accuracy,
            "accuracy_drop": 0.0 if accuracy is not None else None,
            "auc": auc,
            "auc_drop": 0.0 if auc is not None else None,
            "f1": f1,
            "f1_drop": 0.0 if f1 is not None else None,
            "max_abs": 0.0,
            "passed": True,
            "chosen": chosen == reference.name,
        }
    ]
    for artifact, report in zip(artifacts, reports, strict=True):
        if not report.parity:
            continue
        rows.append(
            {
                "name": artifact.name,
                "baseline": False,
                "bytes": artifact.size_bytes,
                "latency": latency(artifact.name),
                "accuracy": report.accuracy_candidate,
                "accuracy_drop": report.accuracy_drop,
                "auc": report.auc_candidate,
                "auc_drop": report.auc_drop,
                "f1": report.f1_candidate,
                "f1_drop": report.f1_drop,
                "max_abs": max((o.max_abs for o in report.outputs), default=0.0),
                "passed": report.passed,
                "chosen": chosen == artifact.name,
            }
        )
    if bench is not None:
        mark_pareto(rows, batch if batch is not None else max(bench.batch_sizes))
    return rows


def eligible(row: dict[str, Any]) -> bool:
    """Whether a row may be on a Pareto front: the baseline, or a candidate that passed.

    A failed candidate is not a choice one could ship, so it neither sits on the front nor
    pushes a passing candidate off it. The baseline competes like a passing candidate: it is
    the reference the gates are measured against, and a candidate it dominates bought nothing.
    """
    return bool(row.get("baseline")) or bool(row.get("passed", True))


def front(points: Sequence[tuple[float, ...] | None]) -> list[bool]:
    """For each point (every coordinate: lower is better; None: not a contender), whether no
    other point is at least as good on every coordinate and better on one."""
    return [
        mine is not None
        and not any(
            other is not None
            and other != mine
            and all(o <= m for o, m in zip(other, mine, strict=True))
            for other in points
        )
        for mine in points
    ]


def mark_pareto(rows: list[dict[str, Any]], batch: int) -> None:
    """Set ``row["pareto"]``: the row is ``eligible`` and no other eligible row is at least as
    good on size, p50 latency at ``batch`` and accuracy, and better on one of them.
    Rows without latency at ``batch`` are never on it; a missing accuracy counts as 0.
    A binary task's rows have no accuracy: their AUC takes its place (a detection task's: F1).
    """

    def key(row: dict[str, Any]) -> tuple[float, float, float] | None:
        stats = row["latency"].get(str(batch))
        if stats is None or not eligible(row):
            return None
        metric = next(
            (row.get(k) for k in ("accuracy", "auc", "f1") if row.get(k) is not None), None
        )
        accuracy = metric if metric is not None else 0.0
        return (row["bytes"], stats["p50_ms"], -accuracy)  # all three: lower is better

    for row, on_front in zip(rows, front([key(row) for row in rows]), strict=True):
        row["pareto"] = on_front
