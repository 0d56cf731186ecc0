"""Every table and line the CLI shows, as rich renderables; measuring code never prints.

Names (artifacts, outputs, candidates) are never cut: their columns fold long names onto a
second line instead of ending them with an ellipsis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from shipyard.bench import BenchReport
from shipyard.validate import CONFIDENT, ValidationReport


def named_table(title: str | None, columns: Sequence[str], left: Sequence[str] = ()) -> Table:
    """A table whose ``left`` columns hold names: left-aligned, folded, never truncated."""
    table = Table(title=title)
    for column in columns:
        if column in left:
            table.add_column(column, justify="left", overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    return table


def step_line(message: str, seconds: float) -> str:
    """One finished pipeline step, as console markup."""
    return f"[green]✓[/] {escape(message)} [dim]({seconds:.1f} s)[/]"


def _top1(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def samples(report: ValidationReport) -> str:
    """``450 samples``, or a warning that the inputs were random and what that means."""
    if report.random_inputs:
        return f"{report.samples} random inputs, no data given: parity only, not accuracy"
    return f"{report.samples} samples"


_AGREEMENT_GATES = ("min_top5_agreement", "min_confident_top1_agreement")


def agreement_lines(report: ValidationReport) -> list[str]:
    """Per classifier output: top-1 and top-5 agreement, and top-1 where the reference is
    confident (its top-1 probability >= CONFIDENT); printed when the gates judge agreement
    (report.md always has them), so that other tables print as they did."""
    if not any(gate.gate in _AGREEMENT_GATES for gate in report.gates):
        return []
    lines = []
    for out in report.outputs:
        if out.top5_agreement is None:
            continue
        confident = (
            f"{_top1(out.confident_top1_agreement)} of {out.confident_samples}"
            if out.confident_samples
            else "no sample"
        )
        lines.append(
            f"agreement [{out.name}]: top-1 {_top1(out.top1_agreement)}, top-5 "
            f"{_top1(out.top5_agreement)}, top-1 where {report.reference} is confident "
            f"(p >= {CONFIDENT:g}): {confident}"
        )
    return lines


def validation(report: ValidationReport) -> Group:
    """The parity table of one candidate, its accuracy line and every gate's verdict."""
    if not report.parity:
        return _run_alone(report)
    table = named_table(
        f"{report.candidate} vs {report.reference} ({samples(report)})",
        ("output", "max abs", "mean abs", "max rel", "cosine", "top-1 agree", "NaN/Inf"),
        left=("output",),
    )
    for out in report.outputs:
        table.add_row(
            escape(out.name),
            f"{out.max_abs:.3g}",
            f"{out.mean_abs:.3g}",
            f"{out.max_rel:.3g}",
            f"{out.cosine:.6f}",
            _top1(out.top1_agreement),
            f"{out.nonfinite_reference}/{out.nonfinite_candidate}",
        )
    parts: list[RenderableType] = [table]
    parts += [Text(line) for line in agreement_lines(report)]
    if report.accuracy_reference is not None and report.accuracy_candidate is not None:
        drop = report.accuracy_drop or 0.0
        parts.append(
            Text(
                f"accuracy: {report.reference} {report.accuracy_reference:.2%}, "
                f"{report.candidate} {report.accuracy_candidate:.2%} "
                f"(drop {drop * 100:+.2f} points)"
            )
        )
    if report.auc_reference is not None or report.auc_candidate is not None:
        parts.append(Text(_auc_line(report)))
    if report.f1_reference is not None or report.f1_candidate is not None:
        parts.append(Text(_f1_line(report)))
    parts += [Text(line) for line in embedding_lines(report)]
    for gate in report.gates:
        style = "green" if gate.passed else "bold red"
        parts.append(Text(f"  {gate.describe()}", style=style))
    return Group(*parts)


