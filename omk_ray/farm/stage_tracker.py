"""Stages in the run (`farm.stages`): the scores of every variant's rows, by bench, in each bench's
representative order; after each look (the prefix of every bench done for an arm and the baseline)
`stages.decide` judges every arm, and the arms it stops newly are handed to the scheduler, which
records them (events, manifest) and drains their queues. No Ray, no clock.

A doc is done once all its repeats are in (an error row scores 0); its score is their mean. An
arm's outcomes on a bench are the paired differences arm - baseline over the longest prefix of the
order done for both. Rows stored by earlier runs count as this run's (`stored`)."""

from __future__ import annotations

import numpy as np

from omk_ray.config import StagesSpec
from omk_ray.farm import stages
from omk_ray.farm.planner import Plan


class StageTracker:
    def __init__(self, plan: Plan, spec: StagesSpec, baseline: str, canary_docs: int,
                 canary_max_loss_pp: float | None = None, stored: list[dict] | None = None):
        self.spec, self.baseline, self.canary_docs = spec, baseline, canary_docs
        self.canary_max_loss_pp = canary_max_loss_pp or stages.CANARY_MAX_LOSS_PP
        self.order: dict[str, list[str]] = {}
        self.repeats: dict[tuple[str, str], int] = {}
        for w in plan.work:
            self.order.setdefault(w.bench, plan.orders[w.bench].ids[: w.expected // w.recipe.repeats]
                                  if w.bench in plan.orders else [d.id for d, r in w.samples if r == 0])
            self.repeats[(w.variant, w.bench)] = w.recipe.repeats
        self.sizes = {b: len(ids) for b, ids in self.order.items()}
        self.position = {b: {d: i for i, d in enumerate(ids)} for b, ids in self.order.items()}
        self.looks = stages.looks(list(spec.stages), self.sizes, canary_docs)
        self.variants = sorted(plan.fingerprints)
        self.arms = [v for v in self.variants if v != baseline]
        self.scores: dict[tuple[str, str], dict[str, list[float]]] = {}
        self.prefix: dict[tuple[str, str], int] = {}  # docs of the order done, from the first
        self.reached: dict[str, int] = {}  # arm -> the last look judged (-1: none)
        self.verdicts: dict[str, stages.Verdict] = {}
        self.stopped: dict[str, stages.Verdict] = {}
        for row in stored or []:
            self._put(row)

    def stage_of(self, bench: str, doc_id: str) -> int:
        """The index of the first look that holds the doc (its stage: the queue hands stages out in order)."""
        pos = self.position.get(bench, {}).get(doc_id, 0)
        return next((look.index for look in self.looks if pos < look.counts.get(bench, 0)), len(self.looks) - 1)

    def add(self, row: dict) -> list[stages.Verdict]:
        """A row made in the run; the arms newly stopped (none unless an arm reached a new look)."""
        if row["variant"] in self.stopped:
            return []
        self._put(row)
        return self.judge()

    def judge(self) -> list[stages.Verdict]:
        """Call `stages.decide` when an arm has reached a look it was not judged at; the new stops."""
        if self.baseline not in self.variants:
            return []
        looks = {arm: self._look(arm) for arm in self.arms if arm not in self.stopped}
        if not any(i > self.reached.get(arm, -1) for arm, i in looks.items()):
            return []
        self.reached.update(looks)
        outcomes = {arm: self._outcomes(arm) for arm in self.arms}
        self.verdicts = stages.decide(
            outcomes, self.sizes, stages=list(self.spec.stages), stop_below_pp=self.spec.stop_below_pp,
            mode=self.spec.mode, alpha=self.spec.alpha, canary_docs=self.canary_docs,
            canary_max_loss_pp=self.canary_max_loss_pp, weights=self.spec.weights)
        new = [v for arm, v in sorted(self.verdicts.items()) if v.stopped and arm not in self.stopped]
        self.stopped.update((v.arm, v) for v in new)
        return new

    def _put(self, row: dict) -> None:
        cell = (row["variant"], row["bench"])
        if cell not in self.repeats or row["doc_id"] not in self.position.get(row["bench"], {}):
            return
        got = self.scores.setdefault(cell, {}).setdefault(row["doc_id"], [])
        if len(got) < self.repeats[cell]:
            got.append(float(row.get("score") or 0.0))
        order, done, n = self.order[row["bench"]], self.scores[cell], self.prefix.get(cell, 0)
        while n < len(order) and len(done.get(order[n], ())) >= self.repeats[cell]:
            n += 1
        self.prefix[cell] = n

    def _paired(self, arm: str, bench: str) -> int:
        return min(self.prefix.get((arm, bench), 0), self.prefix.get((self.baseline, bench), 0))

    def _look(self, arm: str) -> int:
        done = -1
        for look in self.looks:
            if all(self._paired(arm, b) >= n for b, n in look.counts.items()):
                done = look.index
        return done

    def _outcomes(self, arm: str) -> dict[str, np.ndarray]:
        out = {}
        for bench, order in self.order.items():
            ids = order[: self._paired(arm, bench)]
            mine, base = self.scores.get((arm, bench), {}), self.scores.get((self.baseline, bench), {})
            out[bench] = np.array([np.mean(mine[d]) - np.mean(base[d]) for d in ids], dtype=float)
        return out

    def look_label(self) -> str:
        """The furthest look an arm still running has been judged at ("" before the first)."""
        done = [self.reached.get(arm, -1) for arm in self.arms if arm not in self.stopped]
        i = max(done, default=-1)
        return self.looks[i].label if i >= 0 else ""

    def status(self) -> dict[str, str]:
        """arm -> its state now ("stopped at 24/400: ...", "running after 25%")."""
        return {arm: (self.stopped.get(arm) or self.verdicts.get(arm) or stages.Verdict(arm, "continue", "", -1)).text()
                for arm in self.arms}


def stored_rows(store, plan: Plan) -> list[dict]:
    """The stored rows of the plan's variants (same fingerprint and recipe) that the stages judge: read once."""
    import pyarrow.compute as pc

    where = None
    for w in plan.work:
        part = (pc.field("bench") == w.bench) & (pc.field("recipe_hash") == w.recipe.hash) & \
            (pc.field("variant_fingerprint") == plan.fingerprints[w.variant])
        where = part if where is None else where | part
    if store is None or where is None:
        return []
    return store.read(filter=where, columns=["variant", "bench", "doc_id", "repeat", "score"]).to_pylist()


def stage_tracker(plan: Plan, store, exclude: set[str] = frozenset()) -> StageTracker | None:
    """The run's tracker when `farm.stages` is on and the baseline is one of the plan's variants;
    `exclude`: arms never stopped (`run --resume-stopped`)."""
    grid = plan.grid
    spec, baseline = grid.farm.stages, grid.baseline_variant
    if not spec.enabled or baseline not in plan.fingerprints or len(plan.fingerprints) < 2:
        return None
    canary = grid.farm.canary
    tracker = StageTracker(plan, spec, baseline, canary.docs, canary.max_loss_pp, stored_rows(store, plan))
    tracker.arms = [a for a in tracker.arms if a not in exclude]
    return tracker
