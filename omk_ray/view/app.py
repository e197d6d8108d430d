"""The viewer's pages (Starlette, server-side HTML through Jinja2 with autoescape: every model output is text).

    /           the card of `compare --format card`, every agreement count, anomaly and domain a link,
                and the scoreboard with its paired statistics
    /problems   the paired problems of a variant: filters bench, domain, outcome, text search
    /problem    one problem: prompt, target, the baseline's and the variant's answers side by side
    /live       the grid as the newest run writes it (refreshes itself while it runs)
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from urllib.parse import urlencode

import pyarrow.compute as pc
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from omk_ray.analysis.agreement import OUTCOMES as AGREEMENT_OUTCOMES
from omk_ray.analysis.card import card_sections
from omk_ray.analysis.compare import Comparison
from omk_ray.analysis.sections import p_value, pct, signed
from omk_ray.view.data import OUTCOMES, Prompts, ViewData
from omk_ray.view.live import live_grid

PAGE_SIZE = 200
REFRESH_S = 5
ENV = Environment(loader=PackageLoader("omk_ray.view", "templates"), autoescape=select_autoescape(["html"]))
ENV.globals.update(pct=pct, signed=signed, p_value=p_value)


def url(path: str, **params) -> str:
    return path + "?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})


def render(name: str, status_code: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(ENV.get_template(name).render(**context), status_code=status_code)


def as_of(data: ViewData, updating: bool = True) -> str:
    """When the numbers shown were computed, and whether newer ones are on their way."""
    if data.computed_at is None:
        return ""
    return f"numbers as of {data.computed_at:%H:%M:%S} UTC" + (" (updating)" if updating and data.updating else "")


def make_app(root: str | Path, baseline: str | None = None) -> Starlette:
    data = ViewData(root, baseline)
    prompts = Prompts(data.store)
    card_cache: dict = {}

    def comparison_or_page(request: Request) -> tuple[Comparison | None, HTMLResponse | None]:
        c, why = data.comparison()
        if c is None:
            return None, render("message.html", 503, title="no comparison yet", message=why, root=str(data.root),
                                as_of=as_of(data))
        return c, None

    def card(request: Request) -> HTMLResponse:
        c, page = comparison_or_page(request)
        if page:
            return page
        if card_cache.get("of") is not c:  # the card of this comparison, rendered once
            card_cache.update(of=c, html=ENV.get_template("card.html").render(
                c=c, sections=linked_sections(c), board=c.rows("scoreboard"), url=url, root=str(data.root),
                as_of=as_of(data, updating=False)))
        return HTMLResponse(card_cache["html"])

    def problems(request: Request) -> HTMLResponse:
        c, page = comparison_or_page(request)
        if page:
            return page
        q = request.query_params
        variant = q.get("variant") or (c.variants[0] if c.variants else "")
        if variant not in c.variants:
            return not_found(f"variant {variant!r} is not compared here (variants: {', '.join(c.variants)})")
        outcome = q.get("outcome") or None
        if outcome and outcome not in OUTCOMES:
            return not_found(f"outcome {outcome!r}: choose one of {', '.join(OUTCOMES)}")
        bench, domain, text = q.get("bench") or None, q.get("domain") or None, q.get("q") or None
        rows = data.problems(c, variant, bench, outcome, domain, text)
        start = max(0, int(q.get("page", "0") or 0)) * PAGE_SIZE if (q.get("page") or "0").isdigit() else 0
        shown = rows[start:start + PAGE_SIZE]
        domains = sorted(d for d in pc.unique(c.tables["problems"]["domain"]).to_pylist() if d)
        more = url("/problems", variant=variant, bench=bench, outcome=outcome, domain=domain, q=text,
                   page=start // PAGE_SIZE + 1) if start + PAGE_SIZE < len(rows) else None
        return render("problems.html", c=c, rows=shown, total=len(rows), start=start, more=more, variant=variant,
                      bench=bench, outcome=outcome, domain=domain, text=text, domains=domains, outcomes=OUTCOMES,
                      url=url, root=str(data.root), as_of=as_of(data))

    def problem(request: Request) -> HTMLResponse:
        c, page = comparison_or_page(request)
        if page:
            return page
        q = request.query_params
        variant, bench, doc = q.get("variant", ""), q.get("bench", ""), q.get("doc", "")
        if variant not in c.variants or bench not in c.benches:
            return not_found(f"variant {variant!r} on bench {bench!r} is not compared here "
                             f"(variants: {', '.join(c.variants)}; benches: {', '.join(c.benches)})")
        repeat = int(q.get("repeat", "0")) if q.get("repeat", "0").isdigit() else 0
        base, mine = data.problem([c.baseline, variant], bench, doc, repeat)
        if base.row is None and mine.row is None:
            return not_found(f"no sample of doc {doc!r} (repeat {repeat}) on {bench} for {c.baseline} or {variant}")
        flags = data.anomaly_docs(c, variant, bench).get((bench, doc), [])
        answers = [(s.row or {}).get("extracted_answer") or "" for s in (base, mine)]
        diff = list(difflib.ndiff(answers[0].splitlines() or [""], answers[1].splitlines() or [""]))
        target = next((s.row["target"] for s in (base, mine) if s.row and s.row["target"] is not None), None)
        around = neighbours(data.problems(c, variant, bench, q.get("outcome") or None, q.get("domain") or None), doc) \
            if q.get("outcome") in OUTCOMES else {}
        steps = {k: url("/problem", variant=variant, bench=bench, doc=d, outcome=q.get("outcome"),
                        domain=q.get("domain")) for k, d in around.items()}
        return render("problem.html", c=c, variant=variant, bench=bench, doc=doc, repeat=repeat, steps=steps,
                      exposure=exposure_of(c, variant, bench, doc),
                      outcome=q.get("outcome"),
                      sides=[base, mine], prompt=prompts.get(bench, doc), target=target, diff=diff, flags=flags,
                      url=url, root=str(data.root), as_of=as_of(data))

    def live(request: Request) -> HTMLResponse:
        c, why = data.comparison()
        grid = live_grid(data.root, data.baseline, c, why)
        return render("live.html", live=grid, refresh=REFRESH_S if grid.running else None, c=c, url=url,
                      root=str(data.root), as_of=as_of(data))

    return Starlette(routes=[Route("/", card), Route("/problems", problems), Route("/problem", problem),
                             Route("/live", live)])


def exposure_of(c: Comparison, variant: str, bench: str, doc: str) -> dict | None:
    """The problem's dropped-expert exposure (compare's `exposure` table: the share of the baseline's routing
    weight on this problem that went to the experts the variant dropped), where routing was recorded."""
    table = c.tables.get("exposure")
    if table is None or table.num_rows == 0:
        return None
    where = pc.and_(pc.and_(pc.equal(table["variant"], variant), pc.equal(table["bench"], bench)),
                    pc.equal(table["doc_id"], doc))
    rows = table.filter(where).to_pylist()
    return rows[0] if rows else None


def neighbours(rows: list[dict], doc: str) -> dict[str, str]:
    """The previous and next doc of the list around `doc` (the list a problem page was reached from)."""
    docs = [r["doc_id"] for r in rows]
    if doc not in docs:
        return {}
    i = docs.index(doc)
    return {k: docs[j] for k, j in (("previous", i - 1), ("next", i + 1)) if 0 <= j < len(docs)}


def not_found(message: str) -> HTMLResponse:
    return render("message.html", 404, title="not found", message=message, root="")


# -- the card with its links ------------------------------------------------------------------------


def linked_sections(c: Comparison) -> list[dict]:
    """The card's sections (analysis/card.py, the same cells as card.md) with a link per cell where the
    cell counts problems: agreement counts, anomaly counts, bench and domain labels."""
    out = []
    default = c.variants[0] if c.variants else ""
    for section in card_sections(c):
        tables = []
        for table in section.tables:
            links = [[None] * len(row) for row in table.rows]
            bench = _agreement_bench(section.title)
            if bench is not None:
                rows = [r for r in c.rows("agreement") if r["bench"] == bench]
                for i, r in enumerate(rows[:len(links)]):
                    for j, kind in enumerate(AGREEMENT_OUTCOMES, start=1):
                        links[i][j] = url("/problems", variant=r["variant"], bench=bench, outcome=kind)
            elif section.title == "Anomalies inspected":
                for i, r in enumerate(c.rows("anomalies")[:len(links)]):
                    variant = r["variant"] if r["variant"] in c.variants else default
                    links[i][3] = url("/problems", variant=variant, bench=r["bench"], outcome="anomalies")
            elif section.title == "Scores":
                for i, row in enumerate(table.rows):
                    bench = next((b for b in c.benches if row[0].startswith(f"{b} (")), None)
                    if bench:
                        links[i][0] = url("/problems", variant=default, bench=bench)
            elif section.title.endswith(" domain breakdown"):
                bench = section.title[: -len(" domain breakdown")]
                for i, row in enumerate(table.rows):
                    links[i][0] = url("/problems", variant=default, bench=bench, domain=row[0])
            tables.append({"headers": table.headers, "numeric": table.numeric, "rows": list(zip(table.rows, links))})
        out.append({"title": section.title, "level": section.level, "paragraphs": section.paragraphs, "tables": tables})
    return out


def _agreement_bench(title: str) -> str | None:
    m = re.fullmatch(r"Per-problem agreement matrix \((.+)\)", title)
    return m.group(1) if m else None
