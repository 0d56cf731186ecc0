"""The report model as Markdown (report.md)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from shipyard.report.model import Fact, Report, Row

# Characters that would end a table cell, start emphasis, code, a link or raw HTML. An
# underscore inside a word (static_qdq_u8s8) starts nothing in CommonMark: left as it is, so
# that report.md stays readable as text.
_SPECIAL = re.compile(r"([\\|*`\[\]<>]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")
# What would make a line a heading, a list item or a quote.
_LEADING = re.compile(r"^([#>+=-])")


def escape(text: str, line: bool = False) -> str:
    """``text`` shown literally in Markdown (manifest strings are user data), on one line;
    ``line``: it starts a line, where "#", "-"... have a meaning of their own."""
    escaped = _SPECIAL.sub(r"\\\1", " ".join(text.split()))
    return _LEADING.sub(r"\\\1", escaped) if line else escaped


def _facts(facts: list[Fact]) -> list[str]:
    return [f"- **{escape(fact.label)}**: {escape(fact.value)}" for fact in facts]


def _cells(report: Report, row: Row) -> list[str]:
    cells = [escape(cell) for cell in row.cells]
    if row.chosen:
        cells[report.name_column] = f"**{cells[report.name_column]}** ★ chosen"
    if not row.passed:
        cells[report.status_column] = f"**{cells[report.status_column]}**"
    return cells


def _table(header: list[str], rows: Sequence[tuple[str, ...]], align: str) -> list[str]:
    """A Markdown table; ``align`` has one character per column: l(eft), r(ight), c(entre)."""
    rule = {"l": "---", "r": "---:", "c": ":-:"}
    lines = ["| " + " | ".join(escape(cell) for cell in header) + " |"]
    lines.append("|" + "|".join(rule[a] for a in align) + "|")
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return lines


def _classifier(report: Report) -> list[str]:
    """The agreement table and the examples' top-k classes, when the manifest has them."""
    lines: list[str] = []
    if report.agreement:
        lines += ["", f"## Agreement with {escape(report.agreement_reference)}", ""]
        lines += _table(report.agreement_columns, report.agreement, "llrrr")
        lines += ["", escape(report.agreement_note, line=True)]
    if report.examples:
        baseline = next(row.artifact for row in report.examples if row.baseline)
        count = max(len(row.classes) for row in report.examples)
        rows = [
            (
                row.example if row.first else "",
                row.artifact,
                "—" if row.baseline else ("✓" if row.agrees else "✗ differs"),
                " · ".join(row.classes),
            )
            for row in report.examples
        ]
        header = ["example", "artifact", f"top-1 as {baseline}", f"top-{count} (probability)"]
        lines += ["", f"## Examples: top-{count} classes", ""]
        lines += _table(header, rows, "llcl")
    return lines


def to_markdown(report: Report) -> str:
    lines = [f"# {escape(report.title)}", ""]
    if report.description:
        lines += [escape(report.description, line=True), ""]
    if report.summary:
        lines += ["## Summary", "", *_facts(report.summary), ""]
    if report.search:
        lines += ["## Search", "", *_facts(report.search), ""]
    header = [escape(column.title) for column in report.columns]
    lines += ["## Candidates", "", "| " + " | ".join(header) + " |"]
    lines.append(
        "|"
        + "|".join("---:" if i != report.name_column else "---" for i in range(len(header)))
        + "|"
    )
    lines += ["| " + " | ".join(_cells(report, row)) + " |" for row in report.rows]
    lines += ["", *[escape(note, line=True) for note in report.notes]]
    lines += ["", "Columns:", ""]
    lines += [f"- **{escape(c.title)}**: {escape(c.legend)}" for c in report.columns]
    lines += _classifier(report)
    lines += ["", "## Conditions", "", escape(report.conditions, line=True), ""]
    if report.plots:
        lines += ["## Plots", ""]
        for plot in report.plots:
            lines += [
                f"![{escape(plot.title)}]({plot.path.name})",
                "",
                f"*{escape(plot.caption)}*",
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"
