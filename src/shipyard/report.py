"""Reports: the candidate table and its plots, as report.md, report.html and PNG files.

The data is ``manifest["candidates"]``: one row per artifact (the torch baseline included)
with size, latency per batch size, accuracy and drop, and whether it passed its gates.
``candidate_rows`` builds those rows; ``write_report`` renders them. Plots are made with
matplotlib (Agg backend: no display needed).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact, write_text_atomic
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
    rows = [
        {
            "name": reference.name,
            "baseline": True,
            "bytes": reference.size_bytes,
            "latency": latency(reference.name),
            "accuracy": first.accuracy_reference if first else None,
            "accuracy_drop": 0.0 if first and first.accuracy_reference is not None else None,
            "max_abs": 0.0,
            "passed": True,
            "chosen": chosen == reference.name,
        }
    ]
    for artifact, report in zip(artifacts, reports, strict=True):
        rows.append(
            {
                "name": artifact.name,
                "baseline": False,
                "bytes": artifact.size_bytes,
                "latency": latency(artifact.name),
                "accuracy": report.accuracy_candidate,
                "accuracy_drop": report.accuracy_drop,
                "max_abs": max((o.max_abs for o in report.outputs), default=0.0),
                "passed": report.passed,
                "chosen": chosen == artifact.name,
            }
        )
    if bench is not None:
        mark_pareto(rows, batch if batch is not None else max(bench.batch_sizes))
    return rows


def mark_pareto(rows: list[dict[str, Any]], batch: int) -> None:
    """Set ``row["pareto"]``: no other row is at least as good on size, p50 latency at
    ``batch`` and accuracy, and better on one of them. Rows without latency are never on it.
    """

    def key(row: dict[str, Any]) -> tuple[float, float, float] | None:
        stats = row["latency"].get(str(batch))
        if stats is None:
            return None
        accuracy = row["accuracy"] if row["accuracy"] is not None else 0.0
        return (row["bytes"], stats["p50_ms"], -accuracy)  # all three: lower is better

    keys = [key(row) for row in rows]
    for row, mine in zip(rows, keys, strict=True):
        row["pareto"] = mine is not None and not any(
            other is not None
            and other != mine
            and all(o <= m for o, m in zip(other, mine, strict=True))
            for other in keys
        )


def _batch(rows: list[dict[str, Any]], preferred: int | None) -> str | None:
    sizes = sorted({int(b) for row in rows for b in row["latency"]})
    if not sizes:
        return None
    return str(preferred if preferred in sizes else sizes[-1])


def _plot(rows: list[dict[str, Any]], x_key: str, batch: str | None, path: Path) -> bool:
    """Scatter of x (latency or size) against accuracy; each point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for row in rows:
        if row["accuracy"] is None:
            continue
        if x_key == "latency":
            if batch is None or batch not in row["latency"]:
                continue
            x = row["latency"][batch]["p50_ms"]
        else:
            x = row["bytes"] / 1e6
        points.append((x, row["accuracy"] * 100, row))
    if len(points) < 2:
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    for x, y, row in points:
        if row["baseline"]:
            axes.scatter([x], [y], zorder=3, marker="*", s=160, color="black")
        else:
            color = "tab:green" if row["passed"] else "tab:red"
            axes.scatter([x], [y], zorder=3, marker="o", s=50, color=color)
        label = row["name"] + (" (chosen)" if row["chosen"] else "")
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    unit = f"p50 latency at batch {batch} (ms)" if x_key == "latency" else "file size (MB)"
    axes.set_xlabel(unit)
    axes.set_ylabel("held-out accuracy (%)")
    axes.set_title(
        f"{'latency' if x_key == 'latency' else 'size'} vs accuracy "
        "(★ baseline, green passed, red failed)",
        fontsize=10,
    )
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _markdown_table(rows: list[dict[str, Any]], batches: list[str]) -> list[str]:
    header = [
        "candidate",
        "size MB",
        *[f"p50/p99 ms @{b}" for b in batches],
        "accuracy",
        "drop (points)",
        "max abs",
        "gates",
        "Pareto",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lat = [
            f"{row['latency'][b]['p50_ms']:.3f} / {row['latency'][b]['p99_ms']:.3f}"
            if b in row["latency"]
            else "—"
            for b in batches
        ]
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy'] * 100:.2f} %"
        drop = "—" if row["accuracy_drop"] is None else f"{row['accuracy_drop'] * 100:+.2f}"
        verdict = "baseline" if row["baseline"] else ("pass" if row["passed"] else "FAIL")
        name = f"**{row['name']}**" if row["chosen"] else row["name"]
        pareto = "✓" if row.get("pareto") else ""
        cells = [name, f"{row['bytes'] / 1e6:.3f}", *lat, accuracy, drop]
        cells += [f"{row['max_abs']:.2g}", verdict, pareto]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(folder: Path, manifest: dict[str, Any], batch: int | None = None) -> list[Path]:
    """Write report.md, report.html and the plots into ``folder``; return the paths written."""
    rows: list[dict[str, Any]] = manifest.get("candidates") or []
    batches = sorted({b for row in rows for b in row["latency"]}, key=int)
    plot_batch = _batch(rows, batch)
    hardware = manifest.get("hardware") or {}
    title = f"{manifest.get('name')} version {manifest.get('version')}"
    lines = [f"# {title}", "", manifest.get("description") or "", ""]
    search = manifest.get("search")
    if search:
        lines += [
            f"Search: objective **{search.get('objective')}**, "
            f"{search.get('evaluated')} candidates in {search.get('seconds', 0):.0f} s; "
            f"{search.get('verdict', '')}",
            "",
        ]
    lines += _markdown_table(rows, batches)
    lines += [
        "",
        f"Measured on {hardware.get('cpu')} ({hardware.get('logical_cores')} cores, "
        f"ISA {', '.join(hardware.get('isa') or [])}, GPU {hardware.get('gpu') or 'none'}); "
        "latencies from one interleaved run; the ratio between rows is what carries over "
        "to another machine, not the absolute numbers.",
        "",
    ]
    written: list[Path] = []
    images = []
    for kind in ("latency", "size"):
        png = folder / f"report-{kind}-accuracy.png"
        if _plot(rows, kind, plot_batch, png):
            lines += [f"![{kind} vs accuracy]({png.name})", ""]
            written.append(png)
            images.append(png)
    markdown = "\n".join(lines) + "\n"
    md_path, html_path = folder / "report.md", folder / "report.html"
    write_text_atomic(md_path, markdown)
    body = "\n".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    table_md = "\n".join(_markdown_table(rows, batches))
    write_text_atomic(
        html_path, _HTML.format(title=html.escape(title), table=_html_table(table_md), images=body)
    )
    return [md_path, html_path, *written]


def _html_table(markdown: str) -> str:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if "---|" not in line]
    head, *body = rows
    cells = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    out = [f"<tr>{cells}</tr>"]
    for row in body:
        out.append(
            "<tr>" + "".join(f"<td>{html.escape(c.strip().strip('*'))}</td>" for c in row) + "</tr>"
        )
    return "<table>" + "".join(out) + "</table>"


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:48%}}</style>
</head><body><h1>{title}</h1>{table}<p>{images}</p></body></html>
"""
