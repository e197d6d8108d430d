"""What the grids behind a results store declared, read from its run manifests.

Every `runs/<run_id>/manifest.json` holds the grid it ran under key "config". From those the
comparison learns which per-variant recipe overrides were intended (so that a differing
recipe hash is a footnote, not an error), each bench's reasoning markers and, when a bench's
options name one, its primary metric (`options: {primary_metric: "exact_match,flexible-extract"}`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from omk_ray.config import ConfigError, parse_grid
from omk_ray.results.store import ResultsStore

log = logging.getLogger("omk_ray.analysis")

DEFAULT_MARKERS = ("<|channel>", "<channel|>", "<|channel|>", "<think>", "</think>")


@dataclass
class Declared:
    # (variant, bench, recipe_hash) -> the override fields that produced that recipe
    overrides: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    markers: set[str] = field(default_factory=lambda: set(DEFAULT_MARKERS))
    primary_metrics: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # run ids whose config could not be parsed

    def override(self, variant: str, bench: str, recipe_hash: str) -> dict[str, Any] | None:
        return self.overrides.get((variant, bench, recipe_hash))


def read_declared(store: ResultsStore) -> Declared:
    declared = Declared()
    for run in store.runs():
        try:
            config = run.manifest().get("config")
            if config is None:
                continue
            grid = parse_grid(config, source=f"{run.manifest_path} (config)")
        except (OSError, ValueError, ConfigError) as err:
            log.warning("run %s: config not readable, its overrides are not known: %s", run.run_id, err)
            declared.unreadable.append(run.run_id)
            continue
        for bench in grid.benches:
            metric = bench.options.get("primary_metric")
            if isinstance(metric, str):
                declared.primary_metrics[bench.name] = metric
        for variant in grid.variants:
            for bench in grid.benches:
                recipe = grid.recipe_for(variant, bench)
                declared.markers.update(m for m in recipe.reasoning_markers if m)
                fields = {**variant.recipe_overrides.get("*", {}), **variant.recipe_overrides.get(bench.name, {})}
                if fields:
                    declared.overrides[(variant.name, bench.name, recipe.hash)] = fields
    return declared
