from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest

import shipyard
from shipyard.package import load_package
from shipyard.recipe import parse_recipe
from shipyard.report import build_report, mark_pareto, write_report
from shipyard.report.model import Row
from shipyard.report.plots import draw_plot
from shipyard.report.to_html import to_html
from shipyard.report.to_markdown import to_markdown

RECIPE = """\
name: tiny
model: {source: tests.conftest:small_net}
signature:
  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]
validate: {gates: {atol: 1.0e-4}, samples: 16}
bench: {batch_sizes: [1, 4], runs: 5, warmup: 1}
"""


def candidate(
    name: str, size: float, accuracy: float | None, drop: float, p50: float, **flags: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "baseline": flags.get("baseline", False),
        "bytes": size,
        "accuracy": accuracy,
        "accuracy_drop": drop,
        "max_abs": 0.0,
        "passed": flags.get("passed", drop < 0.01),
        "chosen": flags.get("chosen", False),
        "latency": {"8": {"p50_ms": p50, "p99_ms": p50 * 2, "samples_per_s": 8e3 / p50}},
    }


def manifest_of(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": "m",
        "version": 1,
        "description": "a small CNN",
        "hardware": {"cpu": "Test CPU 9000", "usable_cores": 4, "isa": ["avx2"], "gpu": None},
        "benchmark": {"threads": 1, "runs": 50, "warmup": 5, "loadavg_start": [0.5, 0, 0]},
        "candidates": rows,
        **extra,
    }


FOUR = [
    candidate("torch", 4e6, 0.99, 0.0, 5.0, baseline=True),
    candidate("onnx", 4e6, 0.99, 0.0, 3.0),
    candidate("int8", 1e6, 0.985, 0.005, 1.0, chosen=True),
    candidate("bad", 1e6, 0.5, 0.49, 0.9),
]
SEARCH = {
    "objective": "latency",
    "batch_size": 8,
    "seconds": 12.0,
    "evaluated": 3,
    "passed": 2,
    "gates": {"max_accuracy_drop": 0.01},
    "verdict": "chose int8: best latency of 2 passing",
}


