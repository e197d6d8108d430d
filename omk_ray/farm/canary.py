"""The canary of a run: `judge_canary` reads a variant's canary sample from the store (the newest
row of each) and applies the rules of `omk_ray.analysis.canary`; the scheduler calls it as soon
as the sample's last row is written. `omk-ray canary` (`omk_ray.farm.runner.run_canary`) is the
same path stopped after the verdict.
"""

from __future__ import annotations

from omk_ray.analysis.canary import CanaryResult, CanaryRules, evaluate_canary


def judge_canary(store, plan, variant: str, rules: CanaryRules) -> CanaryResult:
    """The verdict on a variant's canary sample as the store holds it now."""
    from omk_ray.farm.planner import canary_filter

    where = canary_filter(plan, variant)
    return evaluate_canary(store.read(filter=where) if where is not None else [], rules)
