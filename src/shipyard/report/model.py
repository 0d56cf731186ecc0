"""The report as data: its sections and facts, built once from a manifest.

Markdown and HTML render this same model, so the two files cannot tell different stories.
Every string here is plain text taken from the manifest (user data): renderers escape it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.report import examples as classifier
from shipyard.report.examples import ExampleRow
from shipyard.report.rows import mark_pareto


@dataclass(frozen=True)
class Column:
    title: str
    legend: str  # what the column means, for the legend under the table


@dataclass(frozen=True)
class Row:
    """One table row: its cells as text (one per column) and what kind of row it is."""

    index: int  # the row number the plots label points with
    name: str
    cells: tuple[str, ...]
    baseline: bool
    passed: bool
    chosen: bool
    pareto: bool
    data: dict[str, Any]  # the manifest's candidate row, for the plots


@dataclass(frozen=True)
class Fact:
    label: str
    value: str


@dataclass(frozen=True)
class Plot:
    path: Path
    title: str
    caption: str


@dataclass
class Report:
    title: str
    description: str
    summary: list[Fact]  # the chosen candidate against the baseline
    search: list[Fact]  # the optimization search, when there was one
    columns: list[Column]
    rows: list[Row]
    notes: list[str]  # how to read the table (Pareto rule)
    conditions: str  # hardware and measurement settings
    batch: str | None  # the batch size the front and the summary are judged at
    plots: list[Plot] = field(default_factory=list)
    # Classifiers: agreement with the baseline (report.examples.AGREEMENT_COLUMNS, "{ref}"
    # filled in) and each example's top-k classes per artifact.
    agreement_reference: str = ""
    agreement_note: str = ""
    agreement_columns: list[str] = field(default_factory=list)
    agreement: list[tuple[str, ...]] = field(default_factory=list)
    examples: list[ExampleRow] = field(default_factory=list)

    @property
    def name_column(self) -> int:
        return 1  # after "#"

    @property
    def status_column(self) -> int:
        return len(self.columns) - 2  # "gates", before "Pareto"


def judged_batch(
    manifest: dict[str, Any], rows: list[dict[str, Any]], batch: int | None
) -> str | None:
    """The batch size to judge at: ``batch``, else the search's, else the largest measured."""
    sizes = sorted({int(b) for row in rows for b in row.get("latency", {})})
    if not sizes:
        return None
    preferred = batch if batch is not None else (manifest.get("search") or {}).get("batch_size")
    return str(preferred if preferred in sizes else sizes[-1])


def build_report(manifest: dict[str, Any], batch: int | None = None) -> Report:
    """The report of ``manifest``: its ``candidates`` rows, search, hardware and description.

    The Pareto marks are recomputed at the judged batch with the current rule, so a report
    regenerated from an older manifest shows the front correctly.
    """
    data = [dict(row) for row in manifest.get("candidates") or []]
    judged = judged_batch(manifest, data, batch)
    notes = []
    if judged is not None:
        mark_pareto(data, int(judged))
        notes.append(
            f"Pareto front judged at batch {judged} on size, p50 latency and accuracy. Failed "
            "candidates are left out of it (they are not a choice), the baseline is in it "
            "(a candidate it dominates bought nothing)."
        )
    else:  # nothing was measured: no front to speak of
        for row in data:
            row["pareto"] = False
    batches = sorted({b for row in data for b in row.get("latency", {})}, key=int)
    baseline = next((row for row in data if row.get("baseline")), None)
    base_name = baseline["name"] if baseline else "the baseline"
    reference = classifier.agreement_reference(manifest)
    return Report(
        title=f"{manifest.get('name')} version {manifest.get('version')}",
        description=str(manifest.get("description") or ""),
        summary=_summary(data, baseline, judged),
        search=_search(manifest.get("search")),
        columns=_columns(batches, base_name, judged),
        rows=[_row(i, row, batches) for i, row in enumerate(data, start=1)],
        notes=notes,
        conditions=_conditions(manifest),
        batch=judged,
        agreement_reference=reference,
        agreement_note=classifier.agreement_note(reference),
        agreement_columns=[c.format(ref=reference) for c in classifier.AGREEMENT_COLUMNS],
        agreement=classifier.agreement(manifest),
        examples=classifier.examples(manifest),
    )


def _columns(batches: list[str], baseline: str, judged: str | None) -> list[Column]:
    return [
        Column("#", "row number; the plots label their points with it"),
        Column("candidate", "artifact name; ★ marks the one the package serves"),
        Column("size MB", "file size in MB (for an in-memory torch model: its parameters)"),
        *[
            Column(
                f"p50/p99 ms @{b}",
                f"median / 99th-percentile latency of one call with a batch of {b}, in ms",
            )
            for b in batches
        ],
        Column("accuracy", "task metric on the held-out data"),
        Column("drop (points)", f"accuracy lost against {baseline}, in percentage points"),
        Column("max abs", f"largest absolute difference of any output from {baseline}'s"),
        Column("gates", "validation gates: pass, or FAIL"),
        Column("Pareto", f"✓: on the size/latency/accuracy front at batch {judged or '—'}"),
    ]


def _row(index: int, row: dict[str, Any], batches: list[str]) -> Row:
    latency = row.get("latency", {})
    baseline, passed = bool(row.get("baseline")), bool(row.get("passed", True))
    cells = (
        str(index),
        str(row["name"]),
        f"{row['bytes'] / 1e6:.3f}",
        *[
            f"{latency[b]['p50_ms']:.3f} / {latency[b]['p99_ms']:.3f}" if b in latency else "—"
            for b in batches
        ],
        *_metric_cells(row),
        f"{row.get('max_abs', 0.0):.2g}",
        "baseline" if baseline else ("pass" if passed else "FAIL"),
        "✓" if row.get("pareto") else "",
    )
    return Row(
        index=index,
        name=str(row["name"]),
        cells=cells,
        baseline=baseline,
        passed=passed,
        chosen=bool(row.get("chosen")),
        pareto=bool(row.get("pareto")),
        data=row,
    )


