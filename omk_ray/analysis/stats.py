"""Paired statistics of a variant against the baseline on the same problems (pure functions).

Every interval agrees with the p-value beside it: it excludes 0 exactly when the test rejects
at the same level. Pass/fail benches get the exact McNemar test and the melded exact interval
of the paired difference (Fay & Lumbard 2021), graded ones the paired bootstrap, whose p-value
is read off the same resamples as its percentile interval. Beside them, what a bench can tell
apart: the standard error of the paired difference, the correlation of the two variants'
per-problem scores (Miller 2024, "Adding Error Bars to Evals") and the minimum detectable
difference at 80% power given n and the observed discordance.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from scipy.special import bdtr, bdtrc, betainc, betaincinv, gammaln, ndtri, xlog1py, xlogy

# scipy.stats and scipy.optimize would cost a second or more of import each: the binomial and
# beta functions come from scipy.special, and the monotone roots below are found by false position.

ALPHA = 0.05  # two-sided level of every test; every interval is at 1 - ALPHA
POWER = 0.80  # power at which the minimum detectable difference is read

# Above this many distinct per-problem differences the bootstrap resamples indices instead of counts.
_MAX_DISTINCT_FOR_COUNTS = 256
_NODES = 512  # Simpson intervals over the discordant share's beta distribution (melded interval)
_Z_SUM = float(ndtri(1 - ALPHA / 2) + ndtri(POWER))
_SIMPSON = np.r_[1, np.tile([4, 2], _NODES // 2)[:-1], 1].astype(float)


@dataclass(frozen=True)
class Precision:
    """What a paired comparison can resolve, whatever its outcome."""

    se: float  # standard error of the paired difference
    correlation: float  # Pearson correlation of the two variants' per-problem scores
    mde: float  # smallest |difference| detected with POWER at ALPHA; inf: none is


@dataclass(frozen=True)
class PairedTest:
    delta: float  # mean(variant - baseline), in score units
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "mcnemar-exact" or "paired-bootstrap"
    interval: str  # "melded-exact" or "bootstrap-percentile"
    precision: Precision


@dataclass(frozen=True)
class RepeatSpread:
    """How much a problem's score moves between repeats (sampled cohorts)."""

    repeats: int  # most repeats of one problem, either side
    baseline_var: float  # mean over problems of the variance of a problem's score across its repeats
    variant_var: float
    se: float  # the part of the paired difference's SE that is repeat noise


# -- pass/fail: exact McNemar, its interval, its power ----------------------------------------


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test: a binomial test of the discordant pairs against 1/2."""
    discordant = lost + gained
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2.0 * bdtr(min(lost, gained), discordant, 0.5)))


def mcnemar_interval(lost: int, gained: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact (1 - alpha) interval of (gained - lost) / n that excludes 0 exactly when
    `mcnemar_exact(lost, gained) <= alpha`.

    The melded interval of Fay & Lumbard (2021), the method of R's exact2x2::mcnemarExactDP:
    the difference is T (2 B - 1), T the discordant share and B the share of discordant pairs
    the variant won. Each bound is a quantile of that product with T and B drawn from the beta
    distributions of their exact (Clopper-Pearson) bounds, so it accounts for the uncertainty
    of the discordant share too; its sign is the sign of B's exact bound against 1/2, which is
    the McNemar test.
    """
    discordant = lost + gained
    low = _melded_lower(gained, discordant, n, alpha / 2)
    high = -_melded_lower(lost, discordant, n, alpha / 2)
    return low, high


