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

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.samples import AnalysisError
from omk_ray.analysis.sections import Section, Table, pct, signed
from omk_ray.results.store import ResultsStore


@dataclass(frozen=True)
class ServingCohort:
    name: str
    variants: list[str]


@dataclass
class SideBySide:
    cohorts: list[ServingCohort]
    scores: list[dict]  # bench, arm, then per cohort: variant, score (%), delta_pp (vs its baseline), n
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
                + ", ".join(f"{c.name}: {c.variants[0]}" for c in self.cohorts) + "."]),
            Section(f"Agreement with {names[0]}", 3, tables=[agree], paragraphs=list(self.notes)),
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
        for bench, variant, score, delta, n in _cohort_scores(results, c, benches, resamples):
            arm = arm_names[c.variants.index(variant)]
            cells.setdefault((bench, arm), {"bench": bench, "arm": arm})[c.name] = {
                "variant": variant, "score": score, "delta_pp": delta, "n": n}
    order = {a: i for i, a in enumerate(arm_names)}
    scores = sorted(cells.values(), key=lambda r: (r["bench"], order[r["arm"]]))
    for row in scores:
        for c in cohorts:
            row.setdefault(c.name, None)
    agreement, notes = [], []
    for c in cohorts[1:]:
        for i, arm in enumerate(arm_names):
            for row in twin_agreement(results, cohorts[0].variants[i], c.variants[i], benches):
                agreement.append({"arm": arm, "cohort": c.name, "twin_cohort": cohorts[0].name, **row})
    agreement.sort(key=lambda r: (r["bench"], order[r["arm"]], r["cohort"]))
    if not agreement:
        notes.append("no problem was answered by both twins of any arm")
    return SideBySide(cohorts, scores, agreement, notes)


def _cohort_scores(results, cohort: ServingCohort, benches, resamples):
    """(bench, variant, score, delta_pp vs the cohort's baseline, n) for every variant of a cohort."""
    baseline, others = cohort.variants[0], cohort.variants[1:]
    if not others:
        raise AnalysisError(f"cohort {cohort.name!r} has only its baseline {baseline}: nothing to compare")
    comparison = compare(results, CompareOptions(baseline=baseline, variants=others, benches=benches,
                                                 resamples=resamples))
    seen = set()
    for r in comparison.rows("scoreboard"):
        if r["bench"] not in seen:
            seen.add(r["bench"])
            yield r["bench"], baseline, r["baseline_score"], None, r["baseline_docs"]
        yield r["bench"], r["variant"], r["variant_score"], r["delta_pp"], r["n"]


def twin_agreement(results: str | Path, a: str, b: str, benches: list[str] | None = None) -> list[dict]:
    """Per bench: on the problems both variants answered without error, how often they reached the
    same verdict (both right or both wrong) and gave the very same answer text."""
    where = pc.field("variant").isin([a, b]) & pc.field("error").is_null()
    if benches:
        where &= pc.field("bench").isin(benches)
    rows = ResultsStore(results).read(columns=["variant", "bench", "doc_id", "repeat", "response", "correct"],
                                      filter=where).to_pylist()
    left = {(r["bench"], r["doc_id"], r["repeat"]): r for r in rows if r["variant"] == a}
    out: dict[str, dict] = {}
    for r in rows:
        twin = left.get((r["bench"], r["doc_id"], r["repeat"])) if r["variant"] == b else None
        if twin is None:
            continue
        acc = out.setdefault(r["bench"], {"bench": r["bench"], "variant": b, "twin": a, "n": 0, "same": 0, "identical": 0})
        acc["n"] += 1
        acc["same"] += bool(r["correct"]) == bool(twin["correct"])
        acc["identical"] += r["response"] == twin["response"]
    return [{"bench": v["bench"], "variant": v["variant"], "twin": v["twin"], "n": v["n"],
             "same_verdict_pct": 100.0 * v["same"] / v["n"], "identical_pct": 100.0 * v["identical"] / v["n"]}
            for v in sorted(out.values(), key=lambda v: v["bench"])]


def _score_cell(cell: dict | None) -> str:
    if cell is None:
        return "—"
    text = f"{pct(cell['score'])} ({cell['variant']})"
    return text if cell["delta_pp"] is None else f"{text} {signed(cell['delta_pp'])}"
