"""Per-problem agreement: which problems a variant lost or gained against the baseline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from omk_ray.analysis.samples import Pair, natural_key

OUTCOMES = ("both_correct", "both_wrong", "lost", "gained")


def outcomes(pair: Pair) -> np.ndarray:
    """Per problem, an index into OUTCOMES: both right, both wrong, lost (only the baseline right), gained."""
    b, v = pair.base_pass, pair.var_pass
    return np.select([b & v, ~b & ~v, b & ~v], [0, 1, 2], default=3).astype(np.int8)


def _ids(pair: Pair, mask: np.ndarray) -> list[str]:
    return sorted(pair.doc_id.filter(pa.array(mask)).to_pylist(), key=natural_key)


def agreement(pairs: list[Pair]) -> list[dict]:
    rows = []
    for pair in pairs:
        kinds = outcomes(pair)
        counts = np.bincount(kinds, minlength=4)
        row = {"bench": pair.bench, "variant": pair.variant, "n": pair.n}
        row.update({kind: int(k) for kind, k in zip(OUTCOMES, counts)})
        row.update({f"{kind}_pct": 100 * k / pair.n if pair.n else float("nan") for kind, k in zip(OUTCOMES, counts)})
        row["lost_ids"] = _ids(pair, kinds == 2)
        row["gained_ids"] = _ids(pair, kinds == 3)
        rows.append(row)
    return rows


def agreement_by_domain(pairs: list[Pair]) -> list[dict]:
    rows = []
    for pair in pairs:
        if not pair.has_domains:
            continue
        kinds = outcomes(pair)
        domains = np.array([d if d is not None else "(none)" for d in pair.domain], dtype=object)
        for domain in sorted(set(domains)):
            counts = np.bincount(kinds[domains == domain], minlength=4)
            row = {"bench": pair.bench, "variant": pair.variant, "domain": domain, "n": int(counts.sum())}
            row.update({kind: int(k) for kind, k in zip(OUTCOMES, counts)})
            rows.append(row)
    return rows


def problems_table(pairs: list[Pair]) -> pa.Table:
    """Every paired problem with both scores and its outcome: the full id lists, for analysts."""
    parts = []
    names = pa.array(OUTCOMES)
    for pair in pairs:
        n = pair.n
        no_domain = pa.nulls(n, pa.string())
        parts.append(pa.table({
            "bench": pa.array([pair.bench] * n, pa.string()),
            "variant": pa.array([pair.variant] * n, pa.string()),
            "doc_id": pair.doc_id.cast(pa.string()),
            "domain": pa.array(pair.domain, pa.string()) if pair.has_domains else no_domain,
            "subdomain": pa.array(pair.subdomain, pa.string()) if pair.has_domains else no_domain,
            "baseline_score": pa.array(pair.base_score, pa.float64()),
            "variant_score": pa.array(pair.var_score, pa.float64()),
            "baseline_correct": pa.array(pair.base_pass, pa.bool_()),
            "variant_correct": pa.array(pair.var_pass, pa.bool_()),
            "outcome": names.take(pa.array(outcomes(pair))),
        }))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in ("bench", "variant", "doc_id", "outcome")})
    return pa.concat_tables(parts)
