"""Output length distributions per bench and variant, in tokens (or chars / 4 where none were stored)."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.analysis.samples import group_codes

CHARS_PER_TOKEN = 4


def _counted_or_estimated(tokens: pa.Array, chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored token counts, or chars / 4 where a count is missing (null, or 0 beside non-empty text)."""
    stored = pc.fill_null(tokens, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    estimated = (stored < 0) | ((stored == 0) & (chars > 0))
    values = np.where(estimated, np.rint(chars / CHARS_PER_TOKEN), stored).astype(np.float64)
    return values, estimated


def _chars(rows: pa.Table, name: str) -> np.ndarray:
    return rows[name].to_numpy(zero_copy_only=False).astype(np.int64)


def completion_lengths(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Completion tokens per row and whether each was estimated. `rows` carry the text features."""
    chars = _chars(rows, "answer_chars") + _chars(rows, "reasoning_chars")
    return _counted_or_estimated(rows["completion_tokens"], chars)


def reasoning_lengths(rows: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reasoning tokens, whether each was estimated, and which rows have a reasoning part at all."""
    chars = _chars(rows, "reasoning_chars")
    values, estimated = _counted_or_estimated(rows["reasoning_tokens"], chars)
    present = ~rows["reasoning_blank"].to_numpy(zero_copy_only=False) | (values > 0)
    return values, estimated & present, present


def token_lengths(rows: pa.Table) -> pa.Table:
    """One row per sample and measure (completion; reasoning where the sample has one): bench, variant,
    measure, tokens, estimated. `rows` carry the text features."""
    completion, completion_est = completion_lengths(rows)
    reasoning, reasoning_est, has_reasoning = reasoning_lengths(rows)
    keys = rows.select(["bench", "variant"]).combine_chunks()
    with_reasoning = keys.filter(pa.array(has_reasoning))
    parts = [
        keys.append_column("measure", pa.array(["completion"] * rows.num_rows, pa.string()))
        .append_column("tokens", pa.array(completion)).append_column("estimated", pa.array(completion_est)),
        with_reasoning.append_column("measure", pa.array(["reasoning"] * with_reasoning.num_rows, pa.string()))
        .append_column("tokens", pa.array(reasoning[has_reasoning]))
        .append_column("estimated", pa.array(reasoning_est[has_reasoning])),
    ]
    return pa.concat_tables(parts)


DEFAULT_STATS = ("p10", "p50", "p90", "max", "mean", "total")
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")


def check_stats(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Statistics of a token table: pN (a percentile, e.g. p10, p95), median, mean, min, max, total."""
    for name in names:
        m = _PERCENTILE.fullmatch(name)
        if not (name in ("median", "mean", "min", "max", "total") or (m and 0 <= float(m[1]) <= 100)):
            raise ValueError(f"unknown token statistic {name!r}: use pN (0-100, e.g. p10, p95), median, mean, min, max "
                             "or total")
    return tuple(names)


def stat(name: str, values: np.ndarray) -> float:
    if name == "mean":
        return float(values.mean())
    if name in ("min", "max"):
        return float(getattr(values, name)())
    if name == "total":
        return float(values.sum())
    q = 50.0 if name == "median" else float(_PERCENTILE.fullmatch(name)[1])
    return float(np.percentile(values, q))


def token_distributions(lengths: pa.Table, stats: tuple[str, ...] = DEFAULT_STATS) -> list[dict]:
    """One row per bench x variant x measure of `token_lengths`, with the statistics asked for."""
    if lengths.num_rows == 0:
        return []
    codes, groups = group_codes(lengths, ["bench", "variant", "measure"])
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(groups) + 1))
    tokens = lengths["tokens"].to_numpy(zero_copy_only=False)
    estimated = lengths["estimated"].to_numpy(zero_copy_only=False)
    out = []
    for g, (bench, variant, measure) in enumerate(groups):
        idx = order[bounds[g] : bounds[g + 1]]
        values, k = tokens[idx], int(estimated[idx].sum())
        source = "tokens" if k == 0 else "chars/4" if k == len(values) else f"mixed ({k} of {len(values)} chars/4)"
        out.append({"bench": bench, "variant": variant, "measure": measure, "n": len(values),
                    **{name: stat(name, values) for name in stats}, "estimated": k, "source": source})
    return out
