"""The report's content, once: sections of text and tables that Markdown and HTML both render.

Numbers are written the way the seed model card writes them: scores as 96.25%, deltas as
−0.26pp (a real minus sign), token totals with thousands separators.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from omk_ray.analysis.cohort import DECLARED_MARK, ENGINE_MARK, MISMATCH_MARK, UNRECORDED_MARK
from omk_ray.analysis.compare import Comparison
from omk_ray.analysis.experts import WITHIN
from omk_ray.analysis.samples import SCORE_COLUMN
from omk_ray.analysis.stats import ALPHA, POWER
from omk_ray.analysis.tokens import DEFAULT_STATS, token_distributions

MINUS = "\u2212"
ESTIMATED_MARK = "≈"
MAX_IDS = 30
BELOW_MDE = "below MDE"
NO_BASELINE = "no baseline"
AT_LEAST_MDE = "at least MDE"
SIGNIFICANT = "significant"
NOT_SIGNIFICANT = "not significant"
PRECISION_HEADERS = ["SE", "MDE", "power: |Δ| vs MDE", "ρ"]
STAT_LABELS = {"total": "total tokens"}
STOPPED = "stopped by canary"

KIND_LABELS = {
    "silent-empty": "silent-empty output (model stopped with an empty answer)",
    "empty-unrecorded": "empty answer (cause not recorded)",
    "error": "engine or scorer error",
    "rumination-loop": "rumination loop (output repeats itself)",
    "length-cap-reasoning": "length cap hit inside reasoning (never reached an answer)",
    "length-cap-answer": "length cap hit in the answer",
    "length-cap-inferred": "length cap (inferred from the output's length)",
    "marker-leak": "reasoning marker leaked into the answer",
    "scorer-zero": "scorer suspect: score exactly 0 with non-empty answers",
    "metric-gap": "scorer suspect: strict vs flexible filter gap",
}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)  # right-aligned columns


@dataclass
class Section:
    title: str
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plot: str | None = None  # key of the plot the HTML report shows here


# -- number formats -------------------------------------------------------------------------


def pct(x: float, digits: int = 2) -> str:
    return "—" if _missing(x) else f"{x:.{digits}f}%"


def signed(x: float, digits: int = 2, unit: str = "pp") -> str:
    if _missing(x):
        return "—"
    text = f"{abs(x):.{digits}f}"
    if float(text) == 0:
        return f"{text}{unit}"
    return f"{'+' if x > 0 else MINUS}{text}{unit}"


def p_value(p: float) -> str:
    if _missing(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def plain(x: float, digits: int = 2) -> str:
    return "—" if _missing(x) else "∞" if math.isinf(x) else f"{x:.{digits}f}".replace("-", MINUS)


def resolution(row: dict) -> str:
    """Power information beside a Δ (never a verdict): is |Δ| at least the MDE of this comparison?"""
    return AT_LEAST_MDE if row["detectable"] else BELOW_MDE


def verdict(row: dict) -> str:
    """The one verdict on a Δ: significant or not by the corrected test (the row's `significant`)."""
    return SIGNIFICANT if row["significant"] else NOT_SIGNIFICANT


def judged(row: dict) -> str:
    """"significant", "not significant", with "; below MDE" where |Δ| is under the MDE (power information)."""
    return verdict(row) + ("" if row["detectable"] else f"; {BELOW_MDE}")


def significance_legend(correction: str) -> str:
    """What "significant" and "below MDE" mean, the same words in the card and the report."""
    family = {"grid": " over every variant × bench", "variant": " over each variant's benches"}.get(correction, "")
    test = ("its paired test (exact McNemar for pass/fail, paired bootstrap for graded scores) gives p ≤ "
            f"{ALPHA:g}" + ("" if correction == "none" else f" after Holm's correction{family}"))
    return (f"{SIGNIFICANT}: {test}; {NOT_SIGNIFICANT}: it does not (the verdict). {BELOW_MDE}: power "
            f"information, not a verdict: |Δ| is smaller than the MDE, the smallest difference the comparison "
            f"detects with {POWER:.0%} power at p ≤ {ALPHA:g} given its n and how often the two disagree. A "
            f"{SIGNIFICANT} Δ stays {SIGNIFICANT} when it is {BELOW_MDE}; a Δ that is {NOT_SIGNIFICANT} and "
            f"{BELOW_MDE} is no evidence that the two are equal (the comparison is too small to tell). A Δ shown as "
            "0 is not significant and carries no mark.")


def on_k(k: int, n: int) -> str:
    """" on 10" beside a paired cell that covers only k of the bench's n problems."""
    return "" if k == n else f" on {k}"


def count(x: float) -> str:
    return "—" if _missing(x) else f"{round(x):,}"


def abbreviated(x: float) -> str:
    """Three significant digits with k / M, as the seed's supplementary table writes totals: 54.9k, 112k, 1.2M."""
    if _missing(x):
        return "—"
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{round(x)}"


METRIC_WORDS = {
    "prompt_level_strict_acc": "prompt-strict", "prompt_level_loose_acc": "prompt-loose",
    "inst_level_strict_acc": "instruction-strict", "inst_level_loose_acc": "instruction-loose",
    "math_verify": "math-verify", "exact_match": "exact match", "acc": "accuracy", "acc_norm": "normalized accuracy",
}


def metric_label(key: str | None) -> str:
    """A primary metric in the card's words: prompt_level_strict_acc,none -> prompt-strict;
    exact_match,flexible-extract -> exact match/flexible-extract."""
    if not key or key == SCORE_COLUMN:
        return ""
    name, _, filt = key.partition(",")
    word = METRIC_WORDS.get(name, name)
    return word if filt in ("", "none") else f"{word}/{filt}"


def sampler_text(recipe: dict | None) -> str:
    """A recipe's sampler in words: "greedy, max_gen_toks 16384"; "T=1.0, top_p=0.95, top_k=64, thinking on
    (budget 12288), max_gen_toks 16384"; "recipe not recorded"."""
    if recipe is None:
        return "recipe not recorded"
    t, top_p, top_k = recipe.get("temperature", 0.0), recipe.get("top_p", 1.0), recipe.get("top_k", 0)
    parts = ["greedy" if t == 0 or top_k == 1 else f"T={t:g}, top_p={top_p:g}, top_k={top_k}"]
    if recipe.get("min_p"):
        parts.append(f"min_p={recipe['min_p']:g}")
    if recipe.get("enable_thinking"):
        budget = recipe.get("thinking_budget")
        parts.append("thinking on" + (f" (budget {budget:,})" if budget else ""))
    if recipe.get("max_gen_toks") and "max_gen_toks" not in (recipe.get("unstated") or []):
        parts.append(f"max_gen_toks {recipe['max_gen_toks']:,}")
    return ", ".join(parts)


_MACHINE_PATH = re.compile(r"(?<![\w.:/~<-])/(?:[^\s/`'\"(),;:]+/)+[^\s/`'\"(),;:]+")


def without_machine_paths(text: str) -> str:
    """Absolute paths in a note cut to their last two parts (a report names no folder of the machine
    that made it)."""
    return _MACHINE_PATH.sub(lambda m: str(Path(*Path(m[0]).parts[-2:])), text)


def id_list(ids: list[str], limit: int = MAX_IDS) -> str:
    if not ids:
        return "none"
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" … (+{len(ids) - limit} more)" if len(ids) > limit else "")


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# -- sections -------------------------------------------------------------------------------


