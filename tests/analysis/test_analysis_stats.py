"""Paired statistics: exact McNemar against scipy's binomial test, intervals that agree with their
tests, Holm over any family, and the minimum detectable difference against simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import bdtr
from scipy.stats import beta, binomtest, pearsonr

from omk_ray.analysis.stats import (
    bootstrap_interval, bootstrap_means, holm, holm_within, mcnemar_exact, mcnemar_interval, mcnemar_mde,
    mcnemar_power, normal_mde, paired_test, precision, repeat_spread,
)  # fmt: skip


def outcomes(lost: int, gained: int, n: int, both_right: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and variant pass/fail scores with these counts (the concordant rest split evenly)."""
    both_right = (n - lost - gained) // 2 if both_right is None else both_right
    both_wrong = n - lost - gained - both_right
    base = np.array([1] * both_right + [0] * both_wrong + [1] * lost + [0] * gained, dtype=float)
    var = np.array([1] * both_right + [0] * both_wrong + [0] * lost + [1] * gained, dtype=float)
    return base, var


def melded_by_simulation(lost: int, gained: int, n: int, draws: int = 400_000, level: float = 0.95) -> tuple[float, float]:
    """Fay & Lumbard's melded interval by its definition, with beta draws (exact2x2's Monte Carlo method):
    quantiles of T (2B - 1), T and B from the Clopper-Pearson confidence distributions, the heavier tail."""
    rng = np.random.default_rng(7)
    q = (1 - level) / 2
    m = lost + gained

    def draw(a, b):  # Beta(a, 0) is 1, Beta(0, b) is 0
        return np.ones(draws) if b == 0 else np.zeros(draws) if a == 0 else rng.beta(a, b, draws)

    t_low, t_high = draw(m, n - m + 1), draw(m + 1, n - m)
    b_low, b_high = draw(gained, m - gained + 1), draw(gained + 1, m - gained)
    low = min(np.quantile(t * (2 * b_low - 1), q) for t in (t_low, t_high))
    high = max(np.quantile(t * (2 * b_high - 1), 1 - q) for t in (t_low, t_high))
    return float(low), float(high)


@pytest.mark.parametrize("lost,gained", [(0, 0), (1, 0), (23, 15), (15, 23), (5, 5), (0, 12), (40, 3), (100, 80)])
def test_mcnemar_exact_equals_binomial_test_on_discordant_pairs(lost, gained):
    expected = 1.0 if lost + gained == 0 else binomtest(gained, lost + gained, 0.5).pvalue
    assert mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_paired_test_on_pass_fail_uses_mcnemar_and_the_melded_interval():
    # 198 problems: 122 both right, 38 both wrong, 23 lost, 15 gained (the seed's GPQA matrix)
    base = np.array([1] * 122 + [0] * 38 + [1] * 23 + [0] * 15, dtype=float)
    var = np.array([1] * 122 + [0] * 38 + [0] * 23 + [1] * 15, dtype=float)
    result = paired_test(base, var, binary=True, resamples=4000, seed="gpqa")
    assert (result.test, result.interval) == ("mcnemar-exact", "melded-exact")
    assert result.delta == pytest.approx(-8 / 198)
    assert result.p_value == pytest.approx(binomtest(15, 38, 0.5).pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx(melded_by_simulation(23, 15, 198), abs=0.002)
    # an exact interval is a little wider than the normal-theory one, never narrower
    se = np.sqrt((23 + 15) / 198 - (8 / 198) ** 2) / np.sqrt(198)
    assert result.delta - 1.96 * se - 0.01 < result.ci_low < result.delta - 1.96 * se
    assert result.delta + 1.96 * se < result.ci_high < result.delta + 1.96 * se + 0.01
    assert paired_test(base, var, True, 4000, seed="gpqa") == result  # reproducible


def test_bootstrap_of_counts_matches_bootstrap_of_indices():
    rng = np.random.default_rng(1)
    diffs = rng.choice([-1.0, 0.0, 0.0, 1.0], size=300)
    by_counts = bootstrap_means(diffs, 4000, np.random.default_rng(2))  # few distinct values: multinomial
    by_index = bootstrap_means(diffs + rng.normal(0, 1e-9, 300), 4000, np.random.default_rng(2))  # all distinct
    assert by_counts.mean() == pytest.approx(diffs.mean(), abs=0.005)
    assert by_counts.std() == pytest.approx(by_index.std(), rel=0.1)
    assert by_counts.std() == pytest.approx(diffs.std() / np.sqrt(300), rel=0.1)


def test_graded_scores_use_the_paired_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 400)
    shifted = paired_test(base, np.clip(base + 0.1, 0, 1), binary=False, seed="x")
    same = paired_test(base, base + rng.normal(0, 0.05, 400), binary=False, seed="x")
    assert shifted.test == "paired-bootstrap"
    assert shifted.p_value < 0.01 and shifted.ci_low > 0
    assert same.p_value > 0.05 and same.ci_low < 0 < same.ci_high


