"""Variants with a `build:` block are built (or reused by fingerprint) as Ray tasks before the run."""

from __future__ import annotations

from pathlib import Path

import ray

from omk_ray.config import GridConfig


class BuildFailed(RuntimeError):
    """One or more arms could not be built; the arms that were built stay in the artifact root."""


def artifact_root(grid: GridConfig, results_root: str | Path) -> Path:
    return Path(grid.artifacts) if grid.artifacts else Path(results_root) / "artifacts"


def build_variants(grid: GridConfig, root: Path, variants: list[str] | None = None) -> dict[str, str]:
    """name -> checkpoint folder for every chosen variant with a build block (Ray must be connected)."""
    from omk_ray.variants.artifacts import ensure_variant

    wanted = [v for v in grid.variants if v.build and (variants is None or v.name in variants)]
    if not wanted:
        return {}
    # The config's local paths were made absolute when it was loaded (config.LOCAL_PATHS): no base folder here.
    task = ray.remote(num_cpus=1, max_retries=0)(ensure_variant)
    refs = {v.name: task.remote(v.build, str(root)) for v in wanted}
    paths, errors = {}, []
    for name, ref in refs.items():
        try:
            paths[name] = str(ray.get(ref))
        except Exception as err:  # a bad drop map, a missing tensor, an unreachable base
            cause = getattr(err, "cause", None) or err
            errors.append(f"variant {name!r}: {type(cause).__name__}: {cause}")
    if errors:
        raise BuildFailed("could not build:\n  " + "\n  ".join(errors))
    return paths