def _metric_cells(row: dict[str, Any]) -> tuple[str, str]:
    """The accuracy and drop cells; a binary task's row (no accuracy) shows its AUC there, and
    the AUC it lost (not in points)."""
    if row.get("accuracy") is None and row.get("auc") is not None:
        drop = row.get("auc_drop")
        return f"AUC {row['auc']:.4f}", "—" if drop is None else f"{drop:+.4f} AUC"
    if row.get("accuracy") is None and row.get("f1") is not None:  # task: detection
        drop = row.get("f1_drop")
        return f"F1 {row['f1']:.4f}", "—" if drop is None else f"{drop:+.4f} F1"
    drop = row.get("accuracy_drop")
    return _percent(row.get("accuracy")), "—" if drop is None else f"{drop * 100:+.2f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f} %"


def _times(base: float, mine: float, better: str, worse: str) -> str:
    """'6.8× smaller' style comparison, where lower values are better."""
    if mine <= 0 or base <= 0:
        return ""
    ratio = base / mine
    if abs(ratio - 1) < 0.005:
        return "the same as"
    return f"{ratio:.1f}× {better} than" if ratio > 1 else f"{1 / ratio:.1f}× {worse} than"


def _summary(
    rows: list[dict[str, Any]], base: dict[str, Any] | None, batch: str | None
) -> list[Fact]:
    chosen = next((row for row in rows if row.get("chosen")), None)
    if chosen is None:
        return []
    facts = [
        Fact(
            "serves",
            f"{chosen['name']}" + ("" if chosen.get("passed", True) else " (FAILED its gates)"),
        )
    ]
    if base is None or base is chosen:
        return facts
    name = base["name"]
    size = _times(base["bytes"], chosen["bytes"], "smaller", "larger")
    facts.append(
        Fact(
            "size", f"{chosen['bytes'] / 1e6:.3f} MB, {size} {name} ({base['bytes'] / 1e6:.3f} MB)"
        )
    )
    mine, theirs = chosen.get("latency", {}).get(batch), base.get("latency", {}).get(batch)
    if mine and theirs:
        speed = _times(theirs["p50_ms"], mine["p50_ms"], "faster", "slower")
        facts.append(
            Fact(
                f"p50 latency at batch {batch}",
                f"{mine['p50_ms']:.3f} ms, {speed} {name} ({theirs['p50_ms']:.3f} ms)",
            )
        )
    drop = chosen.get("accuracy_drop")
    if chosen.get("accuracy") is not None and drop is not None:
        points = abs(drop) * 100
        change = (
            "the same as"
            if points < 0.005
            else f"{points:.2f} points {'below' if drop > 0 else 'above'}"
        )
        facts.append(
            Fact(
                "accuracy",
                f"{_percent(chosen['accuracy'])}, {change} {name} "
                f"({_percent(base.get('accuracy'))})",
            )
        )
    if chosen.get("accuracy") is None and chosen.get("auc") is not None:
        lost = chosen.get("auc_drop") or 0.0
        change = (
            "the same as"
            if abs(lost) < 5e-5
            else f"{abs(lost):.4f} {'below' if lost > 0 else 'above'}"
        )
        facts.append(
            Fact("AUC", f"{chosen['auc']:.4f}, {change} {name} ({base.get('auc') or 0.0:.4f})")
        )
    return facts


def _search(search: dict[str, Any] | None) -> list[Fact]:
    if not search:
        return []
    gates = ", ".join(f"{k} {v}" for k, v in (search.get("gates") or {}).items())
    facts = [
        Fact("objective", f"{search.get('objective')} at batch {search.get('batch_size')}"),
        Fact(
            "candidates",
            f"{search.get('evaluated')} evaluated in {search.get('seconds', 0):.0f} s, "
            f"{search.get('passed', '?')} passed the gates" + (f" ({gates})" if gates else ""),
        ),
        Fact("verdict", str(search.get("verdict") or "")),
    ]
    if search.get("skipped"):
        facts.append(Fact("skipped", ", ".join(map(str, search["skipped"]))))
    return facts


def _conditions(manifest: dict[str, Any]) -> str:
    hardware = manifest.get("hardware") or {}
    cores = hardware.get("usable_cores") or hardware.get("logical_cores")
    isa = ", ".join(hardware.get("isa") or []) or "unknown"
    machine = (
        f"{hardware.get('cpu')} ({cores} cores, "
        + (f"{hardware['memory_gb']} GB, " if hardware.get("memory_gb") else "")
        + f"ISA {isa}; GPU {hardware.get('gpu') or 'none'})"
    )
    versions = ", ".join(f"{k} {v}" for k, v in (hardware.get("versions") or {}).items())
    bench = manifest.get("benchmark")
    if not bench:
        return f"Not benchmarked. Machine: {machine}" + (f"; {versions}" if versions else "") + "."
    load = (bench.get("loadavg_start") or [None])[0]
    threads = bench.get("threads") or "default"
    settings = (
        f"{threads} thread(s) per session, {bench.get('runs')} runs after {bench.get('warmup')} "
        f"warm-up per batch size, all candidates interleaved in one run"
        + (f", load average {load:.1f} at start" if isinstance(load, (int, float)) else "")
    )
    return (
        f"Measured on {machine}" + (f" with {versions}" if versions else "") + f"; {settings}. "
        "The ratios between rows carry over to another machine, the absolute numbers do not."
    )