def test_holm_adjustment():
    # m = 4: sorted p 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, float("nan"), 0.04])  # an untested bench does not count
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


# -- 1. intervals that agree with their tests ---------------------------------------------------


def test_the_issues_examples_no_longer_contradict_their_test():
    # 5 lost, 0 gained of 100: p = 0.0625, so the interval must reach past 0 (the bootstrap gave [-10, -1])
    for lost, n, p in ((5, 100, 0.0625), (4, 50, 0.125)):
        result = paired_test(*outcomes(lost, 0, n), binary=True, seed="x")
        assert result.p_value == pytest.approx(p)
        assert result.ci_low < result.delta < 0 < result.ci_high
    # no gain: the lower bound is minus the exact upper bound of the discordant share, 5/100
    low, high = mcnemar_interval(5, 0, 100)
    assert low == pytest.approx(-binomtest(5, 100).proportion_ci(0.95, "exact").high, abs=1e-12)
    assert high == pytest.approx(melded_by_simulation(5, 0, 100)[1], abs=0.001)


@pytest.mark.parametrize("alpha,sizes", [(0.05, (6, 10, 19, 30, 55, 100, 198)), (0.10, (10, 30, 100))])
def test_interval_excludes_zero_exactly_when_the_exact_test_rejects(alpha, sizes):
    """On every small (lost, gained, n): the melded interval at 1 - alpha excludes 0 iff McNemar's p <= alpha."""
    cases = [(lost, gained, n) for n in sizes for lost in range(13) for gained in range(13) if lost + gained <= n]
    disagree, rejected = [], 0
    for lost, gained, n in cases:
        low, high = mcnemar_interval(lost, gained, n, alpha)
        rejects = mcnemar_exact(lost, gained) <= alpha
        rejected += rejects
        if (low > 0 or high < 0) != rejects or not low <= (gained - lost) / n <= high:
            disagree.append((lost, gained, n, low, high))
    assert not disagree
    assert 0.1 * len(cases) < rejected < 0.9 * len(cases)  # the grid has both kinds


def test_paired_test_rows_agree_on_a_grid_of_small_benches():
    """What the scoreboard reports: p and interval from one paired_test call agree in every row."""
    for n in (10, 30, 50):
        for lost in range(9):
            for gained in range(9):
                if lost + gained <= n:
                    r = paired_test(*outcomes(lost, gained, n), binary=True, seed=f"{lost}/{gained}/{n}")
                    assert (r.ci_low > 0 or r.ci_high < 0) == (r.p_value <= 0.05), (lost, gained, n, r)


@pytest.mark.parametrize("lost,gained,n", [(23, 15, 198), (3, 1, 10), (10, 2, 30), (2, 10, 30), (0, 0, 30),
                                           (40, 3, 1172), (20, 0, 20), (1, 0, 19), (7, 7, 20)])
def test_melded_interval_matches_its_definition(lost, gained, n):
    assert mcnemar_interval(lost, gained, n) == pytest.approx(melded_by_simulation(lost, gained, n), abs=0.002)


