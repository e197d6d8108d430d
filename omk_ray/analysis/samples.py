"""From the results store to what every table needs: rows with a primary score, and per-problem pairs.

A row is one sample (variant x bench x doc x repeat). A problem's score for one variant is the
mean over its repeats (greedy runs have one). Pairs join each variant's problems with the
baseline's on (bench, doc_id): every paired statistic is computed on the problems both have.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.results.store import ResultsStore

ROW_COLUMNS = [
    "run_id", "cohort", "variant", "variant_fingerprint", "bench", "doc_id", "repeat",
    "completion_tokens", "reasoning_tokens", "finish_reason", "response", "reasoning",
    "score", "correct", "metrics", "domain", "subdomain", "recipe_hash", "error",
]  # fmt: skip

SCORE_COLUMN = "score"  # the name that selects the row's own `score` column as primary metric


class AnalysisError(ValueError):
    """Input the comparison cannot use; the message names the bench, variant or key."""


def load_rows(store: ResultsStore, variants: list[str] | None, benches: list[str] | None) -> pa.Table:
    """The samples of these variants (all when None) on these benches (all when None)."""
    conditions = []
    if variants is not None:
        conditions.append(pc.field("variant").isin(variants))
    if benches is not None:
        conditions.append(pc.field("bench").isin(benches))
    where = None
    for c in conditions:
        where = c if where is None else where & c
    table = store.read(columns=ROW_COLUMNS, filter=where)
    # Plain (non-chunked) arrays: the analysis indexes them many times.
    return table.combine_chunks()


def metric_keys(table: pa.Table) -> list[str]:
    if table.num_rows == 0:
        return []
    keys = pc.list_flatten(table["metrics"]).combine_chunks().field("key")
    return sorted(k for k in pc.unique(keys).to_pylist() if k is not None)


def with_primary_score(table: pa.Table, primary: dict[str, str]) -> pa.Table:
    """Add `primary` (float) and `passed` (bool): the bench's chosen metric, per row.

    With the `score` column as primary, `passed` is the row's `correct`; with a key of the
    metrics map, a row passes when that metric is at its maximum of 1.
    """
    score = table["score"].to_numpy(zero_copy_only=False).astype(float)
    passed = table["correct"].fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    score = np.nan_to_num(score, nan=0.0)
    bench = table["bench"].to_numpy(zero_copy_only=False)
    for name, key in primary.items():
        if key == SCORE_COLUMN:
            continue
        rows = np.flatnonzero(bench == name)
        if len(rows) == 0:
            continue
        part = table.take(pa.array(rows))
        values = pc.map_lookup(part["metrics"], key, "first")
        missing = values.null_count
        if missing:
            known = ", ".join(metric_keys(part)) or "none"
            raise AnalysisError(
                f"bench {name!r}: primary metric {key!r} is missing from {missing} of {len(rows)} samples "
                f"(metrics present: {known})"
            )
        values = values.to_numpy(zero_copy_only=False).astype(float)
        score[rows] = values
        passed[rows] = values >= 1.0
    return table.append_column("primary", pa.array(score)).append_column("passed", pa.array(passed))


def per_problem(table: pa.Table) -> pa.Table:
    """One row per variant x bench x doc: mean primary score and pass rate over repeats."""
    slim = table.select(["variant", "bench", "doc_id", "primary", "passed", "domain", "subdomain"])
    slim = slim.set_column(4, "passed", pc.cast(slim["passed"], pa.float64()))
    grouped = slim.group_by(["variant", "bench", "doc_id"], use_threads=False).aggregate(
        [("primary", "mean"), ("passed", "mean"), ("domain", "min"), ("subdomain", "min"), ("primary", "count")]
    )
    return grouped.rename_columns(["variant", "bench", "doc_id", "score", "pass_rate", "domain", "subdomain", "repeats"])


@dataclass
class Pair:
    """A variant and the baseline on the problems of one bench that both answered."""

    bench: str
    variant: str
    doc_id: np.ndarray
    domain: np.ndarray
    subdomain: np.ndarray
    base_score: np.ndarray
    var_score: np.ndarray
    base_pass: np.ndarray  # bool
    var_pass: np.ndarray  # bool
    baseline_docs: int  # problems the baseline has on this bench
    variant_docs: int

    @property
    def n(self) -> int:
        return len(self.doc_id)

    @property
    def binary(self) -> bool:
        """Pass/fail scores on both sides (McNemar applies)."""
        both = np.concatenate([self.base_score, self.var_score])
        return bool(np.all((both == 0) | (both == 1)))

    @property
    def has_domains(self) -> bool:
        return any(d is not None for d in self.domain)


def pairs(problems: pa.Table, baseline: str, variants: list[str], benches: list[str]) -> Iterator[Pair]:
    """Pairs in (variant, bench) order; a bench the baseline lacks is named in an AnalysisError."""
    is_base = pc.equal(problems["variant"], baseline)
    base = problems.filter(is_base)
    others = problems.filter(pc.invert(is_base))
    base_docs = _counts(base, "bench")
    var_docs = _counts(others, "variant", "bench")
    base = base.select(["bench", "doc_id", "score", "pass_rate", "domain", "subdomain"]).rename_columns(
        ["bench", "doc_id", "base_score", "base_pass", "base_domain", "base_subdomain"]
    )
    joined = others.join(base, keys=["bench", "doc_id"], join_type="inner", use_threads=False)
    joined = joined.sort_by([("variant", "ascending"), ("bench", "ascending"), ("doc_id", "ascending")])
    index = _group_slices(joined, ["variant", "bench"])
    for variant in variants:
        for bench in benches:
            if (variant, bench) not in var_docs:
                continue
            start, stop = index.get((variant, bench), (0, 0))
            part = joined.slice(start, stop - start)
            domain = pc.coalesce(part["base_domain"], part["domain"]).to_numpy(zero_copy_only=False)
            subdomain = pc.coalesce(part["base_subdomain"], part["subdomain"]).to_numpy(zero_copy_only=False)
            yield Pair(
                bench=bench,
                variant=variant,
                doc_id=part["doc_id"].to_numpy(zero_copy_only=False),
                domain=domain,
                subdomain=subdomain,
                base_score=part["base_score"].to_numpy(),
                var_score=part["score"].to_numpy(),
                base_pass=part["base_pass"].to_numpy() > 0.5,
                var_pass=part["pass_rate"].to_numpy() > 0.5,
                baseline_docs=base_docs.get((bench,), 0),
                variant_docs=var_docs[(variant, bench)],
            )


def _counts(table: pa.Table, *keys: str) -> dict[tuple, int]:
    counted = table.group_by(list(keys), use_threads=False).aggregate([([], "count_all")])
    columns = [counted[k].to_pylist() for k in keys]
    return dict(zip(zip(*columns), counted["count_all"].to_pylist()))


def _group_slices(sorted_table: pa.Table, keys: list[str]) -> dict[tuple, tuple[int, int]]:
    """(key values) -> (start, stop) of each run of equal keys in a table sorted by `keys`."""
    n = sorted_table.num_rows
    if n == 0:
        return {}
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        values = sorted_table[k].to_numpy(zero_copy_only=False)
        change[1:] |= values[1:] != values[:-1]
    starts = np.flatnonzero(change)
    stops = np.append(starts[1:], n)
    columns = [sorted_table[k].take(pa.array(starts)).to_pylist() for k in keys]
    return {key: (int(a), int(b)) for key, a, b in zip(zip(*columns), starts, stops)}


def group_codes(table: pa.Table, keys: list[str]) -> tuple[np.ndarray, list[tuple]]:
    """A group number per row and the key values of each group, in sorted key order."""
    codes = np.zeros(table.num_rows, dtype=np.int64)
    uniques_per_key = []
    for k in keys:
        encoded = pc.dictionary_encode(table[k], null_encoding="encode").combine_chunks()
        labels = encoded.dictionary.to_pylist()
        order = sorted(range(len(labels)), key=lambda i: (labels[i] is None, labels[i] or ""))
        rank = np.empty(len(labels), dtype=np.int64)
        rank[order] = np.arange(len(labels))
        idx = encoded.indices.to_numpy(zero_copy_only=False)
        codes = codes * max(1, len(labels)) + rank[idx]
        uniques_per_key.append([labels[i] for i in order])
    present, codes = np.unique(codes, return_inverse=True)
    groups = []
    for code in present:
        key = []
        for labels in reversed(uniques_per_key):
            code, r = divmod(int(code), max(1, len(labels)))
            key.append(labels[r])
        groups.append(tuple(reversed(key)))
    return codes.reshape(-1), groups


def natural_key(doc_id: str) -> tuple:
    """Sort 'doc 2' before 'doc 10': digits compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(doc_id)))
