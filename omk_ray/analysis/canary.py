"""The canary: a few problems per bench in generation mode, judged by structural rules only.

The canary's rules live here: which problems it asks (`canary_sample`), the thresholds
(`CanaryRules`, from the grid's `farm.canary` by `rules_for`) and the structural judgement
(`evaluate_canary`). The run's gate (omk_ray/farm/gate.py) holds a variant's canary rows in memory
and applies these as soon as the last one is made; `omk-ray canary` (`run_canary` in
omk_ray/farm/runner.py) is the same path stopped after the verdict.

The seed's lesson: a variant can look fine on an aggregate score (or a teacher-forced loss)
and still be broken when it generates. Before a variant's full run, a handful of samples per
bench must pass every rule, per bench:
- at most 5% empty answers (engine errors count as empty);
- no reasoning marker leaking into an answer;
- the 10th percentile of completion length at or above the bench's floor (tokens; chars / 4
  where no count was stored);
- no degenerate loop;
- not every score exactly 0.

`evaluate_canary(rows)` is a pure function over sample rows.
"""

from __future__ import annotations

import math

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from omk_ray.analysis.anomalies import AnomalyRules, flag_rows, text_features
from omk_ray.analysis.declared import DEFAULT_MARKERS
from omk_ray.analysis.samples import natural_key
from omk_ray.analysis.tokens import completion_lengths
from omk_ray.results.schema import SAMPLE_SCHEMA, rows_to_table

FLOOR_OPTION = "canary_min_p10_tokens"  # a bench option that sets the bench's floor


class CanaryRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_empty_rate: float = Field(0.05, ge=0, le=1)
    min_p10_tokens: float = Field(1, ge=0, description="floor of benches without their own")
    p10_floors: dict[str, float] = Field(default_factory=dict, description="bench -> floor in tokens")
    markers: tuple[str, ...] = DEFAULT_MARKERS
    anomaly: AnomalyRules = AnomalyRules()

    def floor(self, bench: str) -> float:
        return self.p10_floors.get(bench, self.min_p10_tokens)


@dataclass
class BenchCanary:
    bench: str
    n: int
    empty: int
    leaks: int
    loops: int
    p10_tokens: float
    floor: float
    mean_score: float
    reasons: list[str] = field(default_factory=list)


@dataclass
class CanaryResult:
    passed: bool
    reasons: list[str]
    benches: list[BenchCanary]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "benches": [asdict(b) for b in self.benches]}

    @classmethod
    def from_dict(cls, data: dict) -> "CanaryResult":
        return cls(data["passed"], list(data["reasons"]), [BenchCanary(**b) for b in data["benches"]])

    def summary(self) -> str:
        head = "canary PASSED" if self.passed else "canary FAILED"
        lines = [f"{head} ({sum(b.n for b in self.benches)} samples, {len(self.benches)} benches)"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def evaluate_canary(rows: pa.Table | list[dict], rules: CanaryRules = CanaryRules()) -> CanaryResult:
    """Apply the structural rules to one variant's sample rows (any benches, any repeats)."""
    table = _as_table(rows)
    if table.num_rows == 0:
        return CanaryResult(False, ["no samples to judge: the canary generated nothing"], [])
    for name, values in text_features(table, set(rules.markers), rules.anomaly, check_all=True).items():
        table = table.append_column(name, values)
    flags = flag_rows(table, rules.anomaly)
    # Scored rows (loglikelihood benches) generate nothing: only their errors count as empty, no length floor.
    scored = pc.fill_null(pc.equal(table["finish_reason"], "scored"), False).to_numpy(zero_copy_only=False)
    empty = (table["answer_blank"].to_numpy(zero_copy_only=False) & ~scored) | flags.masks["error"]
    lengths, _ = completion_lengths(table)
    scores = np.nan_to_num(pc.fill_null(table["score"], 0.0).to_numpy(zero_copy_only=False).astype(float))
    bench_col = table["bench"].to_numpy(zero_copy_only=False)
    doc_ids = table["doc_id"].to_numpy(zero_copy_only=False)
    result = CanaryResult(True, [], [])
    for bench in sorted(set(bench_col)):
        mine = bench_col == bench
        n = int(mine.sum())
        check = BenchCanary(
            bench=bench,
            n=n,
            empty=int(empty[mine].sum()),
            leaks=int(flags.masks["marker-leak"][mine].sum()),
            loops=int(flags.masks["rumination-loop"][mine].sum()),
            p10_tokens=float(np.percentile(lengths[mine & ~scored], 10)) if (mine & ~scored).any() else math.inf,
            floor=rules.floor(bench),
            mean_score=float(scores[mine].mean()),
        )

        def ids(mask: np.ndarray) -> str:
            found = sorted(set(doc_ids[mine & mask].tolist()), key=natural_key)
            return ", ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")

        if check.empty / n > rules.max_empty_rate:
            check.reasons.append(f"{bench}: {check.empty} of {n} answers empty or failed "
                                 f"({100 * check.empty / n:.0f}% > {100 * rules.max_empty_rate:.0f}%): {ids(empty)}")
        if check.leaks:
            check.reasons.append(f"{bench}: reasoning markers leak into {check.leaks} answers: {ids(flags.masks['marker-leak'])}")
        if check.p10_tokens < check.floor:
            check.reasons.append(f"{bench}: p10 completion length {check.p10_tokens:.0f} tokens is under the floor of {check.floor:g}")
        if check.loops:
            check.reasons.append(f"{bench}: degenerate loop in {check.loops} outputs: {ids(flags.masks['rumination-loop'])}")
        if np.all(scores[mine] == 0):
            check.reasons.append(f"{bench}: every score is exactly 0 ({n} of {n}): the model or the scorer is broken")
        result.benches.append(check)
        result.reasons.extend(check.reasons)
    result.passed = not result.reasons
    return result


