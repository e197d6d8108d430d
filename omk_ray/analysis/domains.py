"""Domain breakdown for benches whose problems carry domain metadata (e.g. GPQA Diamond).

Each row carries the same paired test as the scoreboard (exact McNemar for pass/fail, paired bootstrap for
graded scores) with its p-value Holm-corrected over the rows of one bench, variant and level (the high-level
domains together, the subdomains together): `significant` is that corrected p at most ALPHA. The precision
columns (SE, MDE, `detectable`) are power information beside it, never the verdict.
"""

from __future__ import annotations

import numpy as np

from omk_ray.analysis.samples import Pair
from omk_ray.analysis.scoreboard import precision_columns
from omk_ray.analysis.stats import ALPHA, holm_within, paired_test

NO_DOMAIN = "(none)"


def domain_breakdown(pairs: list[Pair], resamples: int = 2000) -> list[dict]:
    """Per variant and bench: one row per high-level domain, then one per (domain, subdomain)."""
    rows = []
    for pair in pairs:
        if not pair.has_domains:
            continue
        domains = _labels(pair.domain)
        subdomains = _labels(pair.subdomain)
        for domain in _by_size(domains):
            rows.append(_row(pair, "domain", domain, None, domains == domain, resamples))
        if all(s == NO_DOMAIN for s in subdomains):
            continue
        for key in _by_size(np.array([f"{d}\x00{s}" for d, s in zip(domains, subdomains)], dtype=object)):
            domain, subdomain = key.split("\x00")
            if subdomain != NO_DOMAIN:
                rows.append(_row(pair, "subdomain", domain, subdomain, (domains == domain) & (subdomains == subdomain),
                                 resamples))
    families = [(r["bench"], r["variant"], r["level"]) for r in rows]
    for row, adjusted in zip(rows, holm_within([r["p_value"] for r in rows], families)):
        row["p_holm"] = adjusted
        row["significant"] = bool(adjusted <= ALPHA)  # NaN (no test) is never significant
    return rows


def _row(pair: Pair, level: str, domain: str, subdomain: str | None, mask: np.ndarray, resamples: int) -> dict:
    base, var = pair.base_score[mask], pair.var_score[mask]
    bp, vp = pair.base_pass[mask], pair.var_pass[mask]
    label = subdomain if subdomain is not None else domain
    test = paired_test(base, var, pair.binary, resamples, seed=f"{pair.variant}/{pair.bench}/{level}/{label}")
    delta = float(var.mean() - base.mean())
    return {
        "bench": pair.bench,
        "variant": pair.variant,
        "level": level,
        "domain": domain,
        "subdomain": subdomain,
        "n": int(mask.sum()),
        "baseline_score": float(100 * base.mean()),
        "variant_score": float(100 * var.mean()),
        "delta_pp": 100 * delta,
        "lost": int(np.sum(bp & ~vp)),
        "gained": int(np.sum(~bp & vp)),
        "p_value": test.p_value,
        "p_holm": float("nan"),
        "significant": False,
        **precision_columns(delta, test.precision),
    }


def _labels(values: np.ndarray) -> np.ndarray:
    return np.array([v if v not in (None, "") else NO_DOMAIN for v in values], dtype=object)


def _by_size(labels: np.ndarray) -> list[str]:
    """Distinct labels, largest group first (ties by name)."""
    names, counts = np.unique(labels.astype(str), return_counts=True)
    return [str(n) for n, _ in sorted(zip(names, counts), key=lambda nc: (-nc[1], nc[0]))]
