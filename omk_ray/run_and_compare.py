"""Run a grid, then compare its arms with the baseline and write the report: what `omk-ray demo`,
jobs/ablation_grid.py and jobs/canonical_rerun.py each do, written once.

    outcome = run_and_compare(grid, results, baseline, report_dir, variants=None, after_run=None)
    outcome.summary        the run (farm.runner.RunSummary)
    outcome.canary_failed  variant -> reasons, for every variant whose canary failed in this run
    outcome.arms           the variants compared with the baseline
    outcome.comparison     the comparison; None when the baseline failed its canary or no arm is left
    outcome.report         write_report's paths (markdown, html, card, ...), or None

The jobs leave a variant whose canary failed out of the comparison (and compare nothing when it is
the baseline); the demo keeps it in (`leave_out_failed=False`: the report shows it as stopped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from omk_ray.config import GridConfig

if TYPE_CHECKING:
    from omk_ray.analysis.compare import Comparison
    from omk_ray.farm.runner import RunSummary


@dataclass
class Outcome:
    summary: RunSummary
    canary_failed: dict[str, list[str]]
    arms: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    report: dict[str, Path] | None = None


def run_and_compare(
    grid: GridConfig,
    results: str | Path,
    baseline: str,
    report_dir: str | Path | None = None,
    variants: list[str] | None = None,
    after_run: Callable[[RunSummary], None] | None = None,
    leave_out_failed: bool = True,
    **run_options: Any,
) -> Outcome:
    """Run `variants` (default: all) of `grid` into `results` (`run_options` go to `run_grid`), call
    `after_run(summary)`, then compare the arms with `baseline` into `report_dir` (default RESULTS/report)."""
    from omk_ray.analysis.compare import CompareOptions, compare
    from omk_ray.analysis.report import write_report
    from omk_ray.farm.runner import run_grid

    results = Path(results)
    summary = run_grid(grid, results, variants=variants, **run_options)
    if after_run is not None:
        after_run(summary)
    failed = {v: r.reasons for v, r in sorted(summary.canary.items()) if not r.passed}  # as the run judged them
    left_out = set(failed) if leave_out_failed else set()
    outcome = Outcome(summary, failed)
    if baseline in left_out:
        return outcome
    chosen = variants if variants is not None else [v.name for v in grid.variants]
    outcome.arms = [n for n in chosen if n != baseline and n not in left_out]
    if outcome.arms:
        outcome.comparison = compare(results, CompareOptions(baseline=baseline, variants=outcome.arms))
        outcome.report = write_report(outcome.comparison, report_dir or results / "report")
    return outcome