def build_sections(c: Comparison) -> list[Section]:
    return [
        _overview(c),
        *_scores(c),
        *_repeats(c),
        *_tokens(c),
        _anomalies(c),
        *_domains(c),
        *_agreement(c),
        *expert_sections(c),
        _notes(c),
    ]


def _bench_label(c: Comparison, bench: str, n: int, variant: str | None = None) -> str:
    metric = c.primary.get(bench, SCORE_COLUMN)
    suffix = "" if metric == SCORE_COLUMN else f", {metric}"
    return f"{bench} ({n}{suffix}){c.guard.mark(bench, variant)}"


def _overview(c: Comparison) -> Section:
    cohorts = sorted(set(c.guard.cohorts.values()))
    lines = [
        f"Baseline **{c.baseline}** against {', '.join(f'**{v}**' for v in c.variants)} on "
        f"{len(c.benches)} benches; results folder `{c.results}`.",
        f"Cohort: {', '.join(cohorts) or 'none'}. Every statistic pairs the two variants on the problems both answered.",
    ]
    if c.canary:
        judged = [v for v in [c.baseline, *c.variants] if v in c.canary]
        lines.append("Canary: " + "; ".join(canary_text(c, v) for v in judged) + ".")
    lines += stop_lines(c)
    return Section(f"Comparison: {', '.join(c.variants)} vs {c.baseline}", level=1, paragraphs=lines)


