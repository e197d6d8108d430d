"""The scoreboard: per bench and variant, the paired difference to the baseline with its uncertainty."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from omk_ray.analysis.samples import Pair
from omk_ray.analysis.stats import holm, paired_test


def scoreboard(pairs: list[Pair], resamples: int = 2000) -> list[dict]:
    """One row per (variant, bench); p-values Holm-corrected across the benches of each variant."""
    rows = []
    for pair in pairs:
        test = paired_test(pair.base_score, pair.var_score, pair.binary, resamples, seed=f"{pair.variant}/{pair.bench}")
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
        })
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    for group in by_variant.values():
        for row, adjusted in zip(group, holm([r["p_value"] for r in group])):
            row["p_holm"] = adjusted
    return rows


def _pct(scores: np.ndarray) -> float:
    return float(100 * scores.mean()) if len(scores) else float("nan")
