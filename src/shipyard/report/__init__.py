"""Reports: what a search or build found, as report.md, report.html and two PNG plots.

The data is ``manifest["candidates"]``: one row per artifact (the baseline included) with
size, latency per batch size, accuracy and drop, and whether it passed its gates.
``candidate_rows`` builds those rows; ``build_report`` turns a manifest into one model of the
report (``model.py``), which ``to_markdown`` and ``to_html`` render, so that both files hold
the same sections and facts. Reports are derived documents: the package's integrity does not
cover them (``package.REPORT_FILES``), and ``regenerate`` writes them again at will.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.artifact import write_text_atomic
from shipyard.package import load_package, repair_manifest
from shipyard.report.model import Report, build_report
from shipyard.report.plots import write_plots
from shipyard.report.rows import candidate_rows, mark_pareto
from shipyard.report.to_html import to_html
from shipyard.report.to_markdown import to_markdown

__all__ = ["Report", "build_report", "candidate_rows", "mark_pareto", "regenerate", "write_report"]


def write_report(folder: Path, manifest: dict[str, Any], batch: int | None = None) -> list[Path]:
    """Write report.md, report.html and the plots into ``folder``; return the paths written.

    ``batch``: the batch size to judge the front and the summary at (default: the search's,
    else the largest measured).
    """
    report = build_report(manifest, batch)
    report.plots = write_plots(report, folder)
    md_path, html_path = folder / "report.md", folder / "report.html"
    write_text_atomic(md_path, to_markdown(report))
    write_text_atomic(html_path, to_html(report))
    return [md_path, html_path, *(plot.path for plot in report.plots)]


def regenerate(folder: str | Path) -> tuple[list[Path], bool]:
    """Write a package's reports again from its manifest; return (paths written, whether
    the manifest was brought up to date).

    Works whatever happened to the old reports (edited, deleted); refuses, with PackageError,
    a package whose served files or manifest changed. A manifest from an older version (its
    hashes list the reports, no manifest digest) is repaired, atomically.
    """
    package = load_package(folder)
    written = write_report(package.path, package.manifest)
    return written, repair_manifest(package)