def _scores(c: Comparison) -> list[Section]:
    board = c.rows("scoreboard")
    sections = []
    if len(c.variants) > 1:
        def shared(head: dict | None, r: dict | None, n: int) -> str:
            if head is not None and head["status"] != "scored":
                return STOPPED
            if r is None and head is not None and head.get("no_baseline"):
                return f"{pct(head['score'])} ({NO_BASELINE})"
            return "—" if r is None else f"{pct(r['variant_score'])} ({signed(r['delta_pp'])}){on_k(r['n'], n)}"

        table = scores_table(c, f"{c.baseline} (all n)", lambda base: pct(base["score"]),
                             [(v, v, shared) for v in c.variants])
        sections.append(Section(
            "Scores", paragraphs=[
                f"{c.baseline}: its score on all n problems of the bench. Each variant: its score and, in parentheses, "
                f"Δ on the problems it shares with {c.baseline} (\"on k\" where that is fewer than n)."
                + (" Stopped by canary: the variant failed its canary and has no full run (reasons in the notes)."
                   if c.stopped else "")],
            tables=[table],
            plot="deltas",
        ))
    for variant in c.variants:
        if variant in c.stopped:
            sections.append(Section(f"Scores: {variant} vs {c.baseline}" if len(c.variants) > 1 else "Scores",
                                    level=3 if len(c.variants) > 1 else 2,
                                    paragraphs=[f"**{variant}**: {canary_text(c, variant)}; not scored."]))
            continue
        rows, partial = [], []
        for r in (r for r in board if r["variant"] == variant):
            if r["n"] < r["baseline_docs"]:
                partial.append(f"{r['bench']} ({r['n']} of {r['baseline_docs']})")
            rows.append([
                _bench_label(c, r["bench"], r["n"], variant),
                pct(r["baseline_score"]),
                pct(r["variant_score"]),
                signed(r["delta_pp"]),
                f"[{signed(r['ci_low_pp'], 2, '')}, {signed(r['ci_high_pp'], 2, '')}]",
                p_value(r["p_value"]) + ("" if c.correction == "none" else f" ({p_value(r['p_holm'])})"),
                verdict(r),
                *_precision_cells(r),
                f"{r['lost']} / {r['gained']}",
            ])
        title = f"Scores: {variant} vs {c.baseline}" if len(c.variants) > 1 else "Scores"
        shared = []
        if partial:
            shared.append(f"n: the problems {variant} shares with {c.baseline}; both columns are scores on those, so "
                          f"{c.baseline}'s can differ from its full-bench score: {', '.join(partial)}.")
        p_header = {"grid": "p (Holm, grid)", "variant": "p (Holm)", "none": "p"}[c.correction]
        headers = ["Bench (n)", c.baseline, variant, "Δ", "95% CI (pp)", p_header, "verdict", *PRECISION_HEADERS,
                   "lost / gained"]
        sections.append(Section(
            title, level=3 if len(c.variants) > 1 else 2,
            tables=[Table(headers, rows, [False] + [True] * (len(headers) - 1))],
            paragraphs=shared,
            plot=None if len(c.variants) > 1 else "deltas",
        ))
    if c.unpaired:  # benches the baseline lacks: each variant's own score, no Δ
        head = [r for r in c.rows("headline") if r["bench"] in c.unpaired and r["status"] == "scored"]
        sections.append(Section(f"Benches without {c.baseline}", level=3, tables=[Table(
            ["Bench", "Variant", "n", "score", "Δ"],
            [[r["bench"], r["variant"], str(r["n"]), pct(r["score"]), NO_BASELINE] for r in head],
            [False, False, True, True, False])], paragraphs=[
            f"{c.baseline} has no samples of these benches: the variants' own scores, with no paired statistics."]))
    return sections


