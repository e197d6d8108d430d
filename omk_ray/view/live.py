"""The live grid: per arm and bench, done / expected (as `omk-ray status` counts them), the canary
verdict, the running score and the paired Δ with its interval (the scoreboard of `compare` on the
samples stored so far), and the engines of the newest run with their throughput."""

from __future__ import annotations

from dataclasses import dataclass, field

from omk_ray.analysis.compare import Comparison
from omk_ray.analysis.declared import canary_verdicts
from omk_ray.config import ConfigError
from omk_ray.farm.planner import PlanError
from omk_ray.farm.status import engine_report, grid_status, latest_run, stage_stops
from omk_ray.results.folder_lock import holder
from omk_ray.results.store import ResultsStore, UnreadableResults


ENGINE_EVENTS = {"engine_starting": "starting", "engine_started": "started", "engine_start_failed": "start failed",
                 "engine_died": "died", "engine_stalled": "stalled"}


@dataclass
class Live:
    run_id: str | None
    status: str  # running, finished, failed, died, or "unknown" (no readable run)
    cells: list[dict] = field(default_factory=list)
    engines: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why a part of the page is missing

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def done(self) -> int:
        return sum(c["done"] for c in self.cells)

    @property
    def expected(self) -> int:
        return sum(c["expected"] for c in self.cells)


def live_grid(root, baseline: str, comparison: Comparison | None, why: str | None) -> Live:
    store = ResultsStore(root, skip_unreadable=True)
    try:
        run = latest_run(store)
        records = run.records()
    except (FileNotFoundError, UnreadableResults, ValueError) as err:
        return Live(None, "unknown", problems=[str(err)])
    writer = holder(store.root)
    live = Live(run.run_id, str(records.status(writer.run_id if writer else None)))
    try:
        cells = grid_status(store, run)
    except (PlanError, ConfigError, UnreadableResults, FileNotFoundError, ValueError) as err:
        live.problems.append(f"expected counts unknown: {err}")
        cells = []
    farm = (records.manifest.config or {}).get("farm") or {}
    canary_on = (farm.get("canary") or {}).get("enabled", True)
    stages_on = (farm.get("stages") or {}).get("enabled", False)
    stops = stage_stops(run)  # arms `farm.stages` stopped, with the rule and numbers (live, from the events)
    canary = {v: verdict.label for v, verdict in canary_verdicts(store.runs()).items()}
    engine: dict[str, str] = {}
    for event in records.events:  # this run's verdicts and engines as they happen (the manifest has them at its end)
        if event.event == "canary" and event.variant:
            canary[event.variant] = "passed" if getattr(event, "passed", False) else "failed"
        elif str(event.event) in ENGINE_EVENTS and event.variant:
            engine[event.variant] = ENGINE_EVENTS[str(event.event)]
    board = {(r["variant"], r["bench"]): r for r in comparison.rows("scoreboard")} if comparison else {}
    head = {(r["variant"], r["bench"]): r for r in comparison.rows("headline")} if comparison else {}
    for c in cells:
        scored = board.get((c.variant, c.bench))
        own = head.get((c.variant, c.bench))
        live.cells.append({
            "variant": c.variant, "bench": c.bench, "expected": c.expected, "done": c.done, "failed": c.failed,
            "engine": engine.get(c.variant, ""),
            "canary": canary.get(c.variant, ("pending" if live.running else "") if canary_on else "off"),
            "stage": stops.get(c.variant) or ("" if stages_on else "off"),
            "score": own["score"] if own and own["status"] == "scored" else None,
            "n": own["n"] if own else 0,
            "baseline": c.variant == baseline,
            "delta_pp": scored["delta_pp"] if scored else None,
            "ci_low_pp": scored["ci_low_pp"] if scored else None,
            "ci_high_pp": scored["ci_high_pp"] if scored else None,
            "paired_n": scored["n"] if scored else 0,
        })
    if why:
        live.problems.append(f"no scores yet: {why}")
    live.engines = engine_report(run)
    return live
