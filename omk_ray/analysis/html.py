"""The report as one self-contained HTML file: inline CSS and SVG plots, no script, no network."""

from __future__ import annotations

import html
import re

from omk_ray.analysis.compare import Comparison
from omk_ray.analysis.plots import all_plots
from omk_ray.analysis.sections import Section, Table, build_sections

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0 1.2rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.6rem; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; }
figure svg { max-width: 100%; height: auto; }
code { background: #f2f2f2; padding: 0 0.2rem; }
"""


def to_html(comparison: Comparison, plots: dict[str, str] | None = None) -> str:
    plots = all_plots(comparison) if plots is None else plots
    sections = build_sections(comparison)
    title = html.escape(sections[0].title if sections else "omk-ray comparison")
    body = "\n".join(_section(s, plots) for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _section(s: Section, plots: dict[str, str]) -> str:
    parts = [f"<h{s.level}>{_inline(s.title)}</h{s.level}>"]
    if s.plot and s.plot in plots:
        parts.append(f'<figure class="plot" id="plot-{s.plot}">{plots[s.plot]}</figure>')
    parts += [_table(t) for t in s.tables]
    parts += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
    return "<section>\n" + "\n".join(parts) + "\n</section>"


def _table(t: Table) -> str:
    numeric = t.numeric or [False] * len(t.headers)
    head = "".join(f"<th>{_inline(h)}</th>" for h in t.headers)
    body = "\n".join(
        "<tr>" + "".join(f'<td{" class=num" if right else ""}>{_inline(v)}</td>' for v, right in zip(row, numeric)) + "</tr>"
        for row in t.rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _inline(text: str) -> str:
    """Escape, then the two Markdown marks the sections use: **bold** and `code`."""
    out = html.escape(str(text))
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)