def test_melded_interval_edges_have_closed_forms():
    # no discordant pair: +-(the exact upper bound of a share never seen in n pairs)
    bound = beta.ppf(0.975, 1, 30)
    assert mcnemar_interval(0, 0, 30) == pytest.approx((-bound, bound), abs=1e-12)
    # every pair lost: nothing bounds the loss above -1
    assert mcnemar_interval(20, 0, 20)[0] == -1
    # every pair discordant, some of each: T is 1 and the bound is B's exact bound, rescaled
    assert mcnemar_interval(14, 6, 20)[0] == pytest.approx(2 * binomtest(6, 20).proportion_ci(0.95, "exact").low - 1)
    # swapping the sides mirrors the interval
    assert mcnemar_interval(3, 9, 40) == pytest.approx(tuple(-x for x in reversed(mcnemar_interval(9, 3, 40))))


def test_melded_interval_covers_the_true_difference():
    """Exact coverage on 20 pairs, every outcome enumerated: at least 95% where the bootstrap falls short."""
    n = 20
    results = {(lost, gained): mcnemar_interval(lost, gained, n) for lost in range(n + 1) for gained in range(n + 1 - lost)}
    for p_lost, p_gained in ((0.05, 0.05), (0.15, 0.05), (0.02, 0.10), (0.30, 0.25)):
        true = p_gained - p_lost
        covered = 0.0
        for (lost, gained), (low, high) in results.items():
            chance = math.comb(n, lost) * math.comb(n - lost, gained) * p_lost**lost * p_gained**gained * (
                1 - p_lost - p_gained) ** (n - lost - gained)
            covered += chance * (low <= true <= high)
        assert covered >= 0.95, (p_lost, p_gained, covered)


def test_bootstrap_interval_and_p_agree_exactly():
    """Graded scores: the percentile interval excludes 0 exactly when the p read off the same resamples is <= 0.05."""
    rng = np.random.default_rng(3)
    near_edge = 0
    for i in range(300):
        diffs = rng.normal(0, 1, 40) + rng.uniform(-0.7, 0.7)
        means = bootstrap_means(diffs, 500, np.random.default_rng(i))
        low, high, p = bootstrap_interval(means)
        assert (low > 0 or high < 0) == (p <= 0.05)
        assert low <= np.percentile(means, 2.5) + 1e-12 and high >= np.percentile(means, 97.5) - 1e-12
        near_edge += 0.02 < p < 0.1
    assert near_edge > 10
    result = paired_test(np.zeros(50), np.linspace(0, 0.2, 50), binary=False, seed="g")
    assert (result.test, result.interval) == ("paired-bootstrap", "bootstrap-percentile")
    assert result.p_value == pytest.approx(1 / 2000)  # every resample on one side: at least 1/B


# -- 2. Holm over a chosen family ---------------------------------------------------------------


def test_holm_within_families():
    # a grid of 2 variants x 3 benches
    p = [0.01, 0.04, 0.30, 0.005, 0.02, 0.9]
    variants = ["a", "a", "a", "b", "b", "b"]
    # per variant: a -> 0.03, 0.08, 0.30; b -> 0.015, 0.04, 0.9
    assert holm_within(p, variants) == pytest.approx([0.03, 0.08, 0.30, 0.015, 0.04, 0.9])
    # the grid: sorted 0.005, 0.01, 0.02, 0.04, 0.30, 0.9 -> x6, x5, x4, x3, x2, x1, then monotone
    assert holm_within(p, ["grid"] * 6) == pytest.approx([0.05, 0.12, 0.60, 0.03, 0.08, 0.9])
    assert holm_within(p, ["grid"] * 6) == pytest.approx(holm(p))


# -- 3. what a bench can tell apart --------------------------------------------------------------


