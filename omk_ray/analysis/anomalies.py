"""Anomalies: samples whose output is broken in a way a score alone hides, with what each costs.

Row kinds (count, example ids, and the points lost on the flagged samples that scored wrong):
- silent-empty: the model stopped with an empty answer (the row records finish_reason=stop);
- empty-unrecorded: an empty answer on a row without a finish reason (imported logs): the cause
  (a stop, a cap, a filter, a server error) is not recorded, so none is claimed;
- error: the engine or the scorer failed on the sample;
- rumination-loop: a long output that repeats itself (high repeated n-gram fraction, code
  fences over and over);
- length-cap-reasoning / length-cap-answer: finish_reason=length, inside the thought or in
  the answer;
- length-cap-inferred: a row without a finish reason whose output reaches the max_gen_toks its
  import recorded (`caps`), counted in tokens where the row has them, else estimated (chars / 4);
- marker-leak: a reasoning marker (`<|channel>`, `<think>`, ...) in the answer.
Bench kinds (scorer suspects):
- scorer-zero: a score of exactly 0 on every problem although answers are not empty;
- metric-gap: a large gap between two scores of the same samples (a strict and a flexible
  filter, exact match and math-verify) in the metrics map.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from omk_ray.analysis.samples import flat_metrics, group_codes, natural_key
from omk_ray.results.schema import SAMPLE_SCHEMA, is_score_key

ROW_KINDS = (
    "silent-empty",
    "empty-unrecorded",
    "error",
    "rumination-loop",
    "length-cap-reasoning",
    "length-cap-answer",
    "length-cap-inferred",
    "marker-leak",
)
CHARS_PER_TOKEN = 4  # the estimate where a row stores no token count (as tokens.py)
BENCH_KINDS = ("scorer-zero", "metric-gap")
FENCE = "```"


class AnomalyRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loop_min_chars: int = Field(1000, ge=1, description="shorter outputs are never called loops")
    loop_long_chars: int = Field(12000, ge=1, description="outputs this long always get the loop check")
    loop_tail_chars: int = Field(2000, ge=100, description="a loop runs to the end: its last chars are read")
    loop_repeat_fraction: float = Field(0.5, gt=0, le=1, description="repeated n-gram share that makes a loop")
    loop_ngram_words: int = Field(4, ge=1)
    metric_gap_pp: float = Field(20.0, gt=0)
    examples: int = Field(5, ge=1)


def repeated_fraction(text: str, ngram_words: int = 4, ngram_chars: int = 24) -> float:
    """Share of the text's n-grams that occur earlier in it too: near 0 for prose and code, near
    1 - p/L for a loop of period p over L. Word n-grams; character n-grams for text with few spaces."""
    words = text.split()
    if len(words) < len(text) / 20:
        tail = text[-1000:]
        grams = len(tail) - ngram_chars + 1
        return 1.0 - len({tail[i : i + ngram_chars] for i in range(grams)}) / grams if grams > 0 else 0.0
    grams = len(words) - ngram_words + 1
    if grams <= 0:
        return 0.0
    return 1.0 - len(set(zip(*(words[i:] for i in range(ngram_words))))) / grams


def loop_fraction(text: str | None, rules: AnomalyRules) -> float:
    """Repeated n-gram share of the text's tail (0 for tails too short to tell)."""
    tail = (text or "")[-rules.loop_tail_chars :]
    if len(tail) < min(rules.loop_min_chars, rules.loop_tail_chars):
        return 0.0
    words = tail.split()
    # Cheap exact screen: a tail whose word n-grams repeat at share r has at most (1 - r) W + n
    # distinct words, so a tail with more distinct words cannot reach the loop threshold.
    if len(words) >= len(tail) / 20:
        limit = (1 - rules.loop_repeat_fraction) * len(words) + rules.loop_ngram_words
        if len(set(words)) > limit:
            return 0.0
    return repeated_fraction(tail, rules.loop_ngram_words)


# -- per-row text features: computed once while the samples stream in, so the text can be dropped -----