def test_build_writes_a_report_with_table_and_plots(tmp_path: Path) -> None:
    result = shipyard.build(parse_recipe(RECIPE), tmp_path)
    folder = result.package_dir
    rows = result.manifest["candidates"]
    assert [r["name"] for r in rows] == ["torch", "onnx"]
    assert rows[0]["baseline"] and rows[1]["chosen"] and rows[1]["passed"]
    assert set(rows[1]["latency"]) == {"1", "4"}
    markdown = (folder / "report.md").read_text()
    assert "| 2 | **onnx** ★ chosen |" in markdown and "p50/p99 ms @4" in markdown
    page = (folder / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," not in page  # no accuracy: no plot
    # Reports are derived documents: not in the manifest's hashes, the model file is.
    assert "report.md" not in result.manifest["files"] and "model.onnx" in result.manifest["files"]
    load_package(folder)


def test_plots_need_accuracy_and_mark_every_candidate(tmp_path: Path) -> None:
    written = write_report(tmp_path, manifest_of(FOUR))
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 2
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    markdown = (tmp_path / "report.md").read_text()
    assert "| 4 | bad | 1.000 | 0.900 / 1.800 | 50.00 % | +49.00 | 0 | **FAIL** |  |" in markdown
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2


def test_pareto_front() -> None:
    def row(name: str, size: float, p50: float, accuracy: float) -> dict[str, object]:
        return {
            "name": name,
            "bytes": size,
            "accuracy": accuracy,
            "latency": {"8": {"p50_ms": p50}},
        }

    rows = [
        row("big-slow", 4, 5, 0.99),
        row("small-fast", 1, 1, 0.99),
        row("worse", 2, 2, 0.98),
        row("most-accurate", 4, 5, 0.995),
    ]
    mark_pareto(rows, 8)  # type: ignore[arg-type]
    assert {r["name"] for r in rows if r["pareto"]} == {"small-fast", "most-accurate"}


def test_failed_rows_are_never_on_the_front_nor_push_others_off_it() -> None:
    rows = [
        candidate("torch", 4e6, 0.99, 0.0, 5.0, baseline=True),
        candidate("ok", 2e6, 0.99, 0.0, 2.0),
        # Better on every axis than "ok", but it failed a gate (e.g. parity): not a choice.
        candidate("cheat", 1e6, 0.995, -0.005, 1.0, passed=False),
    ]
    mark_pareto(rows, 8)
    assert {r["name"]: r["pareto"] for r in rows} == {"torch": False, "ok": True, "cheat": False}
    # A failed baseline cannot happen; a baseline that nothing beats is on the front.
    mark_pareto(rows[:1] + rows[2:], 8)
    assert rows[0]["pareto"] is True


def test_report_recomputes_the_front_of_an_old_manifest() -> None:
    # Manifests from before the rule marked failed rows as Pareto.
    rows = [dict(row, pareto=True) for row in FOUR]
    report = build_report(manifest_of(rows))
    assert {r.name: r.pareto for r in report.rows}["bad"] is False
    assert "| 4 | bad |" in to_markdown(report) and "FAIL** |  |" in to_markdown(report)


def test_plots_name_only_the_front_and_the_chosen_and_stay_under_100_percent() -> None:
    rows = [candidate("torch", 4e6, 1.0, 0.0, 5.0, baseline=True)]  # 100 %: the top edge
    rows += [
        candidate(f"cand-{i:02d}", (1 + i % 5) * 1e6, 0.97 + 0.001 * (i % 7), 0.0, 1 + i % 6)
        for i in range(24)
    ]
    rows[7]["chosen"] = True
    report = build_report(manifest_of(rows))
    names = {row.index: row.name for row in report.rows}
    for kind in ("latency", "size"):
        figure = draw_plot(report, kind, kind)
        assert figure is not None
        axes = figure.axes[0]
        assert axes.get_ylim()[1] <= 100.0
        labels = [text.get_text() for text in axes.texts]
        named = {label for label in labels if " " in label}
        assert named, "the chosen candidate is always named"
        assert any(label.endswith("(chosen)") and names[8] in label for label in named)
        # Every named point is on this plot's front or is the chosen one; far fewer than 25.
        assert len(named) < 10
        numbers = [label for label in labels if " " not in label]
        assert all(label.isdigit() and int(label) in names for label in numbers)
        for label in named:
            row = next(r for r in report.rows if r.index == int(label.split()[0]))
            assert row.chosen or not any(dominates(other, row, kind) for other in report.rows)
        plt.close(figure)


def dominates(other: Row, row: Row, kind: str) -> bool:
    def x(r: Row) -> float:
        return float(r.data["bytes"] if kind == "size" else r.data["latency"]["8"]["p50_ms"])

    at_least = x(other) <= x(row) and other.data["accuracy"] >= row.data["accuracy"]
    return at_least and (x(other) < x(row) or other.data["accuracy"] > row.data["accuracy"])


def test_html_and_markdown_tell_the_same_story(tmp_path: Path) -> None:
    manifest = manifest_of(FOUR, search=SEARCH)
    write_report(tmp_path, manifest)
    markdown = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    for fact in [
        "a small CNN",  # description
        "chose int8: best latency of 2 passing",  # search verdict
        "Test CPU 9000",  # hardware
        "4.0× smaller than torch",  # summary
        "5.0× faster than torch",
        "0.50 points below torch",
        "★ chosen",
        "FAIL",
        "median / 99th-percentile latency",  # column legend
    ]:
        assert fact in markdown, fact
        assert fact in text, fact
    assert re.search(r'<tr class="[^"]*\bchosen\b[^"]*">.*int8', page)
    assert re.search(r'<tr class="[^"]*\bfailed\b[^"]*">.*bad', page)
    # Self-contained: styles inline, plots embedded, nothing fetched.
    assert "<style>" in page and 'src="data:image/png;base64,' in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_manifest_strings_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert('x')</script>"
    rows = [dict(row) for row in FOUR]
    rows[1]["name"] = f"onnx|{evil}"
    manifest = manifest_of(rows, description=f"**bold** {evil}", search={**SEARCH, "verdict": evil})
    manifest["name"] = "m<i>"
    page = to_html(build_report(manifest))
    assert "<script>" not in page and "<i>" not in page
    assert "&lt;script&gt;" in page and "m&lt;i&gt; version 1" in page
    markdown = to_markdown(build_report(manifest))
    assert "<script>" not in markdown and r"\*\*bold\*\*" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 2 |"))
    # The "|" in the name is escaped: the row keeps the header's number of cells.
    header = next(line for line in markdown.splitlines() if line.startswith("| #"))
    cells = re.compile(r"(?<!\\)\|")  # a pipe not escaped by a backslash
    assert "alert" in row and len(cells.findall(row)) == len(cells.findall(header))


@pytest.mark.parametrize("accuracy", [1.0, 0.2])
def test_accuracy_axis_never_passes_100(accuracy: float) -> None:
    rows = [
        candidate("torch", 4e6, accuracy, 0.0, 5.0, baseline=True),
        candidate("onnx", 4e6, accuracy, 0.0, 3.0, chosen=True),
    ]
    figure = draw_plot(build_report(manifest_of(rows)), "size", "size")
    assert figure is not None
    low, high = figure.axes[0].get_ylim()
    plt.close(figure)
    assert low < accuracy * 100 <= high <= 100.0


def _classes(*names: str) -> list[dict[str, Any]]:
    """Best first; a class's index is its name's place in CLASS_NAMES."""
    return [
        {"index": CLASS_NAMES.index(n), "label": n, "probability": 0.5 / (rank + 1)}
        for rank, n in enumerate(names)
    ]


EVIL = "<img src=x onerror=alert(1)>|*"
CLASS_NAMES = ["tabby cat", "tiger cat", "espresso", EVIL]
CLASSIFIER = {
    "validation": [
        {
            "reference": "torch",
            "candidate": "int8",
            "outputs": [
                {
                    "name": "logits",
                    "top1_agreement": 0.859,
                    "top5_agreement": 0.994,
                    "confident_top1_agreement": 1.0,
                    "confident_samples": 59,
                }
            ],
        }
    ],
    "examples": {
        "names": ["chelsea", EVIL],
        "top_k": 2,
        "predictions": {
            "torch": [_classes("tiger cat", "tabby cat"), _classes("espresso", EVIL)],
            "int8": [_classes("tabby cat", "tiger cat"), _classes("espresso", EVIL)],
        },
    },
}


def test_agreement_and_examples_sections_in_both_reports(tmp_path: Path) -> None:
    write_report(tmp_path, manifest_of(FOUR, **CLASSIFIER))
    markdown = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    for fact in [
        "Agreement with torch",
        "85.90 %",
        "99.40 %",
        "100.00 % of 59",
        "top-1 where torch is confident",
        "at least 0.5",
        "Examples: top-2 classes",
        "tiger cat 50.0 %",
        "tabby cat 25.0 %",
        "✗ differs",  # int8's top-1 on chelsea is not torch's
    ]:
        assert fact in markdown, fact
        assert fact in text, fact
    assert "| chelsea | torch | — | tiger cat 50.0 % · tabby cat 25.0 % |" in markdown
    assert "| | int8 | ✗ differs |" in markdown.replace("|  |", "| |")
    # Label files and example names are user data: escaped in both files.
    assert not re.search(r"(?<!\\)<img", markdown)  # every "<" escaped
    assert "\\<img src=x onerror=alert(1)\\>\\|\\*" in markdown
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;|*" in page


def test_reports_without_classifier_data_have_no_such_sections(tmp_path: Path) -> None:
    write_report(tmp_path, manifest_of(FOUR))
    markdown = (tmp_path / "report.md").read_text()
    assert "Agreement with" not in markdown and "Examples:" not in markdown
    assert "Agreement with" not in (tmp_path / "report.html").read_text()
