"""The report model as one self-contained HTML page (report.html).

Inline CSS and the plots as data URIs: the file can be mailed or attached on its own and
opens offline. Every string from the manifest is escaped (manifests are user data).
"""

from __future__ import annotations

import base64
from html import escape

from shipyard.report.model import Fact, Plot, Report, Row


def _facts(facts: list[Fact], css: str) -> str:
    items = "".join(f"<dt>{escape(f.label)}</dt><dd>{escape(f.value)}</dd>" for f in facts)
    return f'<dl class="{css}">{items}</dl>'


def _row(report: Report, row: Row) -> str:
    kinds = [k for k, on in (("baseline", row.baseline), ("failed", not row.passed),
                             ("chosen", row.chosen), ("pareto", row.pareto)) if on]  # fmt: skip
    cells = []
    for i, cell in enumerate(row.cells):
        text = escape(cell)
        if i == report.name_column:
            text += ' <span class="badge chosen">★ chosen</span>' if row.chosen else ""
            cells.append(f'<th scope="row" class="name">{text}</th>')
            continue
        if i == report.status_column:
            text = f'<span class="badge {escape(cell.lower())}">{text}</span>'
        cells.append(f"<td>{text}</td>")
    return f'<tr class="{" ".join(kinds)}">{"".join(cells)}</tr>'


def _table(report: Report) -> str:
    head = "".join(f'<th scope="col">{escape(c.title)}</th>' for c in report.columns)
    body = "\n".join(_row(report, row) for row in report.rows)
    return (
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _agreement(report: Report) -> str:
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in report.agreement_columns)
    body = "".join(
        "<tr>" + f'<th scope="row" class="name">{escape(row[0])}</th>'
        + f'<td class="left">{escape(row[1])}</td>'
        + "".join(f"<td>{escape(cell)}</td>" for cell in row[2:]) + "</tr>"
        for row in report.agreement
    )  # fmt: skip
    return (
        f"<section><h2>Agreement with {escape(report.agreement_reference)}</h2>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        f'</table></div><p class="note">{escape(report.agreement_note)}</p></section>'
    )


def _examples(report: Report) -> str:
    rows = report.examples
    baseline = next(row.artifact for row in rows if row.baseline)
    count = max(len(row.classes) for row in rows)
    span = {row.example: sum(r.example == row.example for r in rows) for row in rows if row.first}
    body = []
    for row in rows:
        cells = ""
        if row.first:
            name = escape(row.example)
            cells += f'<th scope="rowgroup" rowspan="{span[row.example]}" class="name">{name}</th>'
        verdict = "—" if row.baseline else ("✓" if row.agrees else "✗ differs")
        kind = "baseline" if row.baseline else ("" if row.agrees else "failed")
        classes = "".join(f"<li>{escape(c)}</li>" for c in row.classes)
        cells += (
            f'<td class="left">{escape(row.artifact)}</td><td class="centre">{verdict}</td>'
            f'<td class="left"><ol class="classes">{classes}</ol></td>'
        )
        body.append(f'<tr class="{kind}">{cells}</tr>')
    head = "".join(
        f'<th scope="col">{escape(c)}</th>'
        for c in ("example", "artifact", f"top-1 as {baseline}", f"top-{count} (probability)")
    )
    return (
        f"<section><h2>Examples: top-{count} classes</h2>"
        f'<div class="scroll"><table class="examples"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(plot.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
    )


def to_html(report: Report) -> str:
    parts = [f"<header><h1>{escape(report.title)}</h1>"]
    if report.description:
        parts.append(f'<p class="description">{escape(report.description)}</p>')
    parts.append("</header>")
    if report.summary:
        parts.append(f"<section><h2>Summary</h2>{_facts(report.summary, 'facts')}</section>")
    if report.search:
        parts.append(f"<section><h2>Search</h2>{_facts(report.search, 'facts')}</section>")
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in report.notes)
    legend = "".join(
        f"<dt>{escape(c.title)}</dt><dd>{escape(c.legend)}</dd>" for c in report.columns
    )
    parts.append(
        f"<section><h2>Candidates</h2>{_table(report)}{notes}"
        f'<details open><summary>Columns</summary><dl class="legend">{legend}</dl></details>'
        "</section>"
    )
    if report.plots:
        figures = "".join(_figure(plot) for plot in report.plots)
        parts.append(f'<section><h2>Plots</h2><div class="plots">{figures}</div></section>')
    if report.agreement:
        parts.append(_agreement(report))
    if report.examples:
        parts.append(_examples(report))
    conditions = escape(report.conditions)
    parts.append(f'<section><h2>Conditions</h2><p class="conditions">{conditions}</p></section>')
    body = "\n".join(parts)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(report.title)} — Shipyard report</title>\n<style>{_CSS}</style>\n"
        f"</head><body><main>\n{body}\n"
        "<footer>Written by Shipyard from this package's <code>shipyard.json</code>; "
        "<code>shipyard report PACKAGE</code> writes it again.</footer>\n"
        "</main></body></html>\n"
    )


_CSS = """
:root{--ink:#1f2328;--muted:#59636e;--line:#d1d9e0;--chosen:#fff4cc;--gold:#d4a017;
--fail:#fdecea;--red:#b3261e;--green:#1a7f37;--base:#f3f4f6}
*{box-sizing:border-box}
body{margin:0;color:var(--ink);background:#fff;
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 32px 40px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;
padding-bottom:4px;border-bottom:1px solid var(--line)}
.description{color:var(--muted);margin:0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0}
dl.facts dt{font-weight:600;color:var(--muted)}dl.facts dd{margin:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;width:100%}
th,td{padding:4px 7px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
thead th{background:#f6f8fa;position:sticky;top:0;border-bottom:2px solid var(--line);
white-space:normal;vertical-align:bottom;line-height:1.25}
th.name,thead th:nth-child(2){text-align:left;font-weight:normal}
tbody tr:nth-child(even){background:#fafbfc}
tr.baseline{background:var(--base)!important;font-style:italic}
tr.failed{background:var(--fail)!important;color:var(--red)}
tr.chosen{background:var(--chosen)!important;font-weight:600;box-shadow:inset 4px 0 var(--gold)}
tr.chosen th.name{font-weight:700}
.badge{display:inline-block;padding:0 6px;border-radius:8px;font-size:11px;font-style:normal;
font-weight:600;line-height:18px}
.badge.chosen{background:var(--gold);color:#fff;margin-left:4px}
.badge.pass{color:var(--green);background:#dafbe1}.badge.fail{color:#fff;background:var(--red)}
.badge.baseline{color:var(--muted);background:#e5e7eb}
.note{color:var(--muted);font-size:13px;margin:8px 0}
details summary{cursor:pointer;color:var(--muted);font-size:13px}
dl.legend{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px;
margin:6px 0 0}dl.legend dt{font-weight:600}dl.legend dd{margin:0;color:var(--muted)}
.plots{display:grid;gap:22px}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid var(--line);
border-radius:6px}
figcaption{font-size:12.5px;color:var(--muted);margin-top:4px}
.conditions{font-size:13.5px}
td.left{text-align:left}td.centre{text-align:center}
ol.classes{margin:0;padding:0;list-style:none;display:flex;flex-wrap:wrap;gap:2px 14px}
table.examples td,table.examples th{vertical-align:top;white-space:normal}
footer{margin-top:32px;font-size:12px;color:var(--muted)}
@media print{main{max-width:none;padding:0}thead th{position:static}}
"""