def text_features(rows: pa.Table | pa.RecordBatch, markers: set[str] | tuple[str, ...], rules: AnomalyRules,
                  check_all: bool = False) -> dict[str, pa.Array]:
    """What the analysis needs from `response`, `reasoning` and `error`, per row.

    Lengths are in chars where the row has no token counts (chars / 4 stands in for them) and
    in bytes elsewhere (only compared with thresholds). Loops are looked for in every long
    enough row with `check_all` (the canary), else where they show: length caps and very long
    outputs (a loop rarely ends by itself). Code fences are counted in the outputs that loop.
    """
    response, reasoning = _column(rows, "response"), _column(rows, "reasoning")
    answer_chars = _lengths(response, _no_count(rows, "completion_tokens"))
    reasoning_chars = _lengths(reasoning, _no_count(rows, "reasoning_tokens"))
    finish = _column(rows, "finish_reason")
    capped = _is(finish, "length", "length_in_reasoning")
    total = answer_chars + reasoning_chars
    likely = capped | (total >= rules.loop_long_chars)
    candidates = np.flatnonzero((total >= rules.loop_min_chars) & (check_all | likely))
    loops = np.full(rows.num_rows, np.nan)
    fences = np.zeros(rows.num_rows, dtype=np.int64)
    if len(candidates):
        picked = pa.array(candidates)
        for i, answer, thought in zip(candidates, response.take(picked).to_pylist(), reasoning.take(picked).to_pylist()):
            loops[i] = max(loop_fraction(answer, rules), loop_fraction(thought, rules))
            if loops[i] >= rules.loop_repeat_fraction:
                fences[i] = (answer or "").count(FENCE) + (thought or "").count(FENCE)
    leak = np.zeros(rows.num_rows, dtype=bool)
    if markers:
        pattern = "|".join(re.escape(m) for m in sorted(markers))
        leak = pc.fill_null(pc.match_substring_regex(response, pattern), False).to_numpy(zero_copy_only=False)
    error = _is(finish, "error") | pc.is_valid(_column(rows, "error")).to_numpy(zero_copy_only=False)
    return {
        "answer_chars": pa.array(answer_chars),
        "reasoning_chars": pa.array(reasoning_chars),
        "answer_blank": pa.array(_blank(response)),
        "reasoning_blank": pa.array(_blank(reasoning)),
        "has_error": pa.array(error),
        "marker_leak": pa.array(leak),
        "fences": pa.array(fences),
        "loop_fraction": pa.array(loops),
    }


def _column(rows, name: str):
    if name in rows.schema.names:
        return rows.column(name)
    return pa.nulls(rows.num_rows, SAMPLE_SCHEMA.field(name).type)


def _no_count(rows, name: str) -> np.ndarray:
    return pc.fill_null(pc.less_equal(_column(rows, name), 0), True).to_numpy(zero_copy_only=False)


def _lengths(column, exact: np.ndarray) -> np.ndarray:
    """Byte lengths (free), with the char count where `exact` asks for it."""
    out = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    idx = np.flatnonzero(exact & (out > 0))
    if len(idx):
        out[idx] = pc.fill_null(pc.utf8_length(column.take(pa.array(idx))), 0).to_numpy(zero_copy_only=False)
    return out


def _blank(column) -> np.ndarray:
    """No visible character: null, empty or whitespace only."""
    visible = pc.and_(pc.greater(pc.binary_length(column), 0), pc.invert(pc.utf8_is_space(column)))
    return ~pc.fill_null(visible, False).to_numpy(zero_copy_only=False)


def _is(column, *values: str) -> np.ndarray:
    return pc.fill_null(pc.is_in(column, pa.array(values, column.type)), False).to_numpy(zero_copy_only=False)


@dataclass
class RowFlags:
    """Per-row masks of each row kind, plus what the loop check measured."""

    masks: dict[str, np.ndarray]
    loop_fraction: np.ndarray  # NaN where not checked
    fences: np.ndarray  # ``` markers in the outputs found looping
    tokens: np.ndarray | None = None  # output tokens (counted, or chars / 4)


