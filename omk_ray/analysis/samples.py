"""From the results store to what every table needs: rows with a primary score, and per-problem pairs.

A row is one sample (variant x bench x doc x repeat). A problem's score for one variant is the
mean over its repeats (greedy runs have one). Pairs join each variant's problems with the
baseline's on (bench, doc_id): every paired statistic is computed on the problems both have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from omk_ray.results.schema import SAMPLE_SCHEMA, is_score_key
from omk_ray.results.store import ResultsStore, UnreadableResults, newest_per_key

ROW_COLUMNS = [
    "cohort", "variant", "variant_fingerprint", "bench", "doc_id", "repeat",
    "completion_tokens", "reasoning_tokens", "finish_reason", "response", "reasoning",
    "score", "correct", "metrics", "domain", "subdomain", "recipe_hash", "error", "started_at",
    "engine_version", "engine_family", "engine_dtype", "device",  # the engine cohort (cohort.py)
    "scorer_version",  # the few-shot count (compare refuses to pair different ones)
]  # fmt: skip
TEXT_COLUMNS = ["response", "reasoning", "error"]  # read once, summarised by `features`, then dropped

SCORE_COLUMN = "score"  # the name that selects the row's own `score` column as primary metric


class AnalysisError(ValueError):
    """Input the comparison cannot use; the message names the bench, variant or key."""


Features = Callable[[pa.RecordBatch], dict[str, pa.Array]]


def load_rows(store: ResultsStore, variants: list[str] | None, benches: list[str] | None, features: Features) -> pa.Table:
    """The samples of these variants (all when None) on these benches (all when None).

    The text columns are the bulk of a store; they stream through `features` batch by batch and
    only what it returns is kept, so memory stays bounded by the non-text columns.
    """
    where = None
    for c in ([pc.field("variant").isin(variants)] if variants is not None else []) + (
        [pc.field("bench").isin(benches)] if benches is not None else []
    ):
        where = c if where is None else where & c
    try:
        paths = store.readable_shards()  # every shard checked against the schema: a bad one is named, never counted
        dataset = ds.dataset([str(p) for p in paths], schema=SAMPLE_SCHEMA, format="parquet")
        scanner = dataset.scanner(columns=ROW_COLUMNS, filter=where, batch_size=16_384, batch_readahead=2,
                                  fragment_readahead=2)
        slim = [_summarise(b, features) for b in scanner.to_batches() if b.num_rows]
    except (pa.ArrowException, OSError, UnreadableResults) as err:
        found = err.bad if isinstance(err, UnreadableResults) else store.find_unreadable(store.shard_paths(), err)
        bad = "; ".join(f"{b.path}: {b.problem}" for b in found)
        raise AnalysisError(f"{store.samples_dir}: cannot read the samples: {bad} (`omk-ray doctor "
                            f"{store.root} --quarantine` moves them aside)") from None
    if not slim:
        empty = pa.RecordBatch.from_pylist([], schema=pa.schema([SAMPLE_SCHEMA.field(c) for c in ROW_COLUMNS]))
        slim = [_summarise(empty, features)]
    return newest_per_key(pa.Table.from_batches(slim).combine_chunks())


def _summarise(batch: pa.RecordBatch, features: Features) -> pa.RecordBatch:
    extra = features(batch)
    batch = batch.drop_columns(TEXT_COLUMNS)
    for name, values in extra.items():
        batch = batch.append_column(name, values)
    return batch


def metric_keys(table: pa.Table) -> list[str]:
    """The scores present in the rows' metrics maps (bookkeeping keys left out)."""
    if table.num_rows == 0:
        return []
    _, keys, _ = flat_metrics(table["metrics"])
    return sorted(k for k in pc.unique(keys).to_pylist() if k is not None and is_score_key(k))


_METRIC_ENTRIES = pa.list_(pa.struct([("key", pa.string()), ("value", pa.float64())]))


