"""Paired statistics: exact McNemar against scipy's binomial test, bootstrap CIs, Holm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from omk_ray.analysis.stats import bootstrap_means, holm, mcnemar_exact, paired_test


@pytest.mark.parametrize("lost,gained", [(0, 0), (1, 0), (23, 15), (15, 23), (5, 5), (0, 12), (40, 3), (100, 80)])
def test_mcnemar_exact_equals_binomial_test_on_discordant_pairs(lost, gained):
    expected = 1.0 if lost + gained == 0 else binomtest(gained, lost + gained, 0.5).pvalue
    assert mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_paired_test_on_pass_fail_uses_mcnemar_and_a_bootstrap_ci():
    # 198 problems: 122 both right, 38 both wrong, 23 lost, 15 gained (the seed's GPQA matrix)
    base = np.array([1] * 122 + [0] * 38 + [1] * 23 + [0] * 15, dtype=float)
    var = np.array([1] * 122 + [0] * 38 + [0] * 23 + [1] * 15, dtype=float)
    result = paired_test(base, var, binary=True, resamples=4000, seed="gpqa")
    assert result.test == "mcnemar-exact"
    assert result.delta == pytest.approx(-8 / 198)
    assert result.p_value == pytest.approx(binomtest(15, 38, 0.5).pvalue)
    assert result.ci_low < result.delta < result.ci_high
    # the normal-theory CI of a paired proportion difference is a good check on the bootstrap
    se = np.sqrt((23 + 15) / 198 - (8 / 198) ** 2) / np.sqrt(198)
    assert result.ci_low == pytest.approx(result.delta - 1.96 * se, abs=0.01)
    assert result.ci_high == pytest.approx(result.delta + 1.96 * se, abs=0.01)
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