def _melded_lower(x: int, m: int, n: int, q: float) -> float:
    """Lower bound of T (2 B - 1) given x of the m discordant pairs won, m of n pairs discordant.

    Solves P(T (2 B - 1) <= d) = q with B ~ Beta(x, m - x + 1), the lower confidence
    distribution of the winning share, and T the discordant share's confidence distribution
    that makes the tail heavier: the upper one, Beta(m + 1, n - m), below 0; the lower one,
    Beta(m, n - m + 1), above.
    """
    if x == 0:  # B is 0: the bound is minus T's upper exact bound
        return -1.0 if m == n else -float(betaincinv(m + 1, n - m, 1 - q))
    positive = float(bdtrc(x - 1, m, 0.5)) <= q  # P(B <= 1/2) = P(Binomial(m, 1/2) >= x)
    if not positive and m == n:  # T is 1
        return 2 * float(betaincinv(x, m - x + 1, q)) - 1
    t, w = _beta_nodes(m, n - m + 1) if positive else _beta_nodes(m + 1, n - m)

    def tail(d: float) -> float:
        return float(w @ betainc(x, m - x + 1, np.clip(0.5 + d / (2 * t), 0.0, 1.0)))

    reach = float(t[-1])  # |T (2 B - 1)| <= T
    estimate = (2 * x - m) / n
    se = math.sqrt(max(m / n - estimate**2, 1 / n) / n)
    guess = estimate - float(ndtri(1 - q)) * se  # the normal approximation's bound
    return _root(tail, q, 0.0 if positive else -reach, reach if positive else 0.0, guess, se / 2)


