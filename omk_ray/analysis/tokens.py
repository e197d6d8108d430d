"""Output length distributions per bench and variant, in tokens (or chars / 4 where none were stored)."""

from __future__ import annotations

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


def token_distributions(rows: pa.Table) -> list[dict]:
    """One row per bench x variant x measure (completion; reasoning where any sample has one)."""
    if rows.num_rows == 0:
        return []
    completion, completion_est = completion_lengths(rows)
    reasoning, reasoning_est, has_reasoning = reasoning_lengths(rows)
    codes, groups = group_codes(rows, ["bench", "variant"])
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(groups) + 1))
    out = []
    for g, (bench, variant) in enumerate(groups):
        idx = order[bounds[g] : bounds[g + 1]]
        out.append(_describe(bench, variant, "completion", completion[idx], completion_est[idx]))
        if has_reasoning[idx].any():
            out.append(_describe(bench, variant, "reasoning", reasoning[idx], reasoning_est[idx]))
    return out


def _describe(bench: str, variant: str, measure: str, values: np.ndarray, estimated: np.ndarray) -> dict:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    k = int(estimated.sum())
    source = "tokens" if k == 0 else "chars/4" if k == len(values) else f"mixed ({k} of {len(values)} chars/4)"
    return {
        "bench": bench,
        "variant": variant,
        "measure": measure,
        "n": len(values),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "total": float(values.sum()),
        "estimated": k,
        "source": source,
    }