ScoreCell = Callable[[dict | None, dict | None, int], str]  # (headline row, scoreboard row, baseline's n)


def scores_table(c: Comparison, baseline_header: str, baseline_cell: Callable[[dict], str],
                 columns: list[tuple[str, str, ScoreCell]], label: Callable[[str, int], str] | None = None) -> Table:
    """The scores side by side, one row per bench the baseline has: `Bench (n)`, the baseline's cell from its
    headline (its score on all n problems), then per column (header, variant, cell) the cell of that
    variant's headline and scoreboard rows (None where it has none)."""
    head = {(r["bench"], r["variant"]): r for r in c.rows("headline")}
    board = {(r["bench"], r["variant"]): r for r in c.rows("scoreboard")}
    label = label or (lambda bench, n: _bench_label(c, bench, n))
    rows = []
    for bench in c.benches:
        base = head.get((bench, c.baseline))
        if base is None:  # a bench the baseline lacks: the variants' own cells, "no baseline" where Δ would be
            own = [head[(bench, v)] for v in c.variants if (bench, v) in head]
            if not own:
                continue
            n = max(h["n"] for h in own)
            marked = {v: {**head[(bench, v)], "no_baseline": True} for v in c.variants if (bench, v) in head}
            rows.append([label(bench, n), "—", *(cell(marked.get(v), None, n) for _, v, cell in columns)])
            continue
        n = base["n"]
        rows.append([label(bench, n), baseline_cell(base),
                     *(cell(head.get((bench, v)), board.get((bench, v)), n) for _, v, cell in columns)])
    headers = ["Bench (n)", baseline_header, *(h for h, _, _ in columns)]
    return Table(headers, rows, [False] + [True] * (len(headers) - 1))


def delta_cell(head: dict | None, r: dict | None, n: int) -> str:
    """Δ to the baseline on the problems both answered ("on k" where fewer than n), with its verdict
    (and "below MDE" where it applies: power information); "no baseline" on a bench the baseline lacks."""
    if r is None:
        return NO_BASELINE if head is not None and head.get("no_baseline") else "—"
    text = signed(r["delta_pp"]) + on_k(r["n"], n)
    if round(abs(r["delta_pp"]), 2) == 0 and not r["significant"]:
        return text  # a Δ shown as 0: not significant (the legend says so), no power to speak of
    return f"{text} ({judged(r)})"


def _precision_cells(r: dict, digits: int = 2) -> list[str]:
    return [plain(r["se_pp"], digits), plain(r["mde_pp"], digits), resolution(r), plain(r["correlation"])]


def _repeats(c: Comparison) -> list[Section]:
    rows = [r for r in c.rows("scoreboard") if r["repeats"] > 1]
    if not rows:
        return []
    table = Table(
        ["Bench (n)", "Variant", "repeats", f"variance across repeats ({c.baseline})", "variance across repeats (variant)",
         "SE (pp)", "SE from repeats (pp)"],
        [[_bench_label(c, r["bench"], r["n"], r["variant"]), r["variant"], str(r["repeats"]),
          plain(r["baseline_repeat_var"], 4), plain(r["variant_repeat_var"], 4), plain(r["se_pp"]),
          plain(r["repeat_se_pp"])] for r in rows],
        [False, False] + [True] * 5,
    )
    return [Section("Repeats", tables=[table], paragraphs=[
        "A problem's score is the mean over its repeats, and every paired statistic runs on those per-problem "
        "means. Variance across repeats: the mean over problems of the variance of one problem's score between "
        "its repeats (score units², 0.25 at most for pass/fail). SE from repeats: the part of Δ's SE that "
        "running the same problems again would move; the rest comes from which problems the bench has."])]


def stop_lines(c: Comparison) -> list[str]:
    """Each arm stopped by `farm.stages` (its score and Δ above are on the prefix it reached), and the
    engine time spent against a full evaluation."""
    lines = [f"{v} stopped early (farm.stages, run {s.run_id}) at {s.stage}: {s.text}; its scores are on the "
             "problems it answered before it stopped." for v, s in c.stops.items()]
    if c.cost is not None and (c.stops or c.cost.saved > 0.005):
        lines.append(f"Engine time: {c.cost.spent:.3g} {c.cost.unit} spent against {c.cost.full:.3g} for a full "
                     f"evaluation of every variant compared ({100 * c.cost.saved:.0f}% saved by stopping arms early).")
    return lines