def embedding_lines(report: ValidationReport) -> list[str]:
    """Per-sample cosine of each output of rows and the ranking check (task: embedding),
    printed when a gate judges them or the report has a ranking, so others print as before."""
    judged = {g.gate for g in report.gates} & {"min_sample_cosine", "min_mean_cosine"}
    lines = []
    if judged or report.ranking_agreement is not None:
        lines += [
            f"per-sample cosine [{out.name}]: min {out.sample_cosine_min:.6f}, mean "
            f"{out.sample_cosine_mean:.6f}"
            for out in report.outputs
            if out.sample_cosine_min is not None and out.sample_cosine_mean is not None
        ]
    if report.ranking_agreement is not None:
        lines.append(
            f"ranking: {report.candidate} orders {report.ranking_agreement:.2%} of "
            f"{report.ranking_triplets:,} (anchor, similar, unrelated) triplets as "
            f"{report.reference} does; as labelled: {report.reference} "
            f"{report.ranking_reference:.2%}, {report.candidate} {report.ranking_candidate:.2%}"
        )
    return lines


def _auc_line(report: ValidationReport) -> str:
    """``AUC: torch 0.7031, onnx 0.7030 (drop +0.0001); log-loss 0.6241, 0.6242`` (task:
    binary); a value that could not be measured (NaN scores) shows as n/a."""

    def value(number: float | None) -> str:
        return "n/a" if number is None else f"{number:.4f}"

    drop = "" if report.auc_drop is None else f" (drop {report.auc_drop:+.4f})"
    line = (
        f"AUC: {report.reference} {value(report.auc_reference)}, "
        f"{report.candidate} {value(report.auc_candidate)}{drop}"
    )
    losses = (report.log_loss_reference, report.log_loss_candidate)
    if any(loss is not None for loss in losses):
        line += f"; log-loss {value(losses[0])}, {value(losses[1])}"
    return line


def _f1_line(report: ValidationReport) -> str:
    """``F1 (frames): torch 0.9907 (P 0.9971, R 0.9844), onnx ... (drop +0.0000)`` (task:
    detection); n/a where it could not be measured."""

    def side(f1: float | None, precision: float | None, recall: float | None) -> str:
        if f1 is None:
            return "n/a"
        return f"{f1:.4f} (P {precision or 0.0:.4f}, R {recall or 0.0:.4f})"

    drop = "" if report.f1_drop is None else f" (drop {report.f1_drop:+.4f})"
    reference = side(report.f1_reference, report.precision_reference, report.recall_reference)
    candidate = side(report.f1_candidate, report.precision_candidate, report.recall_candidate)
    return f"F1 (frames): {report.reference} {reference}, {report.candidate} {candidate}{drop}"


def _run_alone(report: ValidationReport) -> Group:
    """A model that is its own reference: what one run on the data returned, its accuracy."""
    given = f"{report.samples} random inputs" if report.random_inputs else samples(report)
    table = named_table(
        f"{report.candidate} on {given}", ("output", "shape", "NaN/Inf"), ("output",)
    )
    for out in report.ran:
        table.add_row(escape(out.name), str(out.shape), str(out.nonfinite))
    note = "the model file itself: run once, with no reference to compare it with"
    parts: list[RenderableType] = [table, Text(note, style="dim")]
    if report.accuracy_candidate is not None:
        parts.append(Text(f"accuracy: {report.candidate} {report.accuracy_candidate:.2%}"))
    if report.auc_candidate is not None:
        loss = report.log_loss_candidate
        extra = "" if loss is None else f", log-loss {loss:.4f}"
        parts.append(Text(f"AUC: {report.candidate} {report.auc_candidate:.4f}{extra}"))
    return Group(*parts)


def comparison(reports: Sequence[ValidationReport], title: str) -> Group:
    """One row per candidate and output against the reference, then each failed gate."""
    table = named_table(
        title,
        (
            "candidate",
            "output",
            "max abs",
            "mean abs",
            "max rel",
            "cosine",
            "top-1",
            "NaN/Inf",
            "accuracy",
            "gates",
        ),
        left=("candidate", "output"),
    )
    for report in reports:
        for out in report.outputs:
            accuracy = (
                "—" if report.accuracy_candidate is None else f"{report.accuracy_candidate:.2%}"
            )
            if report.auc_candidate is not None:  # task: binary
                accuracy = f"AUC {report.auc_candidate:.4f}"
            if report.f1_candidate is not None:  # task: detection
                accuracy = f"F1 {report.f1_candidate:.4f}"
            verdict = "ok" if report.passed else "[bold red]FAILED[/]"
            if report.passed and all(g.gate == "nonfinite" for g in report.gates):
                verdict = "no gates"  # only NaN/Inf was judged; the line below says so
            table.add_row(
                escape(report.candidate),
                escape(out.name),
                f"{out.max_abs:.3g}",
                f"{out.mean_abs:.3g}",
                f"{out.max_rel:.3g}",
                f"{out.cosine:.6f}",
                _top1(out.top1_agreement),
                f"{out.nonfinite_reference}/{out.nonfinite_candidate}",
                accuracy,
                verdict,
            )
    parts: list[RenderableType] = [table]
    for report in reports:
        for gate in report.failures():
            parts.append(Text(f"  {report.candidate}: {gate.describe()}", style="bold red"))
    return Group(*parts)


