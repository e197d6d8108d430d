"""Stage decisions: which arms of a grid go on to their next stage and which stop, with the rule and
its numbers (pure functions; the scheduler's loop calls `decide` after each stage's rows are in).

Every bench is read in one representative order (farm/order.py), the same for the baseline and
every arm, so the first n problems of two variants pair. `farm.stages` (config.StagesSpec) lists
the looks, e.g. `[canary, 0.25, 0.5, 1.0]`: the canary's problems, then a quarter, half and all of
every bench. After each look but the last, an arm stops when

- **canary** (at the canary look, pass/fail benches): on some bench it is worse than the baseline by
  more than `canary_max_loss_pp` by the exact one-sided test of `stats.canary_test` (the melded
  exact bound of the paired difference below -max_loss), at level `canary_alpha` split over the
  benches. An arm within the margin on every bench is stopped with probability at most canary_alpha.
- **futility** (every look): the anytime-valid upper bound of its paired difference to the baseline
  lies below `-stop_below_pp`, on some bench (the betting confidence sequence, `stats.betting_upper`)
  or pooled over the grid's benches (`stats.pooled_upper`, each bench weighted as the card weighs
  it: equally, unless `weights` says otherwise). The bounds hold at every look at once; the level
  `alpha` is split over arms x (benches + pooled), so an arm within `stop_below_pp` of the baseline
  on every bench and pooled is stopped with probability at most `alpha` over the whole grid and
  every look (Bonferroni over the family, Ville's inequality over the looks).
- **race** (mode `race`, every look): pooled, its difference to the arm leading at that look has an
  anytime-valid upper bound below `-stop_below_pp` (level `alpha` over every ordered pair of arms).

`decide` is a function of the rows seen so far only (each look is judged on its own prefixes, in
order), so calling it again after more rows arrive never changes an earlier decision.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from omk_ray.analysis.stats import betting_log_capital, betting_upper, canary_test, mixture_rho, pooled_upper

CANARY = "canary"
Mode = Literal["futility", "race"]

# Defaults, argued in docs/comparison.md ("Stopping arms early"): the canary catches the seed's
# collapse (-70 pp) on 24 problems of a 164-problem bench with power 0.98 (one bench, level 0.05),
# and never stops an arm within 20 pp of the baseline more often than 5%.
CANARY_DOCS = 24
CANARY_MAX_LOSS_PP = 20.0
CANARY_ALPHA = 0.05
STOP_BELOW_PP = 5.0
ALPHA = 0.05
STAGES: tuple[str | float, ...] = (CANARY, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Look:
    """One stage: its label and how many problems of each bench it has seen once complete."""

    index: int
    label: str  # "canary", "25%"
    counts: dict[str, int]


@dataclass(frozen=True)
class Verdict:
    """What `decide` says of one arm: go on, or stop (with the rule and the numbers at the stop)."""

    arm: str
    action: Literal["continue", "stop"]
    stage: str  # label of the last look judged (the stop's look when stopped); "" before the first
    look: int  # its index; -1 before the first
    rule: str = ""  # canary | futility | race
    target: str = ""  # the bench, "pooled", or "vs ARM" (race)
    n: int = 0  # problems the rule judged (pooled: over every bench)
    of: int = 0  # problems the full target holds
    delta_pp: float = math.nan  # the observed paired difference at the stop
    upper_pp: float = math.nan  # the bound that fell below the threshold
    threshold_pp: float = math.nan
    alpha: float = math.nan  # the level the bound was taken at (after the split over the family)
    level: float = math.nan  # the family's level (1 - level: the guarantee the card quotes)
    bound: str = ""  # "exact" (canary) or "anytime-valid"

    @property
    def stopped(self) -> bool:
        return self.action == "stop"

    def text(self) -> str:
        """The card's line: "stopped at 100/400: Δ <= -41 pp, 95% anytime-valid (futility, bench toy)"."""
        if not self.stopped:
            return f"running after {self.stage}" if self.stage else "not judged yet"
        where = self.target if self.target in ("pooled",) or self.target.startswith("vs ") else f"bench {self.target}"
        return (f"stopped at {self.n}/{self.of}: Δ <= {self.upper_pp:.0f} pp (observed {self.delta_pp:+.1f} pp), "
                f"{100 * (1 - self.level):.0f}% {self.bound} ({self.rule}, {where})")

    def to_dict(self) -> dict:
        return {**asdict(self), "text": self.text()}


def looks(stages: list[str | float] | tuple[str | float, ...], sizes: dict[str, int], canary_docs: int) -> list[Look]:
    """The looks of `stages` over benches of these sizes: `canary` is the first min(canary_docs, N)
    problems of each bench, a fraction f the first ceil(f N)."""
    out = []
    for i, stage in enumerate(stages):
        if stage == CANARY:
            counts, label = {b: min(canary_docs, n) for b, n in sizes.items()}, CANARY
        else:
            counts, label = {b: min(n, math.ceil(float(stage) * n)) for b, n in sizes.items()}, f"{float(stage):.0%}"
        out.append(Look(i, label, counts))
    return out