def canary_text(c: Comparison, variant: str) -> str:
    verdict = c.canary[variant]
    if verdict.passed:
        return f"{variant} passed"
    what = "stopped by its canary before its full run" if verdict.stopped else "failed its canary (the run continued)"
    return f"{variant} {what} ({'; '.join(verdict.reasons)})"


def _tokens(c: Comparison) -> list[Section]:
    sections = []
    for measure, title in (("completion", "Output tokens per response"), ("reasoning", "Reasoning tokens per response")):
        table, estimated = token_table(c, measure)
        if not table.rows:
            continue
        paragraphs = []
        if estimated:
            paragraphs.append(f"{ESTIMATED_MARK} approximate: no token counts stored for some samples, raw chars ÷ 4 used "
                              "for those (see `source` in tables/tokens.parquet).")
        sections.append(Section(title, tables=[table], paragraphs=paragraphs, plot="tokens" if measure == "completion" else None))
    return sections


def token_table(c: Comparison, measure: str, stats: tuple[str, ...] = DEFAULT_STATS,
                abbreviate: bool = False) -> tuple[Table, bool]:
    """Per bench and variant (baseline first), the statistics of one measure (completion, reasoning) of the
    output tokens, and whether some of them are estimated (chars ÷ 4, marked ≈)."""
    rows = c.rows("tokens") if stats == DEFAULT_STATS or c.lengths is None else token_distributions(c.lengths, stats)
    rows = [r for r in rows if r["measure"] == measure]
    order = {v: i for i, v in enumerate([c.baseline, *c.variants])}
    rows.sort(key=lambda r: (c.benches.index(r["bench"]), order.get(r["variant"], 99)))
    table = Table(["Bench", "Variant", *(STAT_LABELS.get(s, s) for s in stats)],
                  [[r["bench"], (ESTIMATED_MARK if r["estimated"] else "") + r["variant"],
                    *((abbreviated if abbreviate and s == "total" else count)(r[s]) for s in stats)] for r in rows],
                  [False, False] + [True] * len(stats))
    return table, any(r["estimated"] for r in rows)


def _anomalies(c: Comparison) -> Section:
    rows = c.rows("anomalies")
    if not rows:
        return Section("Anomalies", paragraphs=["No anomalies found (silent-empty, loops, length caps, marker leaks, scorer suspects)."])
    table = Table(
        ["Bench", "Variant", "Issue", "Count", "Impact", "Examples"],
        [[r["bench"], r["variant"], f"{KIND_LABELS[r['kind']]}; {r['detail']}", f"{r['count']}/{r['n']}",
          signed(r["impact_pp"]), ", ".join(r["examples"]) or "—"] for r in rows],
        [False, False, False, True, True, False],
    )
    return Section("Anomalies", tables=[table], paragraphs=[
        "Impact: points lost on the flagged samples that scored wrong (what the bench would gain if they had been "
        "right); for a metric gap, how far the table's metric sits under the most lenient one."])


def _domains(c: Comparison) -> list[Section]:
    rows = c.rows("domains")
    sections = []
    for (bench, variant) in dict.fromkeys((r["bench"], r["variant"]) for r in rows):
        mine = [r for r in rows if r["bench"] == bench and r["variant"] == variant]
        tables = []
        for level, header in (("domain", "High-level domain"), ("subdomain", "Subdomain")):
            part = [r for r in mine if r["level"] == level]
            if part:
                tables.append(Table(
                    [header, "n", c.baseline, variant, "Δpp", "lost", "gained", "p (Holm)", "verdict",
                     *PRECISION_HEADERS],
                    [[r[level], str(r["n"]), pct(r["baseline_score"], 1), pct(r["variant_score"], 1),
                      signed(r["delta_pp"], 1, ""), str(r["lost"]), str(r["gained"]),
                      f"{p_value(r['p_value'])} ({p_value(r['p_holm'])})", verdict(r), *_precision_cells(r, 1)]
                     for r in part],
                    [False] + [True] * 12,
                ))
        sections.append(Section(f"{bench}: {variant} vs {c.baseline}", level=3, tables=tables))
    if not sections:
        return []
    intro = Section("Domain breakdown", plot="domains", paragraphs=[
        "Benches whose problems carry domain metadata, per high-level domain and subdomain. p: the paired test of "
        "the domain's problems, in parentheses Holm-corrected over the domains (or the subdomains) of one bench "
        "and variant. " + significance_legend("holm")])
    return [intro, *sections]