def bisect(result: Any) -> Group:
    """The run-up to the first tensor where two ONNX graphs part ways."""
    first = result.first_divergence
    table = named_table(
        f"intermediate tensors ({len(result.compared)} compared, {result.skipped} not shared)",
        ("tensor", "node", "op", "max abs", "cosine", ""),
        left=("tensor", "node", "op"),
    )
    stop = result.compared.index(first) + 1 if first else len(result.compared)
    for diff in result.compared[max(0, stop - 8) : stop]:  # the run-up to the first divergence
        mark = "ok" if diff.ok else "[bold red]first divergence[/]"
        table.add_row(
            escape(diff.tensor),
            escape(diff.node),
            diff.op_type,
            f"{diff.max_abs:.3g}",
            f"{diff.cosine:.6f}",
            mark,
        )
    if first:
        line = (
            f"first divergence: tensor '{first.tensor}' from node '{first.node}' "
            f"({first.op_type}), max abs {first.max_abs:.3g}"
        )
    else:
        line = "no shared tensor differs beyond the tolerance"
    return Group(table, Text(line))


def candidates(rows: list[dict[str, Any]], batch: str) -> Table:
    """The optimization search's candidate table (latency at the objective's batch size)."""
    table = named_table(
        f"candidates (latency at batch {batch}, ms)",
        ("candidate", "MB", "p50", "p99", "accuracy", "drop", "gates", "Pareto"),
        left=("candidate",),
    )
    for row in rows:
        stats = row["latency"].get(batch, {})
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
        drop = "—" if row["accuracy_drop"] is None else f"{row['accuracy_drop'] * 100:+.2f}"
        if row["accuracy"] is None and row.get("auc") is not None:  # task: binary
            accuracy = f"AUC {row['auc']:.4f}"
            drop = "—" if row.get("auc_drop") is None else f"{row['auc_drop']:+.4f}"
        if row["accuracy"] is None and row.get("f1") is not None:  # task: detection
            accuracy = f"F1 {row['f1']:.4f}"
            drop = "—" if row.get("f1_drop") is None else f"{row['f1_drop']:+.4f}"
        verdict = "baseline" if row["baseline"] else ("pass" if row["passed"] else "FAIL")
        if row["chosen"]:
            verdict = f"[bold]{verdict}, chosen[/]"
        name = f"[bold]{escape(row['name'])}[/]" if row["chosen"] else escape(row["name"])
        table.add_row(
            name,
            f"{row['bytes'] / 1e6:.3f}",
            f"{stats.get('p50_ms', 0):.3f}",
            f"{stats.get('p99_ms', 0):.3f}",
            accuracy,
            drop,
            verdict,
            "✓" if row.get("pareto") else "",
        )
    return table


def _ms(value: float) -> str:
    """Short fixed precision for narrow tables: 0.057, 1.21, 12.3, 528."""
    digits = 3 if value < 1 else 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f}"