def _beta_nodes(a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of Simpson's rule against Beta(a, b), a, b >= 1 (a bounded density),
    over its central 1 - 1e-12, the weights normalised to sum to 1."""
    low, high = betaincinv(a, b, [1e-12, 1 - 1e-12])
    t = np.linspace(low, high, _NODES + 1)
    log_density = xlogy(a - 1, t) + xlog1py(b - 1, -t)
    w = np.exp(log_density - log_density.max()) * _SIMPSON
    return t, w / w.sum()


def _root(f, target: float, low: float, high: float, guess: float, step: float, tol: float = 1e-9) -> float:
    """The point of [low, high] where the increasing function f crosses target (f within tol of it;
    `low` or `high` if f does not cross there).

    Walks from `guess` in doubling steps until the crossing is bracketed, then narrows the
    bracket by false position with the Illinois modification (superlinear, and never leaves it).
    """
    a = min(max(guess, low), high)
    f_a = f(a) - target
    direction = 1.0 if f_a < 0 else -1.0
    while True:
        b = min(max(a + direction * step, low), high)
        f_b = f(b) - target
        if (f_b < 0) != (f_a < 0):
            break
        if b in (low, high):
            return b
        a, f_a, step = b, f_b, 2 * step
    (low, f_low), (high, f_high) = sorted([(a, f_a), (b, f_b)])
    kept, mid = 0, a  # kept: which end stayed last time (-1 low, +1 high); halve its value if it stays twice
    for _ in range(200):
        mid = (low * f_high - high * f_low) / (f_high - f_low)
        f_mid = f(mid) - target
        if f_mid < 0:
            low, f_low = mid, f_mid
            f_high = f_high / 2 if kept == 1 else f_high
            kept = 1
        else:
            high, f_high = mid, f_mid
            f_low = f_low / 2 if kept == -1 else f_low
            kept = -1
        if abs(f_mid) < tol or high - low < tol:
            break
    return mid


def mcnemar_power(delta: float, discordant_rate: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the exact McNemar test on n pairs when a share `discordant_rate` of them is
    discordant and the variant's true difference is `delta` (|delta| <= discordant_rate)."""
    return float(_power_curve(discordant_rate, n, alpha)(abs(delta)))


def mcnemar_mde(discordant: int, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |difference| the exact McNemar test detects with `power` on n pairs at the
    observed discordant share: inf when even every discordant pair going one way would not."""
    if discordant == 0 or n == 0:
        return math.inf
    rate = discordant / n
    curve = _power_curve(rate, n, alpha)
    if curve(rate) < power:
        return math.inf
    guess = _Z_SUM * math.sqrt(rate / (n + _Z_SUM**2))  # the normal approximation (Connor 1987, solved for delta)
    return _root(curve, power, 0.0, rate, guess, guess / 8)


def _power_curve(rate: float, n: int, alpha: float):
    """delta -> power: the number of discordant pairs M ~ Binomial(n, rate); of those the variant
    wins X ~ Binomial(M, 1/2 + delta / (2 rate)); the test rejects when X <= c(M) or X >= M - c(M)."""
    m = np.arange(1, n + 1, dtype=float)
    weight = np.exp(gammaln(n + 1) - gammaln(m + 1) - gammaln(n - m + 1) + xlogy(m, rate) + xlog1py(n - m, -rate))
    m, weight = m[weight > 1e-15], weight[weight > 1e-15]
    c = _critical(m, alpha)
    m, weight, c = m[c >= 0], weight[c >= 0], c[c >= 0]

    def curve(delta: float) -> float:
        theta = min(1.0, 0.5 + delta / (2 * rate))
        # P(X <= c) + P(X >= M - c), as regularized incomplete beta functions
        return float(np.sum(weight * (betainc(m - c, c + 1, 1 - theta) + betainc(m - c, c + 1, theta))))

    return curve


def _critical(m: np.ndarray, alpha: float) -> np.ndarray:
    """Per number of discordant pairs, the largest count c with 2 P(Binomial(m, 1/2) <= c) <= alpha; -1 if none."""

    def rejects(k: np.ndarray) -> np.ndarray:
        return (k >= 0) & (2 * betainc(np.maximum(m - k, 1.0), np.maximum(k + 1, 1.0), 0.5) <= alpha)

    c = np.maximum(np.floor(m / 2 - ndtri(1 - alpha / 2) * np.sqrt(m) / 2), -1)  # the normal quantile, then exact steps
    while np.any(high := (c >= 0) & ~rejects(c)):
        c[high] -= 1
    while np.any(low := rejects(c + 1)):
        c[low] += 1
    return c


# -- graded: the paired bootstrap ---------------------------------------------------------------


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


def bootstrap_interval(means: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, float]:
    """Percentile interval and p-value of the same resamples, so that the interval excludes 0
    exactly when p <= alpha: the bounds are the k-th smallest and k-th largest mean,
    k = floor(alpha B / 2) + 1, and p is twice the share of resamples on the far side of 0
    (at least 1/B)."""
    resamples = len(means)
    ordered = np.sort(means)
    k = int(math.floor(alpha * resamples / 2)) + 1
    far = min(int(np.sum(means <= 0)), int(np.sum(means >= 0)))
    p = min(1.0, max(2 * far, 1) / resamples)
    return float(ordered[k - 1]), float(ordered[resamples - k]), p


# -- what a comparison can resolve ------------------------------------------------------------


def normal_mde(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """(z_{1 - alpha/2} + z_power) x SE: the difference a test at `alpha` detects with `power`."""
    return float((ndtri(1 - alpha / 2) + ndtri(power)) * se)


def precision(baseline: np.ndarray, variant: np.ndarray, binary: bool) -> Precision:
    """SE of the paired difference, correlation of the two sides, and the minimum detectable
    difference: the exact McNemar power at the observed discordance for pass/fail scores, the
    normal approximation on the observed SE for graded ones."""
    base, var = np.asarray(baseline, dtype=float), np.asarray(variant, dtype=float)
    n = len(base)
    diffs = var - base
    se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if binary:
        mde = mcnemar_mde(int(np.sum(diffs != 0)), n)
    else:
        mde = normal_mde(se) if n > 1 else math.inf
    return Precision(se, correlation(base, var), mde)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (nothing to correlate)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def is_detectable(delta: float, mde: float) -> bool:
    """A non-zero difference at least as large as the minimum detectable one."""
    return bool(delta != 0 and abs(delta) >= mde)


def repeat_spread(base_var: np.ndarray, base_k: np.ndarray, var_var: np.ndarray, var_k: np.ndarray) -> RepeatSpread:
    """From each problem's across-repeat variance (NaN for one repeat) and repeat count, per side.

    The SE part is sqrt(sum_i (s2_b,i / k_b,i + s2_v,i / k_v,i)) / n: what the paired difference
    would still move if the same problems were run again.
    """
    sides = [(np.asarray(v, dtype=float), np.asarray(k, dtype=float)) for v, k in ((base_var, base_k), (var_var, var_k))]
    repeats = int(max((k.max(initial=0) for _, k in sides), default=0))
    if repeats < 2:
        return RepeatSpread(max(repeats, 1), math.nan, math.nan, math.nan)
    means = [float(np.nanmean(v[k > 1])) if np.any(k > 1) else math.nan for v, k in sides]
    noise = sum(np.nansum(np.where(k > 1, v / np.maximum(k, 1), 0.0)) for v, k in sides)
    return RepeatSpread(repeats, means[0], means[1], float(math.sqrt(noise) / len(sides[0][1])))


# -- one comparison, and the family correction -------------------------------------------------


def paired_test(
    baseline: np.ndarray, variant: np.ndarray, binary: bool, resamples: int = 2000, seed: str = ""
) -> PairedTest:
    """Delta, its 95% interval and p-value, and what the comparison can resolve.

    Pass/fail: exact McNemar and the melded exact interval. Graded: the paired bootstrap over
    problems, its percentile interval and p-value from the same resamples. `seed` names the
    comparison so results are reproducible whatever order comparisons run in.
    """
    base, var = np.asarray(baseline, dtype=float), np.asarray(variant, dtype=float)
    diffs = var - base
    n = len(diffs)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, "none", "none", Precision(math.nan, math.nan, math.inf))
    delta = float(diffs.mean())
    fit = precision(base, var, binary)
    if binary:
        lost, gained = int(np.sum(diffs < 0)), int(np.sum(diffs > 0))
        low, high = mcnemar_interval(lost, gained, n)
        return PairedTest(delta, low, high, mcnemar_exact(lost, gained), "mcnemar-exact", "melded-exact", fit)
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    low, high, p = bootstrap_interval(bootstrap_means(diffs, resamples, rng))
    return PairedTest(delta, low, high, p, "paired-bootstrap", "bootstrap-percentile", fit)


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


def holm_within(p_values: list[float], families: list) -> list[float]:
    """Holm within each family: the p-values that share a family label are corrected together."""
    out = [math.nan] * len(p_values)
    for family in dict.fromkeys(families):
        members = [i for i, f in enumerate(families) if f == family]
        for i, adjusted in zip(members, holm([p_values[i] for i in members])):
            out[i] = adjusted
    return out


# -- the canary against the baseline: an exact one-sided bound of the paired loss -------------------


@dataclass(frozen=True)
class CanaryTest:
    """The canary's comparison of an arm with the baseline on the same canary problems (pass/fail)."""

    n: int
    lost: int  # the baseline right, the arm wrong
    gained: int
    delta: float  # (gained - lost) / n
    upper: float  # exact one-sided (1 - alpha) upper bound of the paired difference (melded, Fay & Lumbard 2021)
    p_value: float  # two-sided exact McNemar
    alpha: float
    max_loss: float  # the margin, in score units
    worse: bool  # upper < -max_loss: the arm loses more than the margin, at level alpha


def canary_test(lost: int, gained: int, n: int, max_loss: float, alpha: float) -> CanaryTest:
    """Is the arm worse than the baseline by more than `max_loss` (score units) on the canary's n
    paired problems? The one-sided (1 - alpha) upper end of the melded exact interval of the paired
    difference (the interval `mcnemar_interval` reports, one side at `alpha`) must lie below
    -max_loss: an arm whose true difference is -max_loss or better is called worse with
    probability at most alpha, whatever its discordance."""
    discordant = lost + gained
    upper = -_melded_lower(lost, discordant, n, alpha) if n else math.inf
    delta = (gained - lost) / n if n else math.nan
    return CanaryTest(n, lost, gained, delta, float(upper), mcnemar_exact(lost, gained), alpha, max_loss,
                      bool(upper < -max_loss))


def canary_power(p_lost: float, p_gained: float, n: int, max_loss: float, alpha: float) -> float:
    """Probability that `canary_test` calls an arm worse on n problems drawn at random, when a share
    p_lost of problems is lost and p_gained gained (the true difference is p_gained - p_lost): the
    exact sum over the trinomial outcomes."""
    lost = np.arange(n + 1)[:, None]
    gained = np.arange(n + 1)[None, :]
    valid = lost + gained <= n
    rest = max(1.0 - p_lost - p_gained, 0.0)
    log_p = (gammaln(n + 1) - gammaln(lost + 1) - gammaln(gained + 1) - gammaln(np.maximum(n - lost - gained, 0) + 1)
             + xlogy(lost, p_lost) + xlogy(gained, p_gained) + xlogy(np.maximum(n - lost - gained, 0), rest))
    prob = np.where(valid, np.exp(np.where(valid, log_p, -np.inf)), 0.0)
    total = 0.0
    for g in range(n + 1):  # the bound falls as lost grows: per gained count, find the first lost that is worse
        for l_ in range(n - g + 1):
            if prob[l_:, g].sum() < 1e-12:
                break
            if canary_test(l_, g, n, max_loss, alpha).worse:
                total += float(prob[l_:, g].sum())
                break
    return total


# -- anytime-valid confidence sequences of a paired difference ---------------------------------------
#
# Stages look at an arm again and again as its samples arrive; a fixed-n interval looked at repeatedly
# stops far more often than its level says. A confidence sequence holds at every sample size at once
# (Ville's inequality on a nonnegative supermartingale), so looking after every stage costs nothing.


BET_CAP = 0.75  # the largest bet, as a share of the largest safe one (Waudby-Smith & Ramdas 2023: 1/2 or 3/4)


def _bets(y: np.ndarray, m0: float) -> np.ndarray:
    """The predictable bets on the rescaled values y (last axis in order) against a mean below m0."""
    t = np.arange(1, y.shape[-1] + 1, dtype=float)
    first = np.ones(y.shape[:-1] + (1,))
    mean_after = (0.5 + np.cumsum(y, axis=-1)) / (t + 1)  # regularised running mean after y_1 .. y_t
    mean_before = np.concatenate([0.5 * first, mean_after[..., :-1]], axis=-1)
    var_after = (0.25 + np.cumsum((y - mean_before) ** 2, axis=-1)) / (t + 1)
    var_before = np.concatenate([0.25 * first, var_after[..., :-1]], axis=-1)
    gap = m0 - mean_before
    return np.clip(gap / (var_before + gap**2), 0.0, BET_CAP / (1 - m0))


def betting_log_capital(x: np.ndarray, target: float, low: float, high: float) -> np.ndarray:
    """The running log capital of betting that the mean of x (values in [low, high], in order along
    the last axis; leading axes are independent sequences) is below `target`.

    Waudby-Smith & Ramdas (2023), "Estimating means of bounded random variables by betting", JRSS-B
    86(1): with y = (x - low) / (high - low) and m = (target - low) / (high - low), the capital
    K_t(m) = prod_{i <= t} (1 + lambda_i (m - y_i)) is a nonnegative supermartingale under any mean
    >= m, so by Ville's inequality it ever reaches 1/alpha with probability at most alpha. The bets
    lambda_i are predictable (from y_1 .. y_{i-1} only): the approximate growth-rate-optimal bet
    (their aGRAPA), (m - mu_hat) / (sigma2_hat + (m - mu_hat)^2) from the running mean and variance
    (regularised as in their paper: mean 1/2 and variance 1/4 before any data), clipped to
    [0, BET_CAP / (1 - m)].
    """
    y = (np.asarray(x, dtype=float) - low) / (high - low)
    m = (target - low) / (high - low)
    return np.cumsum(np.log1p(_bets(y, m) * (m - y)), axis=-1)


def betting_upper(x: np.ndarray, target: float, low: float, high: float, alpha: float,
                  looks: list[int] | None = None) -> list[float]:
    """The one-sided (1 - alpha) anytime-valid upper confidence bound of the mean of x after each of
    `looks` (counts of x seen; default every count), intersected over every earlier count.

    The bets are those of `betting_log_capital`, tuned at `target`; a mean m is rejected once the
    capital K(m) with the same bets (capped at BET_CAP / (1 - m) where that is smaller, so it stays
    nonnegative) has reached 1/alpha. At and above `target` the bets are the same and K grows with
    m, so the bound is below `target` exactly when `betting_log_capital` has reached log(1/alpha).
    The bound is the largest mean not rejected, to 1e-6 (a grid, then bisection above its last
    unrejected point).
    """
    x = np.asarray(x, dtype=float)
    looks = looks or list(range(1, len(x) + 1))
    y = (x - low) / (high - low)
    m0 = (target - low) / (high - low)
    bets = _bets(y, m0)
    threshold = math.log(1 / alpha)
    out = []
    for n in looks:
        def rejected(m: np.ndarray, n=n) -> np.ndarray:
            bet = np.minimum(bets[None, :n], BET_CAP / (1 - m[:, None]))
            return np.cumsum(np.log1p(bet * (m[:, None] - y[None, :n])), axis=1).max(axis=1, initial=-1.0) >= threshold

        grid = np.linspace(0.0, 1.0 - 1e-9, 401)
        kept = np.flatnonzero(~rejected(grid))
        if n <= 0 or not len(kept) or kept[-1] == len(grid) - 1:
            out.append(high if n <= 0 or len(kept) else low)
            continue
        lo_m, hi_m = grid[kept[-1]], grid[kept[-1] + 1]
        while hi_m - lo_m > 1e-6:
            mid = (lo_m + hi_m) / 2
            lo_m, hi_m = (lo_m, mid) if rejected(np.array([mid]))[0] else (mid, hi_m)
        out.append(float(low + hi_m * (high - low)))
    return out


def mixture_radius(variance: np.ndarray | float, rho: float, alpha: float) -> np.ndarray:
    """The normal-mixture boundary of a 1-sub-Gaussian sum with variance process V (Robbins; Howard,
    Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence
    sequences", Ann. Statist. 49(2), eq. (14)): |S_t| < sqrt((V_t + rho) log((V_t + rho) / (rho alpha^2)))
    for every t at once with probability at least 1 - alpha (each side therefore at level alpha too).
    `rho` sets the V where it is tightest (`mixture_rho`)."""
    v = np.asarray(variance, dtype=float) + rho
    return np.sqrt(v * np.log(v / (rho * alpha**2)))


def mixture_rho(variance: float, alpha: float) -> float:
    """The rho that makes the normal-mixture boundary tightest at V = `variance` (Howard et al. 2021,
    eq. (15)): variance / (2 log(1/alpha) + log(1 + 2 log(1/alpha)))."""
    two_log = 2 * math.log(1 / alpha)
    return variance / (two_log + math.log1p(two_log))


@dataclass(frozen=True)
class PooledBound:
    """A pooled one-sided anytime-valid bound of sum_b w_b Delta_b (weights summing to 1)."""

    delta: float  # the weighted estimate at this look
    upper: float
    n: int  # paired problems seen, over every bench


def pooled_upper(diffs: dict[str, np.ndarray], sizes: dict[str, int], weights: dict[str, float], alpha: float,
                 rho: float, low: float = -1.0, high: float = 1.0) -> PooledBound:
    """Upper bound of the weighted paired difference over benches after a look at which every bench
    has been seen to the same fraction of itself (the stages' prefixes).

    Each paired difference of bench b counts with weight c = w_b / N_b, so sum_j c_j x_j estimates
    f x sum_b w_b Delta_b at fraction f. Hoeffding's lemma makes every term (high - low)/2-sub-Gaussian
    around its mean, so sum_j c_j (x_j - mu_j) is 1-sub-Gaussian with variance process
    V = ((high - low)/2)^2 sum_j c_j^2, and the normal-mixture boundary (`mixture_radius`) holds
    at every look at once (Howard et al. 2021): the pooled difference is at most
    (sum_j c_j x_j + radius(V)) / sum_j c_j. Conservative (the range, not the variance, of the
    differences), but valid over benches of any sizes and any number of looks.
    """
    total = sum(weights[b] for b in diffs)
    c_sum = s = v = 0.0
    n = 0
    for bench, x in diffs.items():
        c = weights[bench] / total / sizes[bench]
        s += c * float(np.sum(x))
        c_sum += c * len(x)
        v += c * c * len(x) * ((high - low) / 2) ** 2
        n += len(x)
    if c_sum == 0:
        return PooledBound(math.nan, high, 0)
    radius = float(mixture_radius(v, rho, alpha))
    return PooledBound(s / c_sum, min(high, (s + radius) / c_sum), n)