def _agreement(c: Comparison) -> list[Section]:
    rows = c.rows("agreement")
    if not rows:
        return []
    table = Table(
        ["Bench", "Variant", "n", "both correct", "both wrong", f"only {c.baseline} right", "only variant right"],
        [[r["bench"], r["variant"], str(r["n"]), f"{r['both_correct']} ({r['both_correct_pct']:.1f}%)",
          f"{r['both_wrong']} ({r['both_wrong_pct']:.1f}%)", f"{r['lost']} ({r['variant']} LOST)",
          f"{r['gained']} ({r['variant']} GAINED)"] for r in rows],
        [False, False, True, True, True, True, True],
    )
    by_domain: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in c.rows("agreement_by_domain"):
        by_domain[(r["bench"], r["variant"])].append(r)
    paragraphs = []
    for r in rows:
        lines = [f"**{r['bench']}, {r['variant']}**: lost ({r['lost']}): {id_list(r['lost_ids'])}; "
                 f"gained ({r['gained']}): {id_list(r['gained_ids'])}."]
        lines += lost_gained_by_domain(r, by_domain.get((r["bench"], r["variant"]), []))
        paragraphs.append(" ".join(lines))
    paragraphs.append("Full per-problem outcomes: tables/problems.parquet; id lists: tables/agreement.parquet.")
    return [Section("Per-problem agreement", tables=[table], paragraphs=paragraphs, plot="agreement")]


