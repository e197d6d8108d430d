"""Serving cohorts side by side: the same arms served two ways (vLLM NVFP4A16, llama.cpp Q6_K...),
each compared with the baseline of its own cohort, in one table, and how far each cohort's
answers agree with the first cohort's (a GGUF twin against its vLLM twin).

    side_by_side(results, [ServingCohort("vLLM NVFP4A16", ["128e-nvfp4", "v3-nvfp4", "v4-nvfp4"]),
                           ServingCohort("llama.cpp Q6_K", ["128e-q6k", "v3-q6k", "v4-q6k"])])

The first variant of a cohort is its baseline; the i-th variants of all cohorts are one arm
(named after the first cohort's). Each cohort goes through `compare` on its own, so its cohort
guard holds within it (one sampler cohort, one recipe per bench); across cohorts the engine
and the weights differ by design, and the agreement table shows by how much.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.samples import AnalysisError
from omk_ray.analysis.sections import Section, Table, on_k, pct, signed
from omk_ray.results.store import ResultsStore


@dataclass(frozen=True)
class ServingCohort:
    name: str
    variants: list[str]


@dataclass
class SideBySide:
    cohorts: list[ServingCohort]
    scores: list[dict]  # bench, arm, then per cohort a cell (see _cohort_scores) or None
    agreement: list[dict]  # bench, arm, cohort, variant, twin, n, same_verdict_pct, identical_pct
    notes: list[str] = field(default_factory=list)

    def sections(self) -> list[Section]:
        names = [c.name for c in self.cohorts]
        scores = Table(
            headers=["Bench", "Arm", *[f"{n} (Δ vs its baseline)" for n in names]],
            rows=[[r["bench"], r["arm"], *[_score_cell(r[n]) for n in names]] for r in self.scores],
            numeric=[False, False, *[True] * len(names)],
        )
        agree = Table(
            headers=["Bench", "Arm", "Cohort", "vs", "n", "same verdict", "identical answer"],
            rows=[[r["bench"], r["arm"], r["cohort"], r["twin_cohort"], str(r["n"]), pct(r["same_verdict_pct"]),
                   pct(r["identical_pct"])] for r in self.agreement],
            numeric=[False, False, False, False, True, True, True],
        )
        return [
            Section("Serving cohorts side by side", 2, tables=[scores], paragraphs=[
                "Each cohort is compared with its own baseline: "
                + ", ".join(f"{c.name}: {c.variants[0]}" for c in self.cohorts) + ". A baseline's cell: its score on "
                "all its problems of the bench (n). A variant's: its score and Δ on the problems it shares with its "
                "cohort's baseline (\"on k\" where that is fewer than the baseline's n)."]),
            Section(f"Agreement with {names[0]}", 3, tables=[agree], paragraphs=[
                ("On the problems both twins answered: same verdict (both right or both wrong on the bench's primary "
                 "metric) and the very same answer text (in every repeat)."), *self.notes]),
        ]


def side_by_side(results: str | Path, cohorts: list[ServingCohort], benches: list[str] | None = None,
                 resamples: int = 2000) -> SideBySide:
    if len(cohorts) < 2:
        raise AnalysisError("give at least two cohorts to put side by side")
    arms = len(cohorts[0].variants)
    for c in cohorts:
        if len(c.variants) != arms or arms < 1:
            raise AnalysisError(f"cohort {c.name!r} lists {len(c.variants)} variants but {cohorts[0].name!r} lists "
                                f"{arms}: every cohort needs one variant per arm, baseline first")
    arm_names = cohorts[0].variants
    cells: dict[tuple[str, str], dict] = {}
    for c in cohorts:
        for bench, cell in _cohort_scores(results, c, benches, resamples):
            arm = arm_names[c.variants.index(cell["variant"])]
            cells.setdefault((bench, arm), {"bench": bench, "arm": arm})[c.name] = cell
    order = {a: i for i, a in enumerate(arm_names)}
    scores = sorted(cells.values(), key=lambda r: (r["bench"], order[r["arm"]]))
    for row in scores:
        for c in cohorts:
            row.setdefault(c.name, None)
    agreement, notes = [], []
    for c in cohorts[1:]:
        for i, arm in enumerate(arm_names):
            rows, twin_notes = twin_agreement(results, cohorts[0].variants[i], c.variants[i], benches, resamples)
            agreement += [{"arm": arm, "cohort": c.name, "twin_cohort": cohorts[0].name, **row} for row in rows]
            notes += twin_notes
    agreement.sort(key=lambda r: (r["bench"], order[r["arm"]], r["cohort"]))
    if not agreement:
        notes.append("no problem was answered by both twins of any arm")
    return SideBySide(cohorts, scores, agreement, notes)


def _cohort_scores(results, cohort: ServingCohort, benches, resamples):
    """(bench, cell) for every variant of a cohort. The baseline's cell is its headline (its score on all
    its problems of the bench); a variant's holds its score and Δ on the problems it shares with the
    baseline: `n` those problems, `baseline_n` all the baseline's."""
    baseline, others = cohort.variants[0], cohort.variants[1:]
    if not others:
        raise AnalysisError(f"cohort {cohort.name!r} has only its baseline {baseline}: nothing to compare")
    comparison = compare(results, CompareOptions(baseline=baseline, variants=others, benches=benches,
                                                 resamples=resamples))
    full = {r["bench"]: r for r in comparison.rows("headline") if r["role"] == "baseline"}
    for bench, r in full.items():
        yield bench, {"variant": baseline, "score": r["score"], "delta_pp": None, "n": r["n"], "baseline_n": r["n"]}
    for r in comparison.rows("scoreboard"):
        yield r["bench"], {"variant": r["variant"], "score": r["variant_score"], "delta_pp": r["delta_pp"],
                           "n": r["n"], "baseline_n": full[r["bench"]]["n"]}


