"""The evaluation section of a model card, in the seed card's order and shape, from a Comparison.

    variants      the facts table: total / expert / active parameters, experts per layer, dropped,
                  MoE capacity removed, top-k, quantization, drop map source
    scores        one row per bench: the baseline and every variant side by side (± standard
                  error, k/n), then Δ per variant (paired, on the problems both answered) with its
                  verdict; a bench the baseline lacks keeps the variants' scores ("no baseline");
                  the sampler of every bench and variant under the table
    tokens        per bench and variant, the statistics asked for (p10/p50/p90/max/mean/total by
                  default; e.g. median/mean/p95/max/total)
    anomalies     what the sanity sweep found, with its cost
    domains       per bench with domain metadata: high-level domains, then subdomains of at least
                  `subdomain_min_n` problems (the smaller ones are named under the table); each
                  Δ with its verdict (significant or not, Holm over the domains) and `below MDE`
                  where |Δ| is under the MDE (power information, never a verdict)
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
    ESTIMATED_MARK, KIND_LABELS, NO_BASELINE, STOPPED, Section, Table, canary_text, delta_cell, id_list, judged,
    lost_gained_by_domain, metric_label, pct, sampler_text, scores_table, significance_legend, signed, stop_lines,
    token_table,
    verdict, without_machine_paths,
)  # fmt: skip
from omk_ray.analysis.tokens import DEFAULT_STATS, check_stats

BASIS_TEXT = {
    "headers": "summed over the safetensors headers (no weight is read)",
    "gguf": "read from the GGUF file's tensor table and metadata with `gguf` (no weight is read)",
    "declared": "declared in the grid (`facts:`), not read from a checkpoint",
}


class CardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stats: tuple[str, ...] = Field(DEFAULT_STATS, description="token statistics: pN, median, mean, min, max, total")
    stderr: bool = Field(True, description="± standard error beside every score")
    subdomain_min_n: int = Field(5, ge=1, description="subdomains with fewer problems are named, not tabled")
    counts: bool = Field(True, description="k/n (problems right of n) beside pass/fail scores")
    abbreviate: bool = Field(False, description="token totals abbreviated (54.9k, 112k) as the seed's supplementary "
                                                "table writes them")

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
    unread = [f"{v}: {without_machine_paths(facts[v]['source'])}" for v in names
              if v in facts and facts[v]["total_params"] is None]
    paragraphs = [facts_footnote({v: facts[v].get("basis") or [] for v in names if v in facts})]
    if unread:
        paragraphs.append("Facts not read: " + "; ".join(unread) + ".")
    header = [f"{c.baseline} (baseline)", *c.variants]
    return Section("Variants", level=3, tables=[Table(["", *header], rows, [False] + [True] * len(header))],
                   paragraphs=paragraphs)


def facts_footnote(basis: dict[str, list[str]]) -> str:
    """Where each variant's facts come from, one clause per source (headers, GGUF metadata, declared)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for variant, kinds in basis.items():
        key = kinds[0] if kinds else ""
        if key in BASIS_TEXT:
            groups[key].append(variant + (" (partly declared in the grid)" if "declared" in kinds[1:] else ""))
    if len(groups) == 1 and len(next(iter(groups.values()))) == len(basis) and "(partly" not in str(groups):
        where = f"Parameters are {BASIS_TEXT[next(iter(groups))]}"
    else:
        where = "Parameters " + "; ".join(f"of {', '.join(vs)}: {BASIS_TEXT[k]}" for k, vs in groups.items()) \
            if groups else "No parameters recorded"
    return (f"{where}; active = everything but the experts a token's router does not pick. ? = not recorded.")


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
        if options.counts and r["binary"]:
            return text + f" ({r['correct']}/{r['n']})"
        return text + (f" (n={r['n']})" if r["n"] != n else "")

    def label(bench: str, n: int) -> str:
        metric = metric_label(c.metric_names.get(bench))
        return f"{bench} ({n}{', ' + metric if metric else ''}){c.guard.mark(bench)}"

    deltas = ["Δ"] if len(c.variants) == 1 else [f"Δ {v}" for v in c.variants]
    table = scores_table(
        c, c.baseline, lambda base: score(base, base["n"]),
        [(v, v, lambda head, _, n: score(head, n)) for v in c.variants]
        + [(header, v, delta_cell) for header, v in zip(deltas, c.variants)],
        label=label)
    stderr = " (± standard error)" if options.stderr else ""
    counts = ", k/n: problems right of those answered on pass/fail benches" if options.counts else ""
    paragraphs = [f"Each score on all the problems the variant answered{stderr}{counts}; Δ: the paired difference "
                  f"to {c.baseline} on the problems both answered (\"on k\" where fewer than n), with its verdict. "
                  + significance_legend(c.correction)]
    if c.unpaired:
        paragraphs.append(f"{NO_BASELINE}: {', '.join(c.unpaired)} has no samples of {c.baseline}; the variants' own "
                          "scores stand alone, without a Δ.")
    paragraphs += [f"Stopped: {canary_text(c, v)}." for v in c.stopped]
    paragraphs += stop_lines(c)
    samplers = _samplers(c)
    if samplers:
        paragraphs.append(samplers)
    return Section("Scores", level=3, paragraphs=paragraphs, tables=[table])