def _as_table(rows: pa.Table | list[dict]) -> pa.Table:
    if not isinstance(rows, pa.Table):
        return rows_to_table(list(rows))
    for name in SAMPLE_SCHEMA.names:
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, SAMPLE_SCHEMA.field(name).type))
    return rows


def rules_for(grid, variant: str, **overrides) -> CanaryRules:
    """Rules for a variant of a grid: the grid's thresholds, each bench's floor option and the variant's markers."""
    spec = grid.variant(variant)
    floors = {b.name: float(b.options[FLOOR_OPTION]) for b in grid.benches if FLOOR_OPTION in b.options}
    markers = set(DEFAULT_MARKERS)
    for bench in grid.benches:
        markers.update(m for m in grid.recipe_for(spec, bench).reasoning_markers if m)
    thresholds = {"max_empty_rate": grid.farm.canary.max_empty_rate, "min_p10_tokens": grid.farm.canary.min_p10_tokens}
    return CanaryRules(p10_floors=floors, markers=tuple(sorted(markers)), **{**thresholds, **overrides})


def canary_sample(docs: list, n: int, seed: int, bench: str) -> list[str]:
    """The ids of `n` docs spread over the bench: a seeded sample stratified by domain, in bench order.

    Every domain gets one doc while `n` allows, the rest goes to the domains in proportion to their
    size (largest remainder); with more domains than `n`, `n` domains are drawn.
    """
    if n >= len(docs):
        return [d.id for d in docs]
    rng = random.Random(f"{seed}:{bench}")
    strata: dict[str, list[str]] = {}
    for d in docs:
        strata.setdefault(d.domain or "", []).append(d.id)
    names = sorted(strata)
    if n < len(names):
        names = sorted(rng.sample(names, n))
        quota = dict.fromkeys(names, 1)
    else:
        quota = dict.fromkeys(names, 1)
        rest, total = n - len(names), sum(len(strata[k]) - 1 for k in names)
        share = {k: rest * (len(strata[k]) - 1) / total if total else 0.0 for k in names}
        for k in names:
            quota[k] += int(share[k])
        by_remainder = sorted(names, key=lambda k: (share[k] - int(share[k]), rng.random()), reverse=True)
        for k in by_remainder[: n - sum(quota.values())]:
            quota[k] += 1
    chosen = {i for k in names for i in rng.sample(strata[k], min(quota[k], len(strata[k])))}
    others = [d.id for d in docs if d.id not in chosen]
    chosen.update(rng.sample(others, n - len(chosen)))  # a stratum smaller than its quota
    return [d.id for d in docs if d.id in chosen]
