"""Per-problem agreement: which problems a variant lost or gained against the baseline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from omk_ray.analysis.samples import Pair, natural_key

OUTCOMES = ("both_correct", "both_wrong", "lost", "gained")


def outcomes(pair: Pair) -> np.ndarray:
    """Per problem: both_correct, both_wrong, lost (only the baseline right) or gained."""
    b, v = pair.base_pass, pair.var_pass
    return np.select([b & v, ~b & ~v, b & ~v], list(OUTCOMES[:3]), default=OUTCOMES[3]).astype(object)


def agreement(pairs: list[Pair]) -> list[dict]:
    rows = []
    for pair in pairs:
        kinds = outcomes(pair)
        row = {"bench": pair.bench, "variant": pair.variant, "n": pair.n}
        for kind in OUTCOMES:
            row[kind] = int(np.sum(kinds == kind))
        for kind in OUTCOMES:
            row[f"{kind}_pct"] = 100 * row[kind] / pair.n if pair.n else float("nan")
        row["lost_ids"] = sorted(pair.doc_id[kinds == "lost"].tolist(), key=natural_key)
        row["gained_ids"] = sorted(pair.doc_id[kinds == "gained"].tolist(), key=natural_key)
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
            mine = kinds[domains == domain]
            row = {"bench": pair.bench, "variant": pair.variant, "domain": domain, "n": len(mine)}
            row.update({kind: int(np.sum(mine == kind)) for kind in OUTCOMES})
            rows.append(row)
    return rows


def problems_table(pairs: list[Pair]) -> pa.Table:
    """Every paired problem with both scores and its outcome: the full id lists, for analysts."""
    parts = []
    for pair in pairs:
        n = pair.n
        parts.append(pa.table({
            "bench": pa.array([pair.bench] * n, pa.string()),
            "variant": pa.array([pair.variant] * n, pa.string()),
            "doc_id": pa.array(pair.doc_id, pa.string()),
            "domain": pa.array(pair.domain, pa.string()),
            "subdomain": pa.array(pair.subdomain, pa.string()),
            "baseline_score": pa.array(pair.base_score, pa.float64()),
            "variant_score": pa.array(pair.var_score, pa.float64()),
            "baseline_correct": pa.array(pair.base_pass, pa.bool_()),
            "variant_correct": pa.array(pair.var_pass, pa.bool_()),
            "outcome": pa.array(outcomes(pair), pa.string()),
        }))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in ("bench", "variant", "doc_id", "outcome")})
    return pa.concat_tables(parts)
