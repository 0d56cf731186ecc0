"""The two plots of a report: latency vs accuracy and size vs accuracy (matplotlib, Agg).

With 25 candidates, labelling every point smears the names into each other. So only the
chosen candidate and the plot's own front (its best trade-offs) get their names; every other
point gets its table row number where there is room for it, and the table says the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.report.labels import Labels
from shipyard.report.model import Plot, Report, Row
from shipyard.report.rows import eligible, front

_PASSED, _FAILED, _BASELINE, _CHOSEN = "#2e7d32", "#c62828", "#212121", "#f9a825"
_RING: dict[str, Any] = {
    "marker": "o",
    "s": 330,
    "facecolors": "none",
    "edgecolors": _CHOSEN,
    "linewidths": 2.4,
}


def write_plots(report: Report, folder: Path) -> list[Plot]:
    """Draw the plots the report's rows allow (two points with accuracy); return them."""
    plots = []
    for kind in ("latency", "size"):
        path = folder / f"report-{kind}-accuracy.png"
        title = (
            f"p50 latency at batch {report.batch} vs accuracy"
            if kind == "latency"
            else "file size vs accuracy"
        )
        figure = draw_plot(report, kind, title)
        if figure is not None:
            figure.savefig(path)
            _close(figure)
            caption = (
                "Up and to the left is better. Named: the chosen candidate and this plot's "
                "front (among the baseline and the candidates that passed: none is both further "
                "left and at least as accurate). Other points carry their row number in the "
                "table where there is room for it."
            )
            plots.append(Plot(path, title, caption))
    return plots


def _x(row: Row, kind: str, batch: str | None) -> float | None:
    if kind == "size":
        return float(row.data["bytes"]) / 1e6
    stats = row.data.get("latency", {}).get(batch) if batch else None
    return None if stats is None else float(stats["p50_ms"])


def draw_plot(report: Report, kind: str, title: str) -> Any | None:
    """The matplotlib Figure of one plot (``kind``: "latency" or "size"), or None when fewer
    than two rows have both an x value and an accuracy."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot is imported
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    points: list[tuple[float, float, Row]] = []
    for row in report.rows:
        x, accuracy = _x(row, kind, report.batch), row.data.get("accuracy")
        if x is not None and accuracy is not None:
            points.append((x, float(accuracy) * 100, row))
    if len(points) < 2:
        return None
    on_front = front([(x, -y) if eligible(row.data) else None for x, y, row in points])

    figure, axes = plt.subplots(figsize=(7.6, 4.8), dpi=140)
    _limits(axes, [x for x, _, _ in points], [y for _, y, _ in points])
    line = sorted((x, y) for (x, y, _), f in zip(points, on_front, strict=True) if f)
    axes.step(*zip(*line, strict=True), where="post", color="#90a4ae", lw=1.2, ls="--", zorder=1)
    for x, y, row in points:
        # clip_on=False: a point at exactly 100 % sits on the top edge and must stay whole.
        axes.scatter([x], [y], zorder=3, clip_on=False, **_marker(row))
        if row.chosen:
            axes.scatter([x], [y], zorder=4, clip_on=False, **_RING)
    axes.set_xlabel("p50 latency (ms)" if kind == "latency" else "file size (MB)")
    axes.set_ylabel("accuracy on held-out data (%)")
    axes.set_title(title, fontsize=11)
    axes.grid(alpha=0.3)
    baseline = next((row.name for _, _, row in points if row.baseline), "baseline")
    legend = [
        Line2D([], [], marker="*", ls="", ms=12, color=_BASELINE, label=f"baseline ({baseline})"),
        Line2D([], [], marker="o", ls="", ms=7, color=_PASSED, label="passed"),
        Line2D([], [], marker="X", ls="", ms=7, color=_FAILED, label="failed"),
        Line2D([], [], marker="o", ls="", ms=14, mfc="none", mec=_CHOSEN, mew=2.4, label="chosen"),
        Line2D([], [], color="#90a4ae", ls="--", label="front"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=5, fontsize=8.5, frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    _label(figure, axes, points, on_front)
    return figure


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)  # pyplot keeps every figure alive until closed


def _marker(row: Row) -> dict[str, Any]:
    """scatter() arguments for a row's point (``s``: its area in points squared)."""
    if row.baseline:
        return {"marker": "*", "s": 190, "color": _BASELINE}
    if row.passed:
        return {"marker": "o", "s": 42, "color": _PASSED, "alpha": 0.85}
    return {"marker": "X", "s": 52, "color": _FAILED, "alpha": 0.85}


def _radius(row: Row) -> float:
    """How far a row's point reaches from its centre, in points (the ring, when chosen)."""
    area = _RING["s"] if row.chosen else _marker(row)["s"]
    return float(area) ** 0.5 / 2


def _limits(axes: Any, xs: list[float], ys: list[float]) -> None:
    """x from 0 (ratios read true); accuracy padded around the data but never past 100 %."""
    axes.set_xlim(0, max(xs) * 1.12)
    low, high = min(ys), max(ys)
    pad = max((high - low) * 0.12, 0.2)
    axes.set_ylim(max(low - pad, 0.0), min(high + pad, 100.0))


def _label(
    figure: Any, axes: Any, points: list[tuple[float, float, Row]], on_front: list[bool]
) -> None:
    """Names for the chosen point and the front, then row numbers wherever they fit."""
    labels = Labels(figure, axes)
    for x, y, row in points:
        labels.marker((x, y), _radius(row))
    # Named points at the same spot (ties are common: same size, same accuracy) share one
    # label, a line each; the chosen one's label is placed first, then left to right.
    spots: dict[tuple[float, float], list[Row]] = {}
    numbered = []
    for (x, y, row), on in zip(points, on_front, strict=True):
        if row.chosen or on:
            spots.setdefault((x, y), []).append(row)
        else:
            numbered.append((x, y, row))
    for xy in sorted(spots, key=lambda xy: (not any(r.chosen for r in spots[xy]), xy[0])):
        rows = sorted(spots[xy], key=lambda r: (not r.chosen, r.index))
        text = "\n".join(f"{r.index} {r.name}" + (" (chosen)" if r.chosen else "") for r in rows)
        reach = max(_radius(r) for r in rows)
        weight = "bold" if rows[0].chosen else "normal"
        labels.place(text, xy, reach, name=True, fontsize=8.5, color="#111", weight=weight)
    for x, y, row in numbered:
        labels.place(str(row.index), (x, y), _radius(row), name=False, fontsize=7, color="#666")