def twin_agreement(results: str | Path, a: str, b: str, benches: list[str] | None = None,
                   resamples: int = 200) -> tuple[list[dict], list[str]]:
    """Per bench, `b` compared with its twin `a` as `compare` pairs them (on the bench's primary metric,
    the problems both answered): how often they reached the same verdict (both right or both wrong)
    and gave the very same answer text. Returns the rows and the comparison's notes on what differs
    beyond the engine and the weights (the cohort guard's, allowed: twins differ by design)."""
    twins = compare(results, CompareOptions(baseline=a, variants=[b], benches=benches, resamples=resamples,
                                            allow_mismatch=True))
    identical = _identical_answers(results, a, b, twins.tables["problems"])
    rows = [{"bench": r["bench"], "variant": b, "twin": a, "n": r["n"],
             "same_verdict_pct": r["both_correct_pct"] + r["both_wrong_pct"],
             "identical_pct": 100.0 * identical.get(r["bench"], 0) / r["n"] if r["n"] else float("nan")}
            for r in sorted(twins.rows("agreement"), key=lambda r: r["bench"])]
    return rows, [f"{b} vs {a}: {n.text}" for n in twins.guard.notes]


def _identical_answers(results: str | Path, a: str, b: str, problems: pa.Table) -> dict[str, int]:
    """Per bench: how many of the paired problems got the same answer text from both in every repeat both
    answered without error."""
    paired = set(zip(problems["bench"].to_pylist(), problems["doc_id"].to_pylist()))
    where = pc.field("variant").isin([a, b]) & pc.field("error").is_null()
    rows = ResultsStore(results).read(columns=["variant", "bench", "doc_id", "repeat", "response"], filter=where)
    answers: dict[tuple, dict[str, str | None]] = defaultdict(dict)
    for r in rows.to_pylist():
        if (r["bench"], r["doc_id"]) in paired:
            answers[(r["bench"], r["doc_id"], r["repeat"])][r["variant"]] = r["response"]
    same: dict[tuple[str, str], bool] = {}
    for (bench, doc, _), by in answers.items():
        if len(by) == 2:
            same[(bench, doc)] = same.get((bench, doc), True) and by[a] == by[b]
    counts: dict[str, int] = defaultdict(int)
    for (bench, _), equal in same.items():
        counts[bench] += equal
    return counts


def _score_cell(cell: dict | None) -> str:
    if cell is None:
        return "—"
    text = f"{pct(cell['score'])} ({cell['variant']})"
    if cell["delta_pp"] is None:
        return text
    return f"{text} {signed(cell['delta_pp'])}" + on_k(cell["n"], cell["baseline_n"])