def flat_metrics(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """The metrics maps as flat (row index, key, value) arrays."""
    entries = column.combine_chunks().cast(_METRIC_ENTRIES)  # map kernels are few; a list of structs has them all
    flat = entries.flatten()
    return pc.list_parent_indices(entries).to_numpy(), flat.field("key"), flat.field("value")


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
        if not is_score_key(key):
            raise AnalysisError(f"bench {name!r}: {key!r} is bookkeeping, not a score "
                                f"(scores present: {'; '.join(metric_keys(part)) or 'none'})")
        values = pc.map_lookup(part["metrics"], key, "first")
        missing = values.null_count
        if missing:
            known = "; ".join(metric_keys(part)) or "none"
            raise AnalysisError(
                f"bench {name!r}: primary metric {key!r} is missing from {missing} of {len(rows)} samples "
                f"(metrics present: {known})"
            )
        values = values.to_numpy(zero_copy_only=False).astype(float)
        score[rows] = values
        passed[rows] = values >= 1.0
    return table.append_column("primary", pa.array(score)).append_column("passed", pa.array(passed))


def per_problem(table: pa.Table, one_row_each: bool = False) -> pa.Table:
    """One row per variant x bench x doc: mean primary score and pass rate over repeats, with the
    number of repeats and the score's variance across them (null for a single repeat).

    `one_row_each`: the caller knows there is one row per problem already (one repeat, one setup).
    """
    slim = table.select(["variant", "bench", "doc_id", "primary", "passed", "domain", "subdomain"])
    slim = slim.set_column(4, "passed", pc.cast(slim["passed"], pa.float64()))
    names = ["variant", "bench", "doc_id", "score", "pass_rate", "domain", "subdomain", "repeats", "repeat_var"]
    if one_row_each:
        once = slim.append_column("repeats", pa.array(np.ones(slim.num_rows, dtype=np.int64)))
        return once.append_column("repeat_var", pa.nulls(slim.num_rows, pa.float64())).rename_columns(names)
    grouped = slim.group_by(["variant", "bench", "doc_id"], use_threads=False).aggregate([
        ("primary", "mean"), ("passed", "mean"), ("domain", "min"), ("subdomain", "min"),
        ("primary", "count"), ("primary", "variance", pc.VarianceOptions(ddof=1)),
    ])
    return grouped.rename_columns(names)


@dataclass
class Pair:
    """A variant and the baseline on the problems of one bench that both answered."""

    bench: str
    variant: str
    doc_id: pa.Array
    domain: np.ndarray | None  # labels per problem (None: the bench has no domain metadata)
    subdomain: np.ndarray | None
    base_score: np.ndarray
    var_score: np.ndarray
    base_pass: np.ndarray  # bool
    var_pass: np.ndarray  # bool
    baseline_docs: int  # problems the baseline has on this bench
    variant_docs: int
    base_repeats: np.ndarray  # repeats per problem (1: greedy)
    var_repeats: np.ndarray
    base_repeat_var: np.ndarray  # a problem's score variance across its repeats (NaN: one repeat)
    var_repeat_var: np.ndarray

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
        return self.domain is not None


def pairs(problems: pa.Table, baseline: str, variants: list[str], benches: list[str]) -> Iterator[Pair]:
    """Each variant's problems beside the baseline's same problems, per bench, in (variant, bench) order."""
    codes, groups = group_codes(problems, ["variant", "bench"])
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(groups) + 1))
    rows_of = {key: order[bounds[g] : bounds[g + 1]] for g, key in enumerate(groups)}
    doc = pc.dictionary_encode(problems["doc_id"]).combine_chunks().indices.to_numpy(zero_copy_only=False)
    score = problems["score"].to_numpy(zero_copy_only=False)
    passed = problems["pass_rate"].to_numpy(zero_copy_only=False) > 0.5
    repeats = problems["repeats"].to_numpy(zero_copy_only=False)
    repeat_var = problems["repeat_var"].to_numpy(zero_copy_only=False).astype(float)  # null -> NaN
    domain = pc.is_valid(pc.coalesce(problems["domain"], problems["subdomain"])).to_numpy(zero_copy_only=False)
    for bench in benches:
        base_rows = rows_of.get((baseline, bench), np.array([], dtype=np.int64))
        base_at = np.full(int(doc.max(initial=-1)) + 1, -1, dtype=np.int64)  # doc code -> baseline row
        base_at[doc[base_rows]] = base_rows
        for variant in variants:
            mine = rows_of.get((variant, bench))
            if mine is None:
                continue
            mine = mine[base_at[doc[mine]] >= 0]
            mine = mine[np.argsort(doc[mine], kind="stable")]
            theirs = base_at[doc[mine]]
            has_domain = bool(domain[theirs].any() or domain[mine].any())
            yield Pair(
                bench=bench,
                variant=variant,
                doc_id=problems["doc_id"].take(pa.array(mine)).combine_chunks(),
                domain=_labels(problems, "domain", theirs, mine) if has_domain else None,
                subdomain=_labels(problems, "subdomain", theirs, mine) if has_domain else None,
                base_score=score[theirs],
                var_score=score[mine],
                base_pass=passed[theirs],
                var_pass=passed[mine],
                baseline_docs=len(base_rows),
                variant_docs=len(rows_of[(variant, bench)]),
                base_repeats=repeats[theirs],
                var_repeats=repeats[mine],
                base_repeat_var=repeat_var[theirs],
                var_repeat_var=repeat_var[mine],
            )


