"""Paired statistics of a variant against the baseline on the same problems."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy.special import bdtr  # binomial CDF; scipy.stats would cost a second of import

# Above this many distinct per-problem differences the bootstrap resamples indices instead of counts.
_MAX_DISTINCT_FOR_COUNTS = 256


@dataclass(frozen=True)
class PairedTest:
    delta: float  # mean(variant - baseline), in score units
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "mcnemar-exact" or "paired-bootstrap"


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test: a binomial test of the discordant pairs against 1/2."""
    discordant = lost + gained
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2.0 * bdtr(min(lost, gained), discordant, 0.5)))


def bootstrap_means(diffs: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `resamples` bootstrap resamples (with replacement) of the per-problem differences.

    Resampling n problems with replacement is the same as drawing how many times each distinct
    value is picked from a multinomial, which is far cheaper when differences take few values
    (pass/fail: -1, 0, 1).
    """
    n = len(diffs)
    values, counts = np.unique(diffs, return_counts=True)
    if len(values) <= _MAX_DISTINCT_FOR_COUNTS:
        picks = rng.multinomial(n, counts / n, size=resamples)
        return picks @ values / n
    out = np.empty(resamples)
    batch = max(1, 2_000_000 // n)
    for start in range(0, resamples, batch):
        stop = min(resamples, start + batch)
        out[start:stop] = diffs[rng.integers(0, n, size=(stop - start, n), dtype=np.int32)].mean(axis=1)
    return out


def paired_test(
    baseline: np.ndarray, variant: np.ndarray, binary: bool, resamples: int = 2000, seed: str = ""
) -> PairedTest:
    """Delta, 95% percentile-bootstrap CI of the paired difference, and a p-value.

    Pass/fail benches get the exact McNemar p-value; graded ones the two-sided bootstrap
    p-value of the centred resamples. `seed` names the comparison so results are reproducible
    whatever order comparisons run in.
    """
    diffs = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    if len(diffs) == 0:
        return PairedTest(np.nan, np.nan, np.nan, np.nan, "none")
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    means = bootstrap_means(diffs, resamples, rng)
    delta = float(diffs.mean())
    low, high = np.percentile(means, [2.5, 97.5])
    if binary:
        lost = int(np.sum(diffs < 0))
        gained = int(np.sum(diffs > 0))
        return PairedTest(delta, float(low), float(high), mcnemar_exact(lost, gained), "mcnemar-exact")
    extreme = np.sum(np.abs(means - delta) >= abs(delta) - 1e-12)
    return PairedTest(delta, float(low), float(high), float((extreme + 1) / (resamples + 1)), "paired-bootstrap")


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
