"""The report as Markdown: tables in the seed model card's style, ready to paste into a card."""

from __future__ import annotations

from omk_ray.analysis.compare import Comparison
from omk_ray.analysis.sections import Section, Table, build_sections


def to_markdown(comparison: Comparison) -> str:
    return render(build_sections(comparison))


def render(sections: list[Section]) -> str:
    out: list[str] = []
    for s in sections:
        out.append(f"{'#' * s.level} {s.title}\n")
        for table in s.tables:
            out.append(table_markdown(table) + "\n")
        for p in s.paragraphs:
            out.append(p + "\n")
    return "\n".join(out).rstrip() + "\n"


def table_markdown(table: Table) -> str:
    numeric = table.numeric or [False] * len(table.headers)
    lines = [
        "| " + " | ".join(_cell(h) for h in table.headers) + " |",
        "|" + "|".join("---:" if right else "---" for right in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
