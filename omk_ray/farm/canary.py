"""The canary of a run: `judge_canary` reads a variant's canary sample from the store (the newest
row of each) and applies the rules of `omk_ray.analysis.canary`; the scheduler calls it as soon
as the sample's last row is written. `omk-ray canary` (`run_canary`) is the same path stopped
after the verdict.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from omk_ray.analysis.canary import CanaryResult, CanaryRules, evaluate_canary, rules_for


def judge_canary(store, plan, variant: str, rules: CanaryRules) -> CanaryResult:
    """The verdict on a variant's canary sample as the store holds it now."""
    from omk_ray.farm.planner import canary_filter

    where = canary_filter(plan, variant)
    return evaluate_canary(store.read(filter=where) if where is not None else [], rules)


def run_canary(
    grid,
    variant: str,
    results_root: str | Path | None = None,
    docs: int = 8,
    address: str | None = None,
    rules: CanaryRules | None = None,
    show_progress: bool = False,
) -> CanaryResult:
    """Generate `docs` problems of every bench (the canary sample) for `variant`, then judge them.

    With a results folder the samples stay there (a full run later resumes from them); without
    one they go to a temporary folder that is deleted afterwards.
    """
    if results_root is None:
        with tempfile.TemporaryDirectory(prefix="omk-ray-canary-") as tmp:
            return run_canary(grid, variant, tmp, docs, address, rules, show_progress)
    from omk_ray.farm.planner import make_plan
    from omk_ray.farm.runner import run_grid
    from omk_ray.results.store import ResultsStore

    grid.variant(variant)  # KeyError names an unknown variant before anything starts
    spec = grid.farm.canary.model_copy(update={"docs": docs, "enabled": True})
    grid = grid.model_copy(update={"farm": grid.farm.model_copy(update={"canary": spec})})
    rules = rules or rules_for(grid, variant)
    summary = run_grid(grid, results_root, address=address, variants=[variant], show_progress=show_progress,
                       canary_rules={variant: rules}, canary_only=True)
    store = ResultsStore(results_root)
    run = next(r for r in store.runs() if r.run_id == summary.run_id)
    manifest = run.manifest()
    verdict = manifest.get("canary", {}).get(variant)
    if verdict is not None:
        result = CanaryResult.from_dict(verdict)
    else:  # every canary sample was stored already: judge what is there
        plan = make_plan(grid, model_paths=manifest.get("model_paths"), variants=[variant], canary_only=True,
                         gpu=manifest.get("gpu"))
        result = judge_canary(store, plan, variant, rules)
    if summary.failed:
        result.passed = False
        result.reasons.append(f"{summary.failed} samples failed to generate (see {run.log_path})")
    (run.folder / "canary.json").write_text(json.dumps({"variant": variant, **result.to_dict()}, indent=2))
    return result
