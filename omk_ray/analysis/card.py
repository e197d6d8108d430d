"""The evaluation section of a model card, in the seed card's order and shape, from a Comparison.

    variants      the facts table: total / expert / active parameters, experts per layer, dropped,
                  MoE capacity removed, top-k, quantization, drop map source
    scores        one row per bench: the baseline and every variant side by side (± standard
                  error), then Δ per variant (paired, on the problems both answered)
    tokens        per bench and variant, the statistics asked for (p10/p50/p90/max/mean/total by
                  default; e.g. median/mean/p95/max/total)
    anomalies     what the sanity sweep found, with its cost
    domains       per bench with domain metadata: high-level domains, then subdomains of at least
                  `subdomain_min_n` problems (the smaller ones are named under the table); each
                  Δ marked `below MDE` or `detectable` (the domain's precision columns)
    agreement     per bench: both correct / both wrong / only the baseline right (LOST) / only
                  the variant right (GAINED), and the lost and rescued problems by domain

`card_sections(c, CardOptions())` returns the sections (markdown.render / the HTML writer take
them); `to_card` returns the Markdown.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omk_ray.analysis.compare import Comparison
from omk_ray.analysis.markdown import render
from omk_ray.analysis.perplexity import perplexity_benches, perplexity_section
from omk_ray.analysis.sections import (
    BELOW_MDE, ESTIMATED_MARK, KIND_LABELS, STOPPED, Section, Table, canary_text, delta_cell, lost_gained_by_domain,
    pct, resolution, scores_table, signed, token_table,
)  # fmt: skip
from omk_ray.analysis.stats import ALPHA, POWER
from omk_ray.analysis.tokens import DEFAULT_STATS, check_stats


RESOLUTION_NOTE = (f"Δpp marked {BELOW_MDE}: smaller than the MDE, the smallest |Δ| that many problems detect with "
                   f"{POWER:.0%} power at p ≤ {ALPHA:g} given how often the two disagree; detectable: at least the MDE.")


class CardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stats: tuple[str, ...] = Field(DEFAULT_STATS, description="token statistics: pN, median, mean, min, max, total")
    stderr: bool = Field(True, description="± standard error beside every score")
    subdomain_min_n: int = Field(5, ge=1, description="subdomains with fewer problems are named, not tabled")

    @field_validator("stats")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_stats(value)


def to_card(c: Comparison, options: CardOptions = CardOptions()) -> str:
    return render(card_sections(c, options))


def card_sections(c: Comparison, options: CardOptions = CardOptions()) -> list[Section]:
    title = Section(f"Evaluation: {', '.join(c.variants)} vs {c.baseline}", level=2)
    rolling = perplexity_benches(c)  # perplexity benches have their own table (analysis/perplexity.py)
    scored = replace(c, benches=[b for b in c.benches if b not in rolling]) if rolling else c
    perplexity = [perplexity_section(c)] if rolling else []
    return [title, _facts(c), _scores(scored, options), *perplexity, _tokens(c, options), _anomalies(c),
            *_domains(scored, options), *_agreement(scored), *_notes(c)]


# -- the facts --------------------------------------------------------------------------------


def params(x: float | None) -> str:
    """25805936206 -> 25.8B (three significant digits)."""
    if x is None:
        return "?"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _facts(c: Comparison) -> Section:
    facts = {r["variant"]: r for r in c.rows("facts")}
    names = [c.baseline, *c.variants]
    known = ("total_params", "experts_per_layer", "top_k", "quantization", "drop_map", "dropped_per_layer")
    if not any(facts.get(v, {}).get(k) is not None for v in names for k in known):
        return Section("Variants", level=3, paragraphs=[
            "No variant facts recorded: give the checkpoint with `omk-ray import ... --model FOLDER|HUB_ID`, or "
            "declare them in the grid (a variant's `facts:`)."])

    def cells(fn) -> list[str]:
        return [fn(facts[v]) if v in facts else "?" for v in names]

    def dropped(f: dict, text: str) -> str:
        return "—" if f["dropped_per_layer"] == 0 else "?" if f["dropped_per_layer"] is None else text

    def plain(key: str):
        return lambda f: "?" if f[key] is None else str(f[key])

    rows = [
        ["Total params", *cells(lambda f: params(f["total_params"]))],
        ["Expert params", *cells(lambda f: params(f["expert_params"]))],
        ["Active params per token", *cells(lambda f: params(f["active_params"]))],
        ["Experts per layer", *cells(plain("experts_per_layer"))],
        ["Experts dropped", *cells(lambda f: dropped(f, f"{f['dropped_per_layer']}/layer"))],
        ["MoE capacity removed", *cells(lambda f: dropped(f, "?" if f["capacity_removed_pct"] is None
                                                           else f"{f['capacity_removed_pct']:.1f}%"))],
        ["Top-k routing", *cells(plain("top_k"))],
        ["Quantization", *cells(plain("quantization"))],
        ["Drop map source", *cells(lambda f: dropped(f, f["drop_map"] or "?"))],
    ]
    unread = [f"{v}: {facts[v]['source']}" for v in names if v in facts and facts[v]["total_params"] is None]
    paragraphs = ["Parameters are summed over the safetensors headers (no weight is read); active = everything but the "
                  "experts a token's router does not pick. ? = not recorded."]
    if unread:
        paragraphs.append("Facts not read: " + "; ".join(unread) + ".")
    header = [f"{c.baseline} (baseline)", *c.variants]
    return Section("Variants", level=3, tables=[Table(["", *header], rows, [False] + [True] * len(header))],
                   paragraphs=paragraphs)


# -- scores -----------------------------------------------------------------------------------


def _scores(c: Comparison, options: CardOptions) -> Section:
    def score(r: dict | None, n: int) -> str:
        if r is None:
            return "—"
        if r["status"] != "scored":
            return STOPPED
        text = pct(r["score"])
        if options.stderr and r["stderr_pp"] == r["stderr_pp"]:  # NaN (one problem) has none
            text += f" ±{r['stderr_pp']:.2f}"
        return text + (f" (n={r['n']})" if r["n"] != n else "")

    deltas = ["Δ"] if len(c.variants) == 1 else [f"Δ {v}" for v in c.variants]
    table = scores_table(
        c, c.baseline, lambda base: score(base, base["n"]),
        [(v, v, lambda head, _, n: score(head, n)) for v in c.variants]
        + [(header, v, delta_cell) for header, v in zip(deltas, c.variants)],
        label=lambda bench, n: f"{bench} ({n}){c.guard.mark(bench)}")
    stderr = " (± standard error)" if options.stderr else ""
    paragraphs = [f"Each score on all the problems the variant answered{stderr}; Δ: the paired difference to "
                  f"{c.baseline} on the problems both answered (\"on k\" where fewer than n)."]
    paragraphs += [f"Stopped: {canary_text(c, v)}." for v in c.stopped]
    return Section("Scores", level=3, paragraphs=paragraphs, tables=[table])


# -- tokens and anomalies ---------------------------------------------------------------------


def _tokens(c: Comparison, options: CardOptions) -> Section:
    table, estimated = token_table(c, "completion", options.stats)
    paragraphs = [f"{ESTIMATED_MARK} approximate: raw chars ÷ 4 where no token counts were stored."] if estimated else []
    return Section("Per-bench output token distribution", level=3, tables=[table], paragraphs=paragraphs)


def _anomalies(c: Comparison) -> Section:
    rows = c.rows("anomalies")
    if not rows:
        return Section("Anomalies inspected", level=3, paragraphs=[
            "None found (silent-empty outputs, errors, rumination loops, length caps, marker leaks, scorer suspects)."])
    return Section("Anomalies inspected", level=3, tables=[Table(
        ["Bench", "Variant", "Issue", "Count", "Impact"],
        [[r["bench"], r["variant"], f"{KIND_LABELS[r['kind']]}; {r['detail']}", f"{r['count']}/{r['n']}",
          signed(r["impact_pp"])] for r in rows],
        [False, False, False, True, True])])


# -- domains and agreement --------------------------------------------------------------------


def _domains(c: Comparison, options: CardOptions) -> list[Section]:
    by: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)  # (bench, level) -> label -> variant -> row
    for r in c.rows("domains"):
        by[(r["bench"], r["level"])].setdefault(r[r["level"]], {})[r["variant"]] = r
    sections = []
    for bench in c.benches:
        for level, title, header in (("domain", f"{bench} domain breakdown", "High-level domain"),
                                     ("subdomain", "Subdomain detail", "Subdomain")):
            labels = by.get((bench, level))
            if not labels:
                continue
            shown = {k: v for k, v in labels.items() if level == "domain" or _n(v) >= options.subdomain_min_n}
            table = _domain_table(c, header, shown)
            small = [f"{k} ({_n(v)})" for k, v in labels.items() if k not in shown]
            paragraphs = [] if level == "subdomain" else [RESOLUTION_NOTE]
            if small:
                paragraphs.append(f"Fewer than {options.subdomain_min_n} problems, not shown: {', '.join(small)}.")
            sections.append(Section(title, level=3 if level == "domain" else 4, tables=[table], paragraphs=paragraphs))
    return sections


def _n(cells: dict[str, dict]) -> int:
    return next(iter(cells.values()))["n"]


def _domain_table(c: Comparison, header: str, labels: dict[str, dict[str, dict]]) -> Table:
    scored = [v for v in c.variants if v not in c.stopped]
    rows = []
    for label, cells in labels.items():
        n = _n(cells)
        first = next(iter(cells.values()))
        line = [label, str(n), pct(first["baseline_score"], 1)]
        line += [pct(cells[v]["variant_score"], 1) + (f" (n={cells[v]['n']})" if cells[v]["n"] != n else "")
                 if v in cells else "—" for v in scored]
        for v in scored:
            r = cells.get(v)
            if r is None:
                line.append("—")
                continue
            mark = f" ({resolution(r)})" if abs(r["delta_pp"]) >= 0.05 else ""  # a Δ shown as 0.0 needs none
            line.append(signed(r["delta_pp"], 1, "") + mark)
        rows.append(line)
    deltas = ["Δpp"] if len(scored) == 1 else [f"Δpp {v}" for v in scored]
    return Table([header, "n", c.baseline, *scored, *deltas], rows, [False] + [True] * (2 + 2 * len(scored)))


def _agreement(c: Comparison) -> list[Section]:
    by_domain: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in c.rows("agreement_by_domain"):
        by_domain[(r["bench"], r["variant"])].append(r)
    sections = []
    for bench in c.benches:
        rows = [r for r in c.rows("agreement") if r["bench"] == bench]
        if not rows:
            continue
        single = len(rows) == 1
        table = Table(
            ["", "both correct", "both wrong", f"only {c.baseline} right",
             f"only {rows[0]['variant']} right" if single else "only the variant right"],
            [["count" if single else r["variant"], f"{r['both_correct']} ({r['both_correct_pct']:.1f}%)",
              f"{r['both_wrong']} ({r['both_wrong_pct']:.1f}%)", f"{r['lost']} ({r['variant']} LOST)",
              f"{r['gained']} ({r['variant']} GAINED)"] for r in rows],
            [False, True, True, True, True],
        )
        paragraphs = []
        for r in rows:
            split = by_domain.get((bench, r["variant"]), [])
            lines = lost_gained_by_domain(r, split)
            moved = sorted((d for d in split if d["lost"] or d["gained"]), key=lambda d: -(d["lost"] + d["gained"]))
            if moved:
                lines.append("Net by domain: " + ", ".join(
                    f"{d['domain']} {signed(d['gained'] - d['lost'], 0, '')} ({d['lost']} lost, {d['gained']} gained)"
                    for d in moved) + ".")
            if lines:
                paragraphs.append(" ".join(lines))
        sections.append(Section(f"Per-problem agreement matrix ({bench})", level=3, tables=[table],
                                paragraphs=paragraphs))
    return sections


def _notes(c: Comparison) -> list[Section]:
    stopped = tuple(f"{v} was stopped by its canary" for v in c.stopped)  # said under the scores already
    lines = [f"{n.mark} {n.text}" for n in c.guard.notes] + [n for n in c.notes if not n.startswith(stopped)]
    return [Section("Notes", level=3, paragraphs=lines)] if lines else []
