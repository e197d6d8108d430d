"""The scoreboard: per bench and variant, the paired difference to the baseline with its uncertainty.

`significant`: the Holm-corrected p (the plain p under `correction="none"`) is at most ALPHA: the one verdict
every table words the same way. `detectable` (|Δ| at least the MDE) is power information, not a verdict.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from omk_ray.analysis.samples import Pair
from omk_ray.analysis.stats import ALPHA, Precision, holm_within, is_detectable, paired_test, repeat_spread

# The family over which p-values are Holm-corrected: every (variant, bench) cell of the grid,
# the benches of each variant, or none.
Correction = Literal["grid", "variant", "none"]


def scoreboard(pairs: list[Pair], resamples: int = 2000, correction: Correction = "variant") -> list[dict]:
    """One row per (variant, bench); p-values Holm-corrected over the `correction` family."""
    rows = []
    for pair in pairs:
        test = paired_test(pair.base_score, pair.var_score, pair.binary, resamples, seed=f"{pair.variant}/{pair.bench}")
        spread = repeat_spread(pair.base_repeat_var, pair.base_repeats, pair.var_repeat_var, pair.var_repeats)
        rows.append({
            "bench": pair.bench,
            "variant": pair.variant,
            "n": pair.n,
            "baseline_docs": pair.baseline_docs,
            "variant_docs": pair.variant_docs,
            "baseline_score": _pct(pair.base_score),
            "variant_score": _pct(pair.var_score),
            "delta_pp": 100 * test.delta,
            "ci_low_pp": 100 * test.ci_low,
            "ci_high_pp": 100 * test.ci_high,
            "test": test.test,
            "p_value": test.p_value,
            "p_holm": np.nan,
            "lost": int(np.sum(pair.base_pass & ~pair.var_pass)),
            "gained": int(np.sum(~pair.base_pass & pair.var_pass)),
            "baseline_correct": int(np.sum(pair.base_pass)),
            "variant_correct": int(np.sum(pair.var_pass)),
            "binary": pair.binary,
            "ci_method": test.interval,
            "correction": correction,
            **precision_columns(test.delta, test.precision),
            "repeats": spread.repeats,
            "baseline_repeat_var": spread.baseline_var,
            "variant_repeat_var": spread.variant_var,
            "repeat_se_pp": 100 * spread.se,
        })
    if correction != "none":
        families = [r["variant"] if correction == "variant" else "grid" for r in rows]
        for row, adjusted in zip(rows, holm_within([r["p_value"] for r in rows], families)):
            row["p_holm"] = adjusted
    for row in rows:  # the verdict: the corrected p (the plain one under --correction none); NaN never is
        row["significant"] = bool((row["p_value"] if correction == "none" else row["p_holm"]) <= ALPHA)
    return rows


def precision_columns(delta: float, precision: Precision) -> dict:
    """The columns that say what a comparison can resolve (scoreboard and domain rows alike)."""
    return {
        "se_pp": 100 * precision.se,
        "correlation": precision.correlation,
        "mde_pp": 100 * precision.mde,
        "detectable": is_detectable(delta, precision.mde),
    }


def _pct(scores: np.ndarray) -> float:
    return float(100 * scores.mean()) if len(scores) else float("nan")
