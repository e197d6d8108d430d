"""What the grids behind a results store declared, read from its run manifests.

Every `runs/<run_id>/manifest.json` holds the grid it ran under key "config". From those the
comparison learns which per-variant recipe overrides were intended (so that a differing
recipe hash is a footnote, not an error), each bench's reasoning markers and, when a bench's
options name one, its primary metric (`options: {primary_metric: "exact_match,flexible-extract"}`).
Each variant's checkpoint (the run's `model_paths`, for the facts table) and the facts its grid
declares come from there too. The manifests also record each variant's canary verdict (key "canary", `{variant: {passed,
reasons, benches}}`): `canary_verdicts` keeps the newest verdict of each variant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from omk_ray.config import ConfigError, DeclaredFacts, recorded_grid
from omk_ray.results.store import ResultsStore, RunLog

log = logging.getLogger("omk_ray.analysis")

DEFAULT_MARKERS = ("<|channel>", "<channel|>", "<|channel|>", "<think>", "</think>")


@dataclass(frozen=True)
class CanaryVerdict:
    passed: bool
    stopped: bool  # failed, and the run skipped the variant's full run (`farm.canary.on_fail: skip`)
    reasons: list[str]
    run_id: str

    @property
    def label(self) -> str:
        return "passed" if self.passed else "stopped" if self.stopped else "failed (run continued)"


def canary_verdicts(runs: list[RunLog]) -> dict[str, CanaryVerdict]:
    """Variant -> its newest canary verdict (runs in order; a run that judged no canary changes nothing)."""
    out: dict[str, CanaryVerdict] = {}
    for run in runs:
        try:
            manifest = run.records().manifest
        except (OSError, ValueError):
            continue
        for variant, verdict in manifest.canary.items():
            stopped = verdict.stopped
            if stopped is None:  # recorded before verdicts said so: the run's `farm.canary.on_fail` tells
                farm = (manifest.config or {}).get("farm") or {}
                stopped = not verdict.passed and (farm.get("canary") or {}).get("on_fail", "skip") == "skip"
            out[variant] = CanaryVerdict(verdict.passed, stopped, list(verdict.reasons), run.run_id)
    return out


@dataclass
class StageStop:
    """An arm stopped by `farm.stages` (`RunManifest.stops`), as the card shows it."""

    stage: str
    n: int
    of: int
    delta_pp: float
    upper_pp: float
    text: str  # "stopped at 50/200: Δ <= -19 pp (observed -40.0 pp), 95% anytime-valid (futility, bench b)"
    run_id: str


def stage_stops(runs: list[RunLog]) -> dict[str, StageStop]:
    """Arm -> its newest stop by `farm.stages`; a later run that resumed it to full (`--resume-stopped`)
    clears it."""
    out: dict[str, StageStop] = {}
    for run in runs:
        try:
            manifest = run.records().manifest
        except (OSError, ValueError):
            continue
        for arm in manifest.resumed_stopped:
            out.pop(arm, None)
        for arm, stop in manifest.stops.items():
            out[arm] = StageStop(stop.stage, stop.n, stop.of, stop.delta_pp, stop.upper_pp, stop.text, run.run_id)
    return out


@dataclass
class EngineTime:
    """A variant's engines over every run: GPU hours (GPUs x alive), engine hours (alive) and samples made."""

    gpu_hours: float = 0.0
    engine_hours: float = 0.0
    samples: int = 0


def engine_time(runs: list[RunLog]) -> dict[str, EngineTime]:
    out: dict[str, EngineTime] = {}
    for run in runs:
        try:
            manifest = run.records().manifest
        except (OSError, ValueError):
            continue
        for e in manifest.engines:
            t = out.setdefault(e.variant, EngineTime())
            t.gpu_hours += e.gpus * e.alive_s / 3600
            t.engine_hours += e.alive_s / 3600
            t.samples += e.samples
    return out


@dataclass
class Declared:
    # (variant, bench, recipe_hash) -> the override fields that produced that recipe
    overrides: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    markers: set[str] = field(default_factory=lambda: set(DEFAULT_MARKERS))
    primary_metrics: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # run ids whose config could not be parsed
    canary: dict[str, CanaryVerdict] = field(default_factory=dict)  # variant -> newest verdict
    stops: dict[str, StageStop] = field(default_factory=dict)  # arm -> its newest stop by `farm.stages`
    engine_time: dict[str, EngineTime] = field(default_factory=dict)  # variant -> its engines over every run
    models: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # variant -> (checkpoint, revision)
    facts: dict[str, DeclaredFacts] = field(default_factory=dict)  # variant -> the facts its grid declares
    # (variant, bench, recipe_hash) -> the recipe's fields (grids of runs, and imports that recorded one)
    recipes: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    unrecorded: set[tuple[str, str]] = field(default_factory=set)  # (variant, bench) imported without a recipe

    def override(self, variant: str, bench: str, recipe_hash: str) -> dict[str, Any] | None:
        return self.overrides.get((variant, bench, recipe_hash))

    def recipe(self, variant: str, bench: str, recipe_hash: str | None) -> dict[str, Any] | None:
        """The fields of the recipe behind a hash (None: not known)."""
        return self.recipes.get((variant, bench, recipe_hash or "?"))


def read_declared(store: ResultsStore) -> Declared:
    runs = store.runs()
    declared = Declared(canary=canary_verdicts(runs), stops=stage_stops(runs), engine_time=engine_time(runs))
    _read_imported_recipes(store, declared)
    for run in store.runs():
        try:
            manifest = run.records().manifest
            config = manifest.config
            if config is None:
                continue
            grid = recorded_grid(config, f"{run.manifest_path} (config)")
        except (OSError, ValueError, ConfigError) as err:
            log.warning("run %s: config not readable, its overrides are not known: %s", run.run_id, err)
            declared.unreadable.append(run.run_id)
            continue
        for bench in grid.benches:
            metric = bench.options.get("primary_metric")
            if isinstance(metric, str):
                declared.primary_metrics[bench.name] = metric
        paths = manifest.model_paths
        for variant in grid.variants:
            if paths.get(variant.name) or variant.model:
                declared.models[variant.name] = (paths.get(variant.name) or variant.model, variant.revision)
            if variant.facts is not None:
                declared.facts[variant.name] = variant.facts
            for bench in grid.benches:
                recipe = grid.recipe_for(variant, bench)
                declared.markers.update(m for m in recipe.reasoning_markers if m)
                declared.recipes[(variant.name, bench.name, recipe.hash)] = recipe.model_dump(mode="json")
                fields = {**variant.recipe_overrides.get("*", {}), **variant.recipe_overrides.get(bench.name, {})}
                if fields:
                    declared.overrides[(variant.name, bench.name, recipe.hash)] = fields
    return declared


def _read_imported_recipes(store: ResultsStore, declared: Declared) -> None:
    """The recipes imports recorded (`benches/<bench>.json`), under their hashes; imports without one are noted."""
    from omk_ray.config import Recipe
    from omk_ray.results.importers import LogImportError, imported_recipes

    try:
        found = imported_recipes(store.root)
    except LogImportError as err:
        log.warning("%s", err)
        return
    for (variant, bench), fields in found.items():
        if fields is None:
            declared.unrecorded.add((variant, bench))
            continue
        recipe = {k: v for k, v in fields.items() if k not in ("source", "unstated")}
        try:
            declared.recipes[(variant, bench, Recipe(**recipe).hash)] = fields
        except ValueError as err:
            log.warning("recipe recorded for %s on %s is not a recipe: %s", variant, bench, err)