def flag_rows(rows: pa.Table, rules: AnomalyRules, caps: dict[tuple[str, str], int] | None = None) -> RowFlags:
    """Row anomalies from the text features (see `text_features`) and the finish reason; `caps`:
    (variant, bench) -> the max_gen_toks recorded for rows that carry no finish reason (imports)."""
    def get(name: str) -> np.ndarray:
        return rows[name].to_numpy(zero_copy_only=False)

    finish = rows["finish_reason"]
    unrecorded = pc.is_null(finish).to_numpy(zero_copy_only=False)
    error = get("has_error")
    length, in_reasoning = _is(finish, "length"), _is(finish, "length_in_reasoning")
    capped = length | in_reasoning
    blank = get("answer_blank")
    cap_reasoning = in_reasoning | (length & blank & ~get("reasoning_blank"))
    inferred = unrecorded & ~error & _at_cap(rows, caps or {})
    loops = get("loop_fraction")
    masks = {
        "silent-empty": blank & ~error & ~capped & ~unrecorded & ~_is(finish, "scored"),  # scored rows generate nothing
        "empty-unrecorded": blank & ~error & unrecorded & ~inferred,
        "error": error,
        "rumination-loop": np.nan_to_num(loops) >= rules.loop_repeat_fraction,
        "length-cap-reasoning": cap_reasoning,
        "length-cap-answer": length & ~cap_reasoning,
        "length-cap-inferred": inferred,
        "marker-leak": get("marker_leak"),
    }
    return RowFlags(masks, loops, get("fences"), _output_tokens(rows) if caps else None)


def _output_tokens(rows: pa.Table) -> np.ndarray:
    """Output tokens per row: the stored count, else (answer + reasoning chars) / 4."""
    counted = pc.fill_null(rows["completion_tokens"], 0).to_numpy(zero_copy_only=False).astype(float)
    chars = rows["answer_chars"].to_numpy(zero_copy_only=False) + rows["reasoning_chars"].to_numpy(zero_copy_only=False)
    return np.where(counted > 0, counted, chars / CHARS_PER_TOKEN)


def _at_cap(rows: pa.Table, caps: dict[tuple[str, str], int]) -> np.ndarray:
    """Rows whose output tokens reach the max_gen_toks recorded for their variant and bench."""
    if not caps:
        return np.zeros(rows.num_rows, dtype=bool)
    limit = np.array([caps.get((v, b), np.inf) for v, b in zip(rows["variant"].to_pylist(), rows["bench"].to_pylist())],
                     dtype=float)
    return _output_tokens(rows) >= limit


def anomalies(rows: pa.Table, rules: AnomalyRules = AnomalyRules(),
              caps: dict[tuple[str, str], int] | None = None) -> list[dict]:
    """One row per (bench, variant, kind) that occurred. `rows` needs `primary`, `passed` and text features;
    `caps`: (variant, bench) -> max_gen_toks for the rows without a finish reason (see `flag_rows`)."""
    if rows.num_rows == 0:
        return []
    flags = flag_rows(rows, rules, caps)
    codes, groups = group_codes(rows, ["bench", "variant"])
    sizes = np.bincount(codes, minlength=len(groups))
    passed = rows["passed"].to_numpy(zero_copy_only=False)
    doc_ids = rows["doc_id"].to_numpy(zero_copy_only=False)
    out = []
    for kind in ROW_KINDS:
        idx = np.flatnonzero(flags.masks[kind])
        if len(idx) == 0:
            continue
        for g in np.unique(codes[idx]):
            mine = idx[codes[idx] == g]
            bench, variant = groups[g]
            wrong = int(np.sum(~passed[mine]))
            out.append({
                "bench": bench,
                "variant": variant,
                "kind": kind,
                "count": len(mine),
                "n": int(sizes[g]),
                "examples": sorted(set(doc_ids[mine].tolist()), key=natural_key)[: rules.examples],
                "impact_pp": -100.0 * wrong / sizes[g],
                "detail": _detail(kind, mine, wrong, flags, caps.get((variant, bench)) if caps else None),
            })
    out.extend(_scorer_suspects(rows, codes, groups, sizes, rules))
    order = {k: i for i, k in enumerate(ROW_KINDS + BENCH_KINDS)}
    return sorted(out, key=lambda r: (r["bench"], r["variant"], order[r["kind"]]))


