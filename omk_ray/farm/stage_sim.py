"""Simulated grids for the stage rules (farm/stages.py): what they stop, when, how often wrongly, and
the samples they save, without an engine. The validity tests and benchmarks/bench_stages.py use it.

A problem's easiness z ~ N(0, 1) is shared by every variant; a variant answers it right when
z + e > c, e ~ N(0, noise^2) its own, c set so that its accuracy on the bench is the baseline's plus
its true difference. Shared easiness makes the baseline and the arms agree on most problems (with
noise 0.5, two equal variants disagree on about 16% of the problems of a 75% bench, 9% of a 90% one), as real
variants of one model do; a problem's order in the bench is random, as the representative order
makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from omk_ray.farm.stages import looks


@dataclass
class SimResult:
    arms: dict[str, float]  # arm -> its true difference (pp)
    stage: dict[str, np.ndarray]  # arm -> per grid, the look it stopped at (-1: ran to the end)
    samples: dict[str, np.ndarray]  # arm -> per grid, the samples it was given
    full: int  # samples of one arm's full evaluation (every bench)
    labels: list[str]  # the looks' labels

    def stop_rate(self, arm: str) -> float:
        return float(np.mean(self.stage[arm] >= 0))

    def stages(self, arm: str) -> dict[str, float]:
        """Look label (or "end") -> share of the grids in which the arm stopped there."""
        out = {label: float(np.mean(self.stage[arm] == i)) for i, label in enumerate(self.labels)}
        out["end"] = float(np.mean(self.stage[arm] < 0))
        return {k: v for k, v in out.items() if v}

    def saved(self, arms: list[str] | None = None, baseline: bool = True) -> float:
        """Share of the grid's samples (every arm, and the baseline's full run) that were never asked."""
        arms = arms or list(self.arms)
        done = sum(self.samples[a].mean() for a in arms) + (self.full if baseline else 0)
        return 1 - done / (self.full * (len(arms) + baseline))


def draw(rng: np.random.Generator, grids: int, size: int, accuracy: float, deltas_pp: list[float],
         noise: float = 0.5) -> np.ndarray:
    """Paired differences (arm - baseline) of `grids` simulated benches of `size` problems:
    shape (grids, arms, size)."""
    spread = np.sqrt(1 + noise**2)
    z = rng.standard_normal((grids, 1, size))
    base = z + noise * rng.standard_normal((grids, 1, size)) > -ndtri(accuracy) * spread
    targets = np.clip(accuracy + np.asarray(deltas_pp) / 100, 1e-6, 1 - 1e-6)
    cut = (-ndtri(targets) * spread)[None, :, None]
    arms = z + noise * rng.standard_normal((grids, len(deltas_pp), size)) > cut
    return arms.astype(np.int8) - base.astype(np.int8)


def simulate(arms: dict[str, float], benches: dict[str, tuple[int, float]], grids: int, seed: int = 0,
             noise: float = 0.5, **rules) -> SimResult:
    """`grids` grids of these arms (name -> true difference in pp, on every bench) on these benches
    (name -> (problems, the baseline's accuracy)), each judged by `stages.decide(**rules)` after
    every look; the samples each arm was given stop at the look it stopped at."""
    from omk_ray.farm.stages import CANARY_DOCS, STAGES, decide

    rng = np.random.default_rng(seed)
    names = list(arms)
    sizes = {b: n for b, (n, _) in benches.items()}
    diffs = {b: draw(rng, grids, n, acc, [arms[a] for a in names], noise) for b, (n, acc) in benches.items()}
    plan = looks(rules.get("stages", STAGES), sizes, rules.get("canary_docs", CANARY_DOCS))
    full = sum(sizes.values())
    stage = {a: np.full(grids, -1) for a in names}
    samples = {a: np.full(grids, full) for a in names}
    for g in range(grids):
        outcomes = {a: {b: diffs[b][g, i] for b in sizes} for i, a in enumerate(names)}
        for arm, verdict in decide(outcomes, sizes, **rules).items():
            if verdict.stopped:
                stage[arm][g] = verdict.look
                samples[arm][g] = sum(plan[verdict.look].counts.values())
    return SimResult(arms, stage, samples, full, [look.label for look in plan])