def expert_sections(c: Comparison) -> list[Section]:
    """The report's dropped-expert exposure section (`analysis/experts.py` computes its tables; none when the
    comparison has no exposure tables)."""
    if "exposure_tests" not in c.tables:
        return []
    tests = c.rows("exposure_tests")
    exposure = c.rows("exposure")
    medians: dict[tuple[str, str], float] = {}
    for key in dict.fromkeys((r["bench"], r["variant"]) for r in exposure):
        values = [r["exposure"] for r in exposure if (r["bench"], r["variant"]) == key]
        medians[key] = float(np.nanmedian(values)) if values else float("nan")

    def group(t: dict, side: str) -> str:
        return f"{t[f'n_{side}']}: {pct(100 * t[f'median_{side}'], 1)}" if t[f"n_{side}"] else "0"

    within = c.rows("exposure_within") if "exposure_within" in c.tables else []
    stratified = {(r["bench"], r["variant"]): r for r in within if r["stratum"] == WITHIN}
    rows = []
    for key, median in medians.items():
        by = {(t["group_a"], t["group_b"]): t for t in tests if (t["bench"], t["variant"]) == key}
        main, gained = by[("lost", "both_correct")], by[("gained", "both_correct")]
        strat = stratified.get(key)
        rows.append([key[0], key[1], str(sum(1 for r in exposure if (r["bench"], r["variant"]) == key)),
                     pct(100 * median, 1), group(main, "a"), group(main, "b"), group(gained, "a"),
                     p_value(strat["p_value"]) if strat else "—", _signed_r(strat["rank_biserial"]) if strat else "—",
                     p_value(main["p_value"]), _signed_r(main["rank_biserial"])])
    summary = Table(["Bench", "Variant", "problems", "exposure (median)", "lost (n: median)",
                     "both correct (n: median)", "gained (n: median)", "p within domains", "r within domains",
                     "p pooled", "r pooled"],
                    rows, [False, False] + [True] * 9)
    out = [Section("Dropped-expert exposure", plot="experts", tables=[summary], paragraphs=[
        f"Exposure of a problem: the share of {c.baseline}'s routing weight (its own samples, every token, every "
        "MoE layer, teacher-forced by `omk-ray route`) that went to the experts the variant dropped. Lost against "
        "both-correct problems, within domains: a stratified test (van Elteren's statistic, its p from permuting the "
        "outcomes within each domain) and the domains' rank-biserial r averaged with the same weights; this is the "
        "comparison to read, since domains differ in exposure and in how many problems a variant loses. Pooled: the "
        "two-sided Mann-Whitney U test and rank-biserial r over all problems at once (+1: every lost problem more "
        "exposed than every both-correct one), confounded by domain wherever the lost problems crowd into one; "
        "shown only beside the within-domain figures. Per-problem exposures (per layer too): "
        "tables/exposure.parquet; per domain: tables/exposure_within.parquet.",
    ])]
    for key in dict.fromkeys((r["bench"], r["variant"]) for r in within):
        mine = [r for r in within if (r["bench"], r["variant"]) == key and r["stratum"] != WITHIN]
        table = Table(
            ["Domain", "lost", "both correct", "lost: median", "both correct: median", "r", "p"],
            [[r["stratum"], str(r["n_lost"]), str(r["n_both_correct"]), pct(100 * r["median_lost"], 1),
              pct(100 * r["median_both_correct"], 1), _signed_r(r["rank_biserial"]), p_value(r["p_value"])]
             for r in mine],
            [False] + [True] * 6,
        )
        out.append(Section(f"Exposure within domains: {key[1]} on {key[0]}", level=3, tables=[table], paragraphs=[
            "Lost against both-correct problems of the same domain (Mann-Whitney U, rank-biserial r); a domain "
            "without both groups cannot tell (—)."]))
    domains = c.rows("exposure_domains")
    for key in dict.fromkeys((r["bench"], r["variant"]) for r in domains):
        mine = [r for r in domains if (r["bench"], r["variant"]) == key]
        table = Table(
            ["Domain", "n", "exposure (mean)", "median", "paired", "lost", "gained", "lost: exposure",
             "both correct: exposure"],
            [[r["domain"] if r["level"] == "domain" else f"  {r['subdomain']}", str(r["n"]),
              pct(100 * r["exposure_mean"], 1), pct(100 * r["exposure_median"], 1), str(r["paired"]), str(r["lost"]),
              str(r["gained"]), pct(100 * r["lost_exposure"], 1), pct(100 * r["both_correct_exposure"], 1)]
             for r in mine],
            [False] + [True] * 8,
        )
        ranked = sorted((r for r in mine if r["level"] == "domain"), key=lambda r: -r["exposure_mean"])
        line = ", ".join(f"{r['domain']} {pct(100 * r['exposure_mean'], 1)}" for r in ranked)
        out.append(Section(f"Exposure by domain: {key[1]} on {key[0]}", level=3, tables=[table],
                           paragraphs=[f"Domains from most to least exposed: {line}."] if len(ranked) > 1 else []))
    experts = c.rows("exposure_experts")
    for key in dict.fromkeys((r["bench"], r["variant"]) for r in experts):
        mine = [r for r in experts if (r["bench"], r["variant"]) == key]
        table = Table(
            ["Layer", "Expert", "lost problems touched", "share in lost", "share in both correct", "lift", "top domain"],
            [[str(r["layer"]), str(r["expert"]), f"{r['lost_touched']}/{r['lost']}", pct(100 * r["lost_share"], 2),
              pct(100 * r["both_correct_share"], 2), "—" if not np.isfinite(r["lift"]) else f"{r['lift']:.2f}",
              r["top_domain"] or "—"] for r in mine],
            [True, True, True, True, True, True, False],
        )
        out.append(Section(f"Dropped experts behind the lost problems: {key[1]} on {key[0]}", level=3, tables=[table],
                           paragraphs=["Dropped experts ordered by how many lost problems they touch (more than an "
                                       "even part, 1/experts, of the layer's routing weight in that problem), then by "
                                       "their mean share of the lost problems' routing in their layer; lift: share in "
                                       "lost over share in both-correct problems; top domain: the lost problems' domain "
                                       "that routed the most weight to it."]))
    return out


def _signed_r(r: float) -> str:
    return "—" if not np.isfinite(r) else f"{r:+.2f}".replace("-", "\u2212")