def bench(report: BenchReport, baseline: str | None = None) -> Group:
    """Two tables: latency per artifact and batch size, then each artifact's setup.

    ``baseline`` names the artifact the ratio column divides by (default: the first one);
    the ratio is baseline p50 / row p50, so above 1 means faster than the baseline.
    The caption holds the conditions (hardware, threads, load average).
    """
    base = baseline or report.results[0].name
    latency = named_table(
        f"latency per {report.timed} in ms; × {base} = {base} p50 / p50 (>1: faster)",
        ("artifact", "batch", "p50", "p90", "p99", "min–max", "samples/s", f"× {base}"),
        left=("artifact",),
    )
    for b in report.batch_sizes:
        ratios = report.speedups(base, b)
        for result in report.results:
            s = result.at(b)
            latency.add_row(
                escape(result.name),
                str(b),
                _ms(s.p50_ms),
                _ms(s.p90_ms),
                _ms(s.p99_ms),
                f"{_ms(s.min_ms)}–{_ms(s.max_ms)}",
                f"{s.samples_per_s:,.0f}",
                f"{ratios[result.name]:.2f}×",
            )
        latency.add_section()
    setup = named_table(
        None,
        ("artifact", "backend", "threads", "file MB", "load RSS MB"),
        left=("artifact", "backend"),
    )
    for result in report.results:
        setup.add_row(
            escape(result.name),
            result.backend,
            str(result.threads),
            f"{result.file_bytes / 2**20:.2f}",
            f"{result.load_rss_mb:.1f}",
        )
    fp = report.fingerprint
    la0 = " ".join(f"{v:.2f}" for v in report.loadavg_start)
    la1 = " ".join(f"{v:.2f}" for v in report.loadavg_end)
    conditions = Text(
        f"{fp.get('cpu')} · {fp.get('usable_cores')}/{fp.get('logical_cores')} cores · "
        f"isa {','.join(fp.get('isa') or []) or '?'} · gpu {fp.get('gpu') or 'none'} · "
        f"threads {report.threads} · runs ≤{report.runs}, warm-up {report.warmup} · "
        f"loadavg {la0} → {la1} · peak RSS {report.peak_rss_mb:.0f} MB · {report.seconds:.1f} s",
        style="dim",
    )
    return Group(latency, setup, conditions)


def search_outcome(search: dict[str, Any]) -> str:
    """What the search covered and what its exit status means, as console markup."""
    evaluated, planned = search["evaluated"], search.get("planned", search["evaluated"])
    lines = [f"evaluated {evaluated} of {planned} planned candidates"]
    budget = search.get("skipped_for_budget", 0)
    if budget:
        lines[0] += (
            f"; [bold yellow]{budget} skipped: the budget of {search['budget_s']:g} s was "
            f"spent[/] (raise --budget to try them)"
        )
    other = [s for s in search.get("skipped", []) if "budget spent" not in s]
    if other:
        lines.append("not tried: " + escape("; ".join(other)))
    if search["passed"]:
        lines.append(f"exit status 0: {escape(search['chosen'])} passed its gates")
    else:
        lines.append(
            f"[bold red]exit status 1[/]: no candidate passed the gates; "
            f"{escape(search['chosen'])} (the closest) was packaged"
        )
    return "\n".join(lines)


def examples(entry: dict[str, Any]) -> Table:
    """The manifest's ``examples``: each named input's top-1 class per artifact, with its
    probability; a class that differs from the first artifact's (the reference) in yellow,
    and how many agree with it in the caption."""
    names: list[str] = entry.get("names") or []
    predictions: dict[str, list[list[dict[str, Any]]]] = entry.get("predictions") or {}
    artifacts = list(predictions)
    table = named_table("top-1 class of each example", ("example", *artifacts), left=("example",))
    for column in table.columns[1:]:
        column.justify, column.no_wrap, column.overflow = "left", False, "fold"
    agree = dict.fromkeys(artifacts, 0)
    for row, name in enumerate(names):
        reference = predictions[artifacts[0]][row][0]["label"] if artifacts else None
        cells: list[RenderableType] = [Text(name)]
        for artifact in artifacts:
            best = predictions[artifact][row][0]
            same = best["label"] == reference
            agree[artifact] += same
            text = f"{best['label']} {best['probability']:.2f}"
            cells.append(Text(text, style="" if same else "yellow"))
        table.add_row(*cells)
    if artifacts:
        counts = ", ".join(f"{a} {agree[a]}/{len(names)}" for a in artifacts[1:])
        table.caption = f"same top-1 as {artifacts[0]}: {counts}" if counts else None
    return table
