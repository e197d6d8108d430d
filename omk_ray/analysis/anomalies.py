"""Anomalies: samples whose output is broken in a way a score alone hides, with what each costs.

Row kinds (count, example ids, and the points lost on the flagged samples that scored wrong):
- silent-empty: the model stopped with an empty answer;
- error: the engine or the scorer failed on the sample;
- rumination-loop: a long output that repeats itself (high repeated n-gram fraction, code
  fences over and over);
- length-cap-reasoning / length-cap-answer: finish_reason=length, inside the thought or in
  the answer;
- marker-leak: a reasoning marker (`<|channel>`, `<think>`, ...) in the answer.
Bench kinds (scorer suspects):
- scorer-zero: a score of exactly 0 on every problem although answers are not empty;
- metric-gap: a large gap between two scores of the same samples (a strict and a flexible
  filter, exact match and math-verify) in the metrics map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from omk_ray.analysis.samples import group_codes, natural_key
from omk_ray.analysis.tokens import text_chars

ROW_KINDS = (
    "silent-empty",
    "error",
    "rumination-loop",
    "length-cap-reasoning",
    "length-cap-answer",
    "marker-leak",
)
BENCH_KINDS = ("scorer-zero", "metric-gap")
NOT_SCORES = frozenset({"thinking_budget_hit"})  # flags the farm stores in `metrics`
FENCE = "```"


class AnomalyRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loop_min_chars: int = Field(1000, ge=1, description="shorter outputs are never called loops")
    loop_repeat_fraction: float = Field(0.5, gt=0, le=1, description="repeated n-gram share that makes a loop")
    loop_ngram_chars: int = Field(24, ge=4)
    loop_tail_chars: int = Field(12000, ge=100, description="a loop runs to the end: the last chars are read")
    loop_fence_blocks: int = Field(8, ge=2, description="this many code blocks always get the loop check")
    outlier_factor: float = Field(3.0, ge=1, description="outputs this many times the bench median get checked")
    longest_checked: int = Field(20, ge=0, description="the longest outputs of each bench x variant get checked")
    metric_gap_pp: float = Field(20.0, gt=0)
    examples: int = Field(5, ge=1)


def repeated_fraction(text: str, ngram: int = 24, stride: int = 3) -> float:
    """Share of the text's character n-grams (taken every `stride` chars) that occur earlier too.

    Prose and code stay well under 0.2; a degenerate loop of period p over L chars is near 1 - p/L.
    """
    windows = range(0, len(text) - ngram + 1, stride)
    if len(windows) == 0:
        return 0.0
    return 1.0 - len({text[i : i + ngram] for i in windows}) / len(windows)


@dataclass
class RowFlags:
    """Per-row masks of each row kind, plus what the loop check measured."""

    masks: dict[str, np.ndarray]
    loop_fraction: np.ndarray  # NaN where not checked
    fences: np.ndarray


def flag_rows(rows: pa.Table, markers: set[str] | tuple[str, ...], rules: AnomalyRules, check_all: bool = False) -> RowFlags:
    """Row anomalies. Loops are looked for in every row with `check_all`, else in likely rows only:
    length-capped, many code blocks, long outliers of their bench, and the longest of each group."""
    answer_chars = text_chars(pc.utf8_trim_whitespace(rows["response"]))
    reasoning_chars = text_chars(pc.utf8_trim_whitespace(rows["reasoning"]))
    finish = pc.fill_null(rows["finish_reason"], "").to_numpy(zero_copy_only=False).astype(str)
    error = (finish == "error") | pc.is_valid(rows["error"]).to_numpy(zero_copy_only=False)
    capped = (finish == "length") | (finish == "length_in_reasoning")
    cap_reasoning = (finish == "length_in_reasoning") | ((finish == "length") & (answer_chars == 0) & (reasoning_chars > 0))
    leak = np.zeros(rows.num_rows, dtype=bool)
    for marker in sorted(markers):
        leak |= pc.fill_null(pc.match_substring(rows["response"], marker), False).to_numpy(zero_copy_only=False)
    fences = np.zeros(rows.num_rows, dtype=np.int64)
    for column in ("response", "reasoning"):
        fences += pc.fill_null(pc.count_substring(rows[column], FENCE), 0).to_numpy(zero_copy_only=False)

    total_chars = answer_chars + reasoning_chars
    if check_all:
        candidates = total_chars >= rules.loop_min_chars
    else:
        candidates = (total_chars >= rules.loop_min_chars) & (
            capped | (fences >= 2 * rules.loop_fence_blocks) | _long_for_group(rows, total_chars, rules)
        )
    loop_fraction = np.full(rows.num_rows, np.nan)
    loop = np.zeros(rows.num_rows, dtype=bool)
    idx = np.flatnonzero(candidates)
    if len(idx):
        texts = rows.select(["response", "reasoning"]).take(pa.array(idx)).to_pydict()
        for i, answer, thought in zip(idx, texts["response"], texts["reasoning"]):
            fraction = max(
                repeated_fraction((t or "")[-rules.loop_tail_chars :], rules.loop_ngram_chars)
                for t in (answer, thought)
            )
            loop_fraction[i] = fraction
            loop[i] = fraction >= rules.loop_repeat_fraction
    masks = {
        "silent-empty": (answer_chars == 0) & ~error & ~capped,
        "error": error,
        "rumination-loop": loop,
        "length-cap-reasoning": cap_reasoning,
        "length-cap-answer": (finish == "length") & ~cap_reasoning,
        "marker-leak": leak,
    }
    return RowFlags(masks, loop_fraction, fences)


def _long_for_group(rows: pa.Table, chars: np.ndarray, rules: AnomalyRules) -> np.ndarray:
    """Outputs far above their bench x variant median, and the longest few of each group."""
    codes, groups = group_codes(rows, ["bench", "variant"])
    out = np.zeros(len(chars), dtype=bool)
    order = np.lexsort((-chars, codes))
    bounds = np.searchsorted(codes[order], np.arange(len(groups) + 1))
    for g in range(len(groups)):
        idx = order[bounds[g] : bounds[g + 1]]
        out[idx[: rules.longest_checked]] = True
        out[idx] |= chars[idx] >= rules.outlier_factor * np.median(chars[idx])
    return out


def anomalies(rows: pa.Table, markers: set[str], rules: AnomalyRules = AnomalyRules()) -> list[dict]:
    """One row per (bench, variant, kind) that occurred. `rows` needs `primary` and `passed`."""
    if rows.num_rows == 0:
        return []
    flags = flag_rows(rows, markers, rules)
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
                "detail": _detail(kind, mine, wrong, flags),
            })
    out.extend(_scorer_suspects(rows, codes, groups, sizes, rules))
    order = {k: i for i, k in enumerate(ROW_KINDS + BENCH_KINDS)}
    return sorted(out, key=lambda r: (r["bench"], r["variant"], order[r["kind"]]))


def _detail(kind: str, idx: np.ndarray, wrong: int, flags: RowFlags) -> str:
    scored = f"{wrong} of {len(idx)} scored wrong"
    if kind == "rumination-loop":
        return f"{scored}; repeated n-gram share up to {np.nanmax(flags.loop_fraction[idx]):.2f}, up to {int(flags.fences[idx].max()) // 2} code blocks"
    return scored


def _scorer_suspects(rows: pa.Table, codes: np.ndarray, groups: list[tuple], sizes: np.ndarray, rules: AnomalyRules) -> list[dict]:
    out = []
    primary = rows["primary"].to_numpy()
    answered = text_chars(pc.utf8_trim_whitespace(rows["response"])) > 0
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
            "detail": f"strict-vs-flexible gap: {low_key} {100 * means[low_key]:.1f}% vs {high_key} "
                      f"{100 * means[high_key]:.1f}% ({gap:.1f}pp); the table uses {chosen:.1f}%",
        })
    return out


def _metric_means(rows: pa.Table, codes: np.ndarray, n_groups: int, sizes: np.ndarray) -> dict[int, dict[str, float]]:
    """Per group: mean of every score-like metric (values in [0, 1], present on nearly every row)."""
    metrics = rows["metrics"].combine_chunks()
    flat = pc.list_flatten(metrics)
    if len(flat) == 0:
        return {}
    parents = pc.list_parent_indices(metrics).to_numpy()
    keys = pc.dictionary_encode(flat.field("key"))
    key_names = keys.dictionary.to_pylist()
    key_idx = keys.indices.to_numpy()
    values = pc.fill_null(flat.field("value"), np.nan).to_numpy(zero_copy_only=False)
    cell = codes[parents] * len(key_names) + key_idx
    size = n_groups * len(key_names)
    count = np.bincount(cell, minlength=size).reshape(n_groups, -1)
    total = np.bincount(cell, weights=np.nan_to_num(values), minlength=size).reshape(n_groups, -1)
    out_of_range = np.bincount(cell, weights=~((values >= 0) & (values <= 1)), minlength=size).reshape(n_groups, -1)
    result: dict[int, dict[str, float]] = {}
    for g in range(n_groups):
        means = {}
        for k, name in enumerate(key_names):
            if name in NOT_SCORES or out_of_range[g, k] or count[g, k] < 0.9 * sizes[g]:
                continue
            means[name] = total[g, k] / count[g, k]
        result[g] = means
    return result