def _labels(problems: pa.Table, column: str, base_rows: np.ndarray, var_rows: np.ndarray) -> np.ndarray:
    """The baseline's label of each problem, the variant's where the baseline has none."""
    base = problems[column].take(pa.array(base_rows))
    var = problems[column].take(pa.array(var_rows))
    return pc.coalesce(base, var).to_numpy(zero_copy_only=False)


def key_codes(table: pa.Table, keys: list[str]) -> tuple[np.ndarray, list[list]]:
    """One integer per row that orders rows as their key values do, and each key's sorted labels."""
    codes = np.zeros(table.num_rows, dtype=np.int64)
    labels_per_key = []
    for k in keys:
        encoded = pc.dictionary_encode(table[k], null_encoding="encode").combine_chunks()
        labels = encoded.dictionary.to_pylist()
        order = sorted(range(len(labels)), key=lambda i: (labels[i] is None, labels[i] if labels[i] is not None else 0))
        rank = np.empty(len(labels), dtype=np.int64)
        rank[order] = np.arange(len(labels))
        codes = codes * max(1, len(labels)) + rank[encoded.indices.to_numpy(zero_copy_only=False)]
        labels_per_key.append([labels[i] for i in order])
    return codes, labels_per_key


def group_codes(table: pa.Table, keys: list[str]) -> tuple[np.ndarray, list[tuple]]:
    """A group number per row and the key values of each group, in sorted key order."""
    codes, labels_per_key = key_codes(table, keys)
    if len(codes) and codes.max() < 4 * len(codes) + 1024:  # few possible keys: count instead of sorting
        present = np.flatnonzero(np.bincount(codes))
        remap = np.zeros(codes.max() + 1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        codes = remap[codes]
    else:
        present, codes = np.unique(codes, return_inverse=True)
    groups = []
    for code in present:
        key = []
        for labels in reversed(labels_per_key):
            code, r = divmod(int(code), max(1, len(labels)))
            key.append(labels[r])
        groups.append(tuple(reversed(key)))
    return codes.reshape(-1), groups


def natural_key(doc_id: str) -> tuple:
    """Sort 'doc 2' before 'doc 10' (ids that share a prefix): shorter first, then alphabetical."""
    return len(doc_id), doc_id