def _detail(kind: str, idx: np.ndarray, wrong: int, flags: RowFlags, cap: int | None = None) -> str:
    scored = f"{wrong} of {len(idx)} scored wrong"
    if kind == "length-cap-inferred" and flags.tokens is not None:
        return (f"{scored}; inferred: up to {int(round(float(flags.tokens[idx].max()))):,} output tokens against "
                f"max_gen_toks {cap:,} (no finish reason recorded)")
    if kind == "rumination-loop":
        fences = int(flags.fences[idx].max())
        blocks = f", up to {fences} code fences" if fences else ""
        return f"{scored}; repeated n-gram share up to {np.nanmax(flags.loop_fraction[idx]):.2f}{blocks}"
    return scored


def _scorer_suspects(rows: pa.Table, codes: np.ndarray, groups: list[tuple], sizes: np.ndarray, rules: AnomalyRules) -> list[dict]:
    out = []
    primary = rows["primary"].to_numpy()
    answered = ~rows["answer_blank"].to_numpy(zero_copy_only=False)
    score_sum = np.bincount(codes, weights=primary, minlength=len(groups))
    answered_n = np.bincount(codes, weights=answered, minlength=len(groups)).astype(int)
    for g, (bench, variant) in enumerate(groups):
        if score_sum[g] == 0 and answered_n[g] > 0:
            out.append({
                "bench": bench, "variant": variant, "kind": "scorer-zero", "count": int(answered_n[g]),
                "n": int(sizes[g]), "examples": [], "impact_pp": float("nan"),
                "detail": f"score exactly 0 on all {sizes[g]} samples though {answered_n[g]} answers are not empty: "
                          "check the scorer and answer extraction",
            })
    for g, means in _metric_means(rows, codes, len(groups), sizes).items():
        if len(means) < 2:
            continue
        low_key, high_key = min(means, key=means.get), max(means, key=means.get)
        gap = 100 * (means[high_key] - means[low_key])
        if gap < rules.metric_gap_pp:
            continue
        bench, variant = groups[g]
        chosen = 100 * primary[codes == g].mean()
        out.append({
            "bench": bench, "variant": variant, "kind": "metric-gap", "count": int(sizes[g]), "n": int(sizes[g]),
            "examples": [], "impact_pp": min(0.0, chosen - 100 * means[high_key]),
            "detail": f"{low_key} {100 * means[low_key]:.1f}% vs {high_key} "
                      f"{100 * means[high_key]:.1f}% ({gap:.1f}pp); the table uses {chosen:.1f}%",
        })
    return out


def _metric_means(rows: pa.Table, codes: np.ndarray, n_groups: int, sizes: np.ndarray) -> dict[int, dict[str, float]]:
    """Per group: mean of every score of the metrics map (`is_score_key`) with values in [0, 1] on nearly every row."""
    parents, keys, values = flat_metrics(rows["metrics"])
    if len(keys) == 0:
        return {}
    keys = pc.dictionary_encode(keys)
    key_names = keys.dictionary.to_pylist()
    key_idx = keys.indices.to_numpy()
    values = pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)
    cell = codes[parents] * len(key_names) + key_idx
    size = n_groups * len(key_names)
    count = np.bincount(cell, minlength=size).reshape(n_groups, -1)
    total = np.bincount(cell, weights=np.nan_to_num(values), minlength=size).reshape(n_groups, -1)
    out_of_range = np.bincount(cell, weights=~((values >= 0) & (values <= 1)), minlength=size).reshape(n_groups, -1)
    result: dict[int, dict[str, float]] = {}
    for g in range(n_groups):
        means = {}
        for k, name in enumerate(key_names):
            if not is_score_key(name) or out_of_range[g, k] or count[g, k] < 0.9 * sizes[g]:
                continue
            means[name] = total[g, k] / count[g, k]
        result[g] = means
    return result