def _samplers(c: Comparison) -> str:
    """Sampler per bench, e.g. "toy: greedy, max_gen_toks 16 (every variant)"; per variant where they differ."""
    parts = []
    for bench in c.benches:
        texts = {v: sampler_text(c.recipes.get((v, bench))) for v in [c.baseline, *c.variants]
                 if (v, bench) in c.recipes}
        if not texts:
            continue
        distinct = list(dict.fromkeys(texts.values()))
        if len(distinct) == 1:
            everyone = " (every variant)" if len(texts) > 1 else f" ({next(iter(texts))})"
            parts.append(f"{bench}: {distinct[0]}{everyone}")
        else:
            parts.append(f"{bench}: " + "; ".join(f"{v} {t}" for v, t in texts.items()))
    if not any(r is not None for r in c.recipes.values()):
        return ""  # nothing recorded anywhere (rows written without a run manifest): nothing to say per bench
    return ("Sampler per bench: " + ". ".join(parts) + ".") if parts else ""


# -- tokens and anomalies ---------------------------------------------------------------------


def _tokens(c: Comparison, options: CardOptions) -> Section:
    table, estimated = token_table(c, "completion", options.stats, abbreviate=options.abbreviate)
    paragraphs = [f"{ESTIMATED_MARK} approximate: raw chars ÷ 4 where no token counts were stored."] if estimated else []
    return Section("Per-bench output token distribution", level=3, tables=[table], paragraphs=paragraphs)


def _anomalies(c: Comparison) -> Section:
    rows = c.rows("anomalies")
    if not rows:
        return Section("Anomalies inspected", level=3, paragraphs=[
            "None found (silent-empty outputs, errors, rumination loops, length caps, marker leaks, scorer suspects)."])
    return Section("Anomalies inspected", level=3, tables=[Table(
        ["Bench", "Variant", "Issue", "Count", "Impact", "Examples (doc ids)"],
        [[r["bench"], r["variant"], f"{KIND_LABELS[r['kind']]}; {r['detail']}", f"{r['count']}/{r['n']}",
          signed(r["impact_pp"]), id_list(r["examples"]) if r["examples"] else "—"] for r in rows],
        [False, False, False, True, True, False])], paragraphs=[
        "Causes are named only where the samples record them (a finish reason); an imported log without one says "
        "\"cause not recorded\", and a length cap read from the output's length is marked inferred."])


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
            paragraphs = [] if level == "subdomain" else [
                "Δpp with its verdict: the paired test of each domain's problems, Holm-corrected over the domains "
                "of the bench (over its subdomains in the subdomain table); significant, not significant and below "
                "MDE as under Scores."]
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
            shown_zero = abs(r["delta_pp"]) < 0.05 and not r["significant"]  # no mark (the legend says why)
            line.append(signed(r["delta_pp"], 1, "") + ("" if shown_zero else f" ({judged(r)})"))
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
    lines = [without_machine_paths(line) for line in lines]
    return [Section("Notes", level=3, paragraphs=lines)] if lines else []
