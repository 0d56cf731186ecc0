from __future__ import annotations

from pathlib import Path

import shipyard
from shipyard.package import load_package
from shipyard.recipe import parse_recipe
from shipyard.report import write_report

RECIPE = """\
name: tiny
model: {source: tests.conftest:small_net}
signature:
  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]
validate: {gates: {atol: 1.0e-4}, samples: 16}
bench: {batch_sizes: [1, 4], runs: 5, warmup: 1}
"""


def test_build_writes_a_report_with_table_and_plots(tmp_path: Path) -> None:
    result = shipyard.build(parse_recipe(RECIPE), tmp_path)
    folder = result.package_dir
    rows = result.manifest["candidates"]
    assert [r["name"] for r in rows] == ["torch", "onnx"]
    assert rows[0]["baseline"] and rows[1]["chosen"] and rows[1]["passed"]
    assert set(rows[1]["latency"]) == {"1", "4"}
    markdown = (folder / "report.md").read_text()
    assert "| **onnx** |" in markdown and "p50/p99 ms @4" in markdown
    html = (folder / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," not in html  # no labels: no plot
    # Reports are derived documents: not in the manifest's hashes.
    assert "report.md" not in result.manifest["files"]
    load_package(folder)


def test_plots_need_accuracy_and_mark_every_candidate(tmp_path: Path) -> None:
    manifest = {
        "name": "m",
        "version": 1,
        "candidates": [
            {
                "name": n,
                "baseline": n == "torch",
                "bytes": b,
                "accuracy": a,
                "accuracy_drop": d,
                "max_abs": 0.0,
                "passed": d < 0.01,
                "chosen": n == "int8",
                "latency": {"8": {"p50_ms": p, "p99_ms": p * 2, "samples_per_s": 8e3 / p}},
            }
            for n, b, a, d, p in [
                ("torch", 4e6, 0.99, 0.0, 5.0),
                ("onnx", 4e6, 0.99, 0.0, 3.0),
                ("int8", 1e6, 0.985, 0.005, 1.0),
                ("bad", 1e6, 0.5, 0.49, 0.9),
            ]
        ],
    }
    written = write_report(tmp_path, manifest)
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 2
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (
        "| bad | 1.000 | 0.900 / 1.800 | 50.00 % | +49.00 | 0 | FAIL |  |"
        in (tmp_path / "report.md").read_text()
    )
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 2


def test_pareto_front() -> None:
    from shipyard.report import mark_pareto

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