def _statistics_notes(c: Comparison) -> list[str]:
    board = c.rows("scoreboard")
    by_method: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in board:
        by_method[r["ci_method"]][r["bench"]].append(r["variant"])
    labels = {"melded-exact": ("pass/fail", "the exact interval compatible with McNemar's test (melded Clopper-Pearson, "
                                            "Fay & Lumbard 2021)"),
              "bootstrap-percentile": ("graded", "percentile bootstrap over problems, p from the same resamples")}
    methods = []
    for method, benches in by_method.items():
        kind, text = labels.get(method, ("other", method))
        names = [b if len(v) == len(c.variants) else f"{b} for {' and '.join(v)}" for b, v in benches.items()]
        methods.append(f"for {kind} benches ({', '.join(names)}) {text}")
    family = {
        "grid": f"over the whole grid ({len(board)} comparisons: every variant x bench)",
        "variant": "over the benches of each variant",
        "none": None,
    }[c.correction]
    p_text = (f"in parentheses Holm-corrected {family}." if family else "no multiple-comparison correction (--correction none).")
    return [
        "Δ is the paired difference on shared problems (a problem's score is the mean over its repeats). "
        f"{1 - ALPHA:.0%} CI: {'; '.join(methods) or 'none'}. Each interval excludes 0 exactly when its p ≤ {ALPHA:g}. "
        f"p: exact McNemar test for pass/fail benches, paired bootstrap for graded ones; {p_text} "
        "lost / gained: problems only the baseline / only the variant got right.",
        "SE: standard error of the paired difference (pp). ρ: correlation of the two variants' per-problem scores "
        "(Miller 2024, \"Adding Error Bars to Evals\"); the higher, the smaller the SE of a difference. MDE: the "
        f"smallest |Δ| the bench detects with {POWER:.0%} power at p ≤ {ALPHA:g} (uncorrected), given its n and the "
        "observed discordance (exact McNemar power for pass/fail, (z(1 − α/2) + z(power)) × SE for graded); ∞: no "
        "difference is, at that discordance. power: whether |Δ| is below the MDE or at least the MDE.",
        "verdict: " + significance_legend(c.correction),
    ]


def lost_gained_by_domain(agreement: dict, by_domain: list[dict]) -> list[str]:
    """"Of the 23 problems v4 lost: 18 Chemistry, 4 Physics, 1 Biology." and the same for the rescued ones."""
    lines = []
    for kind, verb in (("lost", "lost"), ("gained", "rescued")):
        parts = sorted((d for d in by_domain if d[kind]), key=lambda d: -d[kind])
        if parts:
            noun = "problem" if agreement[kind] == 1 else "problems"
            lines.append(f"Of the {agreement[kind]} {noun} {agreement['variant']} {verb}: "
                         + ", ".join(f"{d[kind]} {d['domain']}" for d in parts) + ".")
    return lines


def _notes(c: Comparison) -> Section:
    lines = []
    for note in c.guard.notes:
        lines.append(f"{note.mark} {note.text}")
    if any(n.mark == MISMATCH_MARK for n in c.guard.notes):
        lines.append(f"{MISMATCH_MARK} marks cells built from unlike samples (--allow-mismatch): do not cite them as a like-for-like comparison.")
    if any(n.mark == ENGINE_MARK for n in c.guard.notes):
        lines.append(f"{ENGINE_MARK} marks benches where a variant ran on another engine than the baseline (as the grid "
                     "chose): a difference there is the engines' as well as the weights'.")
    if any(n.mark == DECLARED_MARK for n in c.guard.notes):
        lines.append(f"{DECLARED_MARK} marks benches where a variant's recipe differs from the baseline's, as a grid "
                     "declared or an import recorded it.")
    if any(n.mark == UNRECORDED_MARK for n in c.guard.notes):
        lines.append(f"{UNRECORDED_MARK} marks benches where a recipe was not recorded (an import without one): "
                     "whether the comparison is like for like is unknown.")
    lines.extend(c.notes)
    metrics = sorted({m for m in c.primary.values() if m != SCORE_COLUMN})
    if metrics:
        lines.append("Primary metrics other than the stored score: "
                     + ", ".join(f"{b}: {m}" for b, m in c.primary.items() if m != SCORE_COLUMN) + ".")
    lines.extend(_statistics_notes(c))
    return Section("Notes", paragraphs=[without_machine_paths(line) for line in lines])
