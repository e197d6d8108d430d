"""Which recipe set a comparison reads, when a results folder holds several (a recipe changed between runs).

`--recipe latest` keeps, for every variant x bench, the samples of the recipe it ran most recently;
`--recipe HASH[,HASH...]` keeps the samples whose recipe hash starts with one of the prefixes.
Without it, a folder whose variant x bench cells mix recipes is refused by the cohort guard (with
a hint naming the sets), and `--allow-mismatch` reads the latest set and says so.
"""

from __future__ import annotations

import functools
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.analysis.samples import AnalysisError

LATEST = "latest"


def recipe_sets(rows: pa.Table) -> dict[str, int]:
    """recipe hash -> samples, most samples first."""
    counts = rows.group_by(["recipe_hash"], use_threads=False).aggregate([([], "count_all")]).to_pylist()
    return dict(sorted(((r["recipe_hash"] or "?", r["count_all"]) for r in counts), key=lambda kv: -kv[1]))


def mixed_cells(rows: pa.Table) -> list[tuple[str, str]]:
    """(variant, bench) cells whose samples ran more than one recipe."""
    found = rows.group_by(["variant", "bench", "recipe_hash"], use_threads=False).aggregate([]).to_pylist()
    hashes: dict[tuple[str, str], set] = defaultdict(set)
    for r in found:
        hashes[(r["variant"], r["bench"])].add(r["recipe_hash"])
    return sorted(cell for cell, found_hashes in hashes.items() if len(found_hashes) > 1)


def describe_sets(rows: pa.Table) -> str:
    return ", ".join(f"{h[:8]} ({n} samples)" for h, n in recipe_sets(rows).items())


def latest(rows: pa.Table) -> pa.Table:
    """For every variant x bench, only the samples of the recipe whose newest sample is the newest."""
    newest = rows.group_by(["variant", "bench", "recipe_hash"], use_threads=False).aggregate(
        [("started_at", "max")]).to_pylist()
    keep: dict[tuple[str, str], tuple] = {}
    for r in newest:
        cell, stamp = (r["variant"], r["bench"]), r["started_at_max"]
        if cell not in keep or (stamp is not None and (keep[cell][0] is None or stamp > keep[cell][0])):
            keep[cell] = (stamp, r["recipe_hash"])
    wanted = pa.array([f"{v}\x00{b}\x00{h}" for (v, b), (_, h) in keep.items()])
    key = pc.binary_join_element_wise(rows["variant"], rows["bench"], pc.fill_null(rows["recipe_hash"], ""), "\x00")
    return rows.filter(pc.is_in(key, value_set=wanted))


def choose(rows: pa.Table, choice: str | None, allow_mismatch: bool) -> tuple[pa.Table, str | None]:
    """(the rows of the chosen recipe set, a sentence saying which set was used; None when no choice was made)."""
    if choice is None:
        if not (allow_mismatch and mixed_cells(rows)):
            return rows, None
        kept = latest(rows)
        return kept, (f"--allow-mismatch: this folder holds {len(recipe_sets(rows))} recipe sets "
                      f"({describe_sets(rows)}); each variant x bench uses its latest ({describe_sets(kept)}); "
                      "pick another with --recipe HASH")
    if choice == LATEST:
        kept = latest(rows)
        return kept, f"--recipe latest: each variant x bench uses its latest recipe ({describe_sets(kept)})"
    prefixes = [p.strip() for p in choice.split(",") if p.strip()]
    mask = pc.fill_null(functools.reduce(pc.or_, [pc.starts_with(rows["recipe_hash"], p) for p in prefixes]), False)
    kept = rows.filter(mask)
    if not kept.num_rows:
        raise AnalysisError(f"--recipe {choice}: no samples ran such a recipe (recipes here: {describe_sets(rows)})")
    return kept, f"--recipe {choice}: {describe_sets(kept)}"
