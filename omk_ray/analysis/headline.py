"""Headline scores: each variant's own score on every problem it has of a bench, with its standard error.

The scoreboard pairs a variant with the baseline on their shared problems; a headline is the
number a model card cites for one model alone (the baseline's is its score on the full bench).
The standard error is lm-eval's: the sample standard deviation of the problem scores over
sqrt(n). A variant stopped by its canary has no headline score: its row says so, with the
verdict's reasons and how many canary samples it left.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from omk_ray.analysis.declared import CanaryVerdict
from omk_ray.analysis.samples import group_codes


def headline(problems: pa.Table, baseline: str, variants: list[str], benches: list[str],
             canary: dict[str, CanaryVerdict], stopped_samples: dict[tuple[str, str], int]) -> list[dict]:
    """One row per bench x variant (baseline first). `problems`: per_problem's table (score, pass_rate);
    `stopped_samples`: (variant, bench) -> samples stored for each variant stopped by its canary."""
    codes, groups = group_codes(problems, ["variant", "bench"])
    score = problems["score"].to_numpy(zero_copy_only=False)
    passed = problems["pass_rate"].to_numpy(zero_copy_only=False) > 0.5
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(groups) + 1))
    at = {key: order[bounds[g] : bounds[g + 1]] for g, key in enumerate(groups)}
    rows = []
    for bench in benches:
        for variant in [baseline, *variants]:
            verdict = canary.get(variant)
            row = {
                "bench": bench, "variant": variant, "role": "baseline" if variant == baseline else "variant",
                "n": 0, "score": float("nan"), "stderr_pp": float("nan"), "correct": 0, "binary": False,
                "status": "scored",
                "canary": verdict.label if verdict else "", "canary_reasons": verdict.reasons if verdict else [],
            }
            if verdict is not None and verdict.stopped:
                row.update(status="stopped by canary", n=stopped_samples.get((variant, bench), 0))
            elif (variant, bench) in at:
                idx = at[(variant, bench)]
                values = score[idx]
                stderr = float(100 * values.std(ddof=1) / np.sqrt(len(idx))) if len(idx) > 1 else float("nan")
                row.update(n=len(idx), score=float(100 * values.mean()), correct=int(passed[idx].sum()), stderr_pp=stderr,
                           binary=bool(np.all((values == 0) | (values == 1))))
            else:
                continue
            rows.append(row)
    return rows
