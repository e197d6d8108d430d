"""The canary's exact test against the baseline and the anytime-valid bounds of the stages: their error
rates measured on simulated data (numpy, no engine), their numbers checked against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from omk_ray.analysis.stats import (
    betting_log_capital, betting_upper, canary_power, canary_test, mcnemar_exact, mcnemar_interval, mixture_radius,
    mixture_rho, pooled_upper,
)  # fmt: skip


def at_most(stopped: int, trials: int, nominal: float) -> tuple[float, float, float]:
    """The measured rate and its 95% Clopper-Pearson interval; the interval must reach down to the nominal rate."""
    ci = binomtest(stopped, trials).proportion_ci(0.95, method="exact")
    print(f"measured {stopped}/{trials} = {stopped / trials:.4f} [{ci.low:.4f}, {ci.high:.4f}], nominal <= {nominal}")
    assert ci.low <= nominal
    return stopped / trials, ci.low, ci.high


@pytest.mark.parametrize("lost,gained,n", [(11, 0, 24), (5, 0, 8), (9, 3, 40), (0, 0, 10), (20, 1, 24)])
def test_the_canary_bound_is_one_side_of_the_melded_interval(lost, gained, n):
    test = canary_test(lost, gained, n, max_loss=0.2, alpha=0.05)
    assert test.upper == pytest.approx(mcnemar_interval(lost, gained, n, alpha=0.10)[1], abs=1e-9)
    assert test.delta == pytest.approx((gained - lost) / n)
    assert test.p_value == mcnemar_exact(lost, gained)
    assert test.worse == (test.upper < -0.2)


def test_the_canary_catches_the_seeds_collapse_on_24_problems_and_no_more_than_alpha_within_its_margin():
    # the seed: HumanEval 24% against 93%; nearly every problem the arm solves, the baseline solves too
    assert canary_power(0.70, 0.01, 24, 0.20, 0.05) >= 0.97
    assert canary_power(0.70, 0.01, 8, 0.20, 0.05) < 0.30  # 8 problems are too few
    # exactly at the margin, whatever the discordance: at most alpha (exact sums, not simulation)
    for discordant in (0.2, 0.3, 0.5, 0.8, 1.0):
        lost, gained = (discordant + 0.2) / 2, (discordant - 0.2) / 2
        assert canary_power(lost, gained, 24, 0.20, 0.05) <= 0.05
    # the exact sum agrees with drawing the canary's problems
    rng = np.random.default_rng(3)
    draws, times = np.unique(rng.multinomial(24, [0.5, 0.05, 0.45], size=4000), axis=0, return_counts=True)
    hits = sum(k * canary_test(int(lo), int(ga), 24, 0.2, 0.05).worse for (lo, ga, _), k in zip(draws, times))
    assert abs(hits / 4000 - canary_power(0.5, 0.05, 24, 0.2, 0.05)) < 0.03


def paired(rng, sims: int, n: int, lost: float, gained: float) -> np.ndarray:
    u = rng.random((sims, n))
    return np.where(u < lost, -1.0, np.where(u < lost + gained, 1.0, 0.0))


def test_the_betting_sequence_crosses_at_most_alpha_of_the_time_anywhere_in_the_sequence():
    rng = np.random.default_rng(11)
    alpha = 0.05
    for lost, gained in ((0.10, 0.05), (0.30, 0.25), (0.05, 0.0)):  # true mean exactly at the target
        target = gained - lost
        x = paired(rng, 4000, 400, lost, gained)
        crossed = betting_log_capital(x, target, -1, 1).max(axis=1) >= math.log(1 / alpha)
        at_most(int(crossed.sum()), len(crossed), alpha)
    # and it does cross when the mean is well below the target
    x = paired(rng, 500, 160, 0.35, 0.05)
    assert np.mean(betting_log_capital(x, -0.05, -1, 1).max(axis=1) >= math.log(1 / alpha)) > 0.95


def test_the_betting_bound_is_below_the_target_exactly_when_the_capital_crossed():
    rng = np.random.default_rng(5)
    for lost in (0.1, 0.2, 0.3, 0.5):
        x = paired(rng, 1, 120, lost, 0.03)[0]
        looks = [24, 60, 120]
        bounds = betting_upper(x, -0.05, -1, 1, 0.01, looks=looks)
        capital = betting_log_capital(x, -0.05, -1, 1)
        for n, upper in zip(looks, bounds):
            assert (upper < -0.05) == (capital[:n].max() >= math.log(100)), (lost, n, upper)
        assert bounds == sorted(bounds, reverse=True)  # intersected over the looks: never wider later
    everything_lost = betting_upper(-np.ones(200), -0.05, -1, 1, 0.05, looks=[200])[0]
    assert -1 < everything_lost < -0.9


def test_the_pooled_bound_covers_the_weighted_difference_at_every_look():
    rng = np.random.default_rng(2)
    sizes, weights = {"a": 300, "b": 60, "c": 30}, {"a": 1.0, "b": 1.0, "c": 1.0}
    truth = {"a": (0.10, 0.12), "b": (0.40, 0.10), "c": (0.05, 0.05)}  # lost, gained per bench
    pooled = np.mean([g - lo for lo, g in truth.values()])
    alpha = 0.05
    rho = mixture_rho(sum(0.25 * n / (3 * n) ** 2 for n in sizes.values()), alpha)
    sims, missed = 2000, 0
    data = {b: paired(rng, sims, n, *truth[b]) for b, n in sizes.items()}
    for s in range(sims):
        for fraction in (0.25, 0.5, 1.0):
            seen = {b: data[b][s, : math.ceil(fraction * n)] for b, n in sizes.items()}
            if pooled_upper(seen, sizes, weights, alpha, rho).upper < pooled:
                missed += 1
                break
    at_most(missed, sims, alpha)


def test_rho_makes_the_mixture_boundary_tightest_where_asked():
    v, alpha = 0.01, 0.01
    rho = mixture_rho(v, alpha)
    assert mixture_radius(v, rho, alpha) < min(mixture_radius(v, rho * 1.3, alpha), mixture_radius(v, rho / 1.3, alpha))