def test_se_and_correlation_are_millers_paired_quantities():
    rng = np.random.default_rng(5)
    base = (rng.random(300) < 0.7).astype(float)
    var = np.where(rng.random(300) < 0.85, base, 1 - base)
    got = precision(base, var, binary=True)
    cov = np.cov(base, var, ddof=1)
    assert got.se == pytest.approx(math.sqrt((cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / 300))
    assert got.correlation == pytest.approx(pearsonr(base, var).statistic)
    assert math.isnan(precision(np.ones(10), var[:10], True).correlation)  # a constant side has no correlation


def simulated_mcnemar_power(delta: float, rate: float, n: int, trials: int, rng) -> float:
    counts = rng.multinomial(n, [(rate - delta) / 2, (rate + delta) / 2, 1 - rate], size=trials)
    lost, gained = counts[:, 0], counts[:, 1]
    p = np.where(lost + gained == 0, 1.0, np.minimum(1, 2 * bdtr(np.minimum(lost, gained), lost + gained, 0.5)))
    return float(np.mean(p <= 0.05))


@pytest.mark.parametrize("discordant,n", [(38, 198), (8, 30), (12, 100), (43, 1172)])
def test_mcnemar_mde_matches_a_simulation_of_the_paired_design(discordant, n):
    rng = np.random.default_rng(discordant)
    rate = discordant / n
    mde = mcnemar_mde(discordant, n)
    assert 0 < mde <= rate
    assert mcnemar_power(mde, rate, n) == pytest.approx(0.80, abs=1e-6)
    assert simulated_mcnemar_power(mde, rate, n, 40_000, rng) == pytest.approx(0.80, abs=0.012)
    assert simulated_mcnemar_power(0.75 * mde, rate, n, 40_000, rng) < 0.74  # and it is the smallest such


def test_mcnemar_mde_is_infinite_when_no_difference_is_detectable():
    # 1 discordant pair in 19 (the card's Biology row): even all of them one way is rarely significant
    assert mcnemar_mde(1, 19) == math.inf
    assert simulated_mcnemar_power(1 / 19, 1 / 19, 19, 20_000, np.random.default_rng(0)) < 0.8
    assert mcnemar_mde(0, 500) == math.inf


def test_graded_mde_matches_a_simulation_of_the_bootstrap_test():
    rng = np.random.default_rng(11)
    n, sd = 100, 0.3
    mde = normal_mde(sd / math.sqrt(n))
    rejected = [paired_test(np.zeros(n), rng.normal(mde, sd, n), binary=False, resamples=300, seed=str(i)).p_value <= 0.05
                for i in range(400)]
    assert np.mean(rejected) == pytest.approx(0.80, abs=0.06)


def test_detectable_marks():
    arc = paired_test(*outcomes(40, 3, 1172), binary=True, seed="arc")  # -3.2pp on 1,172 problems
    gpqa = paired_test(*outcomes(23, 15, 198), binary=True, seed="gpqa")  # -4.0pp on 198
    assert arc.precision.mde < abs(arc.delta) and arc.p_value < 0.001
    assert gpqa.precision.mde == pytest.approx(mcnemar_mde(38, 198)) and gpqa.precision.mde > abs(gpqa.delta)


# -- 4. repeats ----------------------------------------------------------------------------------


def test_repeat_spread():
    # 3 problems: baseline 4 repeats with variances 0, 0.25, 0.5; variant 2 repeats, variances 0.5, 0, 0
    spread = repeat_spread(np.array([0, 0.25, 0.5]), np.array([4, 4, 4]), np.array([0.5, 0, 0]), np.array([2, 2, 2]))
    assert (spread.repeats, spread.baseline_var, spread.variant_var) == (4, pytest.approx(0.25), pytest.approx(1 / 6))
    assert spread.se == pytest.approx(math.sqrt(0.75 / 4 + 0.5 / 2) / 3)
    once = repeat_spread(np.full(3, np.nan), np.ones(3), np.full(3, np.nan), np.ones(3))
    assert once.repeats == 1 and math.isnan(once.se) and math.isnan(once.baseline_var)