def decide(
    outcomes: dict[str, dict[str, np.ndarray]],
    sizes: dict[str, int],
    *,
    stages: list[str | float] | tuple[str | float, ...] = STAGES,
    stop_below_pp: float = STOP_BELOW_PP,
    mode: Mode = "futility",
    alpha: float = ALPHA,
    canary_docs: int = CANARY_DOCS,
    canary_max_loss_pp: float = CANARY_MAX_LOSS_PP,
    canary_alpha: float = CANARY_ALPHA,
    weights: dict[str, float] | None = None,
) -> dict[str, Verdict]:
    """arm -> its verdict, from `outcomes`: arm -> bench -> the paired differences (arm - baseline,
    scores in [0, 1]) of the problems seen so far, in the bench's order. `sizes`: bench -> problems
    in the full bench. An arm is judged at every look whose problems it (and the baseline) has on
    every bench; the first look at which a rule fires stops it."""
    plan = looks(stages, sizes, canary_docs)
    benches = sorted(sizes)
    arms = sorted(outcomes)
    weights = {b: 1.0 for b in benches} if weights is None else {b: float(weights.get(b, 0.0)) for b in benches}
    targets = len(benches) + (1 if len(benches) > 1 else 0)
    a_futility = alpha / max(len(arms), 1) / targets
    a_race = alpha / max(len(arms) * (len(arms) - 1), 1)
    threshold = -stop_below_pp / 100
    # the pooled boundary's rho per half-range of the differences: 1 (arm - baseline), 2 (arm - arm, race)
    rho = {span: _rho(plan, sizes, weights, a, span) for span, a in ((1.0, a_futility), (2.0, a_race))}
    verdicts = {arm: Verdict(arm, "continue", "", -1) for arm in arms}
    for look in plan:
        if look.counts == sizes:  # the last look: nothing left to save
            running = [a for a in arms if not verdicts[a].stopped and _reached(outcomes[a], look)]
            for arm in running:
                verdicts[arm] = Verdict(arm, "continue", look.label, look.index)
            break
        running = [a for a in arms if not verdicts[a].stopped and _reached(outcomes[a], look)]
        cut = {a: {b: np.asarray(outcomes[a][b], dtype=float)[: look.counts[b]] for b in benches} for a in running}
        for arm in running:
            stop = None
            if look.label == CANARY:
                stop = _canary(arm, cut[arm], look, sizes, canary_max_loss_pp / 100, canary_alpha / len(benches))
            stop = stop or _bound(arm, cut[arm], look, sizes, weights, threshold, a_futility, rho[1.0], alpha,
                                  "futility", None, span=1.0)
            verdicts[arm] = stop or Verdict(arm, "continue", look.label, look.index)
        if mode == "race" and len(running) > 1:
            lead = max(running, key=lambda a: (_pooled_estimate(cut[a], sizes, weights), a))
            for arm in running:
                if arm == lead or verdicts[arm].stopped:
                    continue
                diff = {b: cut[arm][b] - cut[lead][b] for b in benches}
                verdict = _bound(arm, diff, look, sizes, weights, threshold, a_race, rho[2.0], alpha, "race",
                                 f"vs {lead}", span=2.0)
                if verdict is not None:
                    verdicts[arm] = verdict
    return verdicts


def _reached(arm: dict[str, np.ndarray], look: Look) -> bool:
    return all(len(arm.get(b, ())) >= n for b, n in look.counts.items())


def _canary(arm: str, diffs: dict[str, np.ndarray], look: Look, sizes: dict[str, int], max_loss: float,
            alpha: float) -> Verdict | None:
    for bench, x in sorted(diffs.items()):
        if not len(x) or not np.all(np.isin(x, (-1.0, 0.0, 1.0))):
            continue  # graded scores: the confidence sequences judge them
        test = _canary_test(int(np.sum(x < 0)), int(np.sum(x > 0)), len(x), max_loss, alpha)
        if test.worse:
            return Verdict(arm, "stop", look.label, look.index, "canary", bench, test.n, sizes[bench],
                           100 * test.delta, 100 * test.upper, -100 * max_loss, alpha, alpha * len(diffs), "exact")
    return None


@functools.lru_cache(maxsize=65536)
def _canary_test(lost: int, gained: int, n: int, max_loss: float, alpha: float):
    return canary_test(lost, gained, n, max_loss, alpha)


def _bound(arm, diffs, look, sizes, weights, threshold, alpha, rho, level, rule, label, span) -> Verdict | None:
    """The first target (bench by bench, then pooled) whose anytime-valid upper bound is below threshold;
    the differences lie in [-span, span]."""
    for bench, x in sorted(diffs.items()):
        if not len(x):
            continue
        if betting_log_capital(x, threshold, -span, span).max() < math.log(1 / alpha):
            continue  # the bound at this target is not below the threshold (the capital grows with the mean)
        upper = betting_upper(x, threshold, -span, span, alpha, looks=[len(x)])[0]
        if upper < threshold:
            return Verdict(arm, "stop", look.label, look.index, rule, label or bench, len(x), sizes[bench],
                           100 * float(np.mean(x)), 100 * upper, 100 * threshold, alpha, level, "anytime-valid")
    if len(diffs) > 1:
        pooled = pooled_upper(diffs, sizes, weights, alpha, rho, -span, span)
        if pooled.upper < threshold:
            return Verdict(arm, "stop", look.label, look.index, rule, label or "pooled", pooled.n, sum(sizes.values()),
                           100 * pooled.delta, 100 * pooled.upper, 100 * threshold, alpha, level, "anytime-valid")
    return None


def _pooled_estimate(diffs: dict[str, np.ndarray], sizes: dict[str, int], weights: dict[str, float]) -> float:
    total = sum(weights.values()) or 1.0
    return sum(weights[b] / total * (float(np.mean(x)) if len(x) else 0.0) for b, x in diffs.items())


def _rho(plan: list[Look], sizes: dict[str, int], weights: dict[str, float], alpha: float, span: float) -> float:
    """The pooled boundary's rho, tightest at the first look after the canary (where stopping saves most),
    for differences in [-span, span]."""
    fractional = [look for look in plan if look.label != CANARY] or plan
    total = sum(weights.values()) or 1.0
    variance = sum((weights[b] / total / sizes[b]) ** 2 * n * span**2 for b, n in fractional[0].counts.items()
                   if sizes[b])
    return mixture_rho(max(variance, 1e-12), alpha)
