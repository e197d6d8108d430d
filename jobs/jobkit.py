"""What the job scripts share: arguments, connecting and placing, canary outcomes, tables."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omk_ray.config import ConfigError, GridConfig, load_grid
from omk_ray.farm.planner import PlanError
from omk_ray.results.store import ResultsStore

# Exit codes of every job (Ray Jobs reports the job FAILED on any non-zero code).
OK, FAILED_SAMPLES, REFUSED, CANARY_FAILED, REGRESSION = 0, 1, 2, 3, 4


class Refused(Exception):
    """The job cannot start as asked (bad config, drifted lock, grid that cannot fit)."""


def cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster address (default: $RAY_ADDRESS, set by `ray job submit`; else a local Ray)")
    parser.add_argument("--gpus", type=int, default=0,
                        help="ask the autoscaler for this many GPUs and wait for them before starting")
    parser.add_argument("--gpu-timeout", type=float, default=1800, help="seconds to wait for --gpus")
    parser.add_argument("--artifacts", type=Path,
                        help="where built variants go (default: the config's `artifacts`, else RESULTS/artifacts); "
                             "on a multi-node cluster a path every node sees (NFS, EFS)")


def load(config: Path, args: argparse.Namespace) -> GridConfig:
    try:
        grid = load_grid(config)
    except ConfigError as err:
        raise Refused(str(err)) from None
    if args.artifacts:
        grid = grid.model_copy(update={"artifacts": str(args.artifacts.resolve())})
    return grid


def connect_and_place(grid: GridConfig, args: argparse.Namespace, variants: list[str] | None = None) -> None:
    """Join the cluster, wait for GPUs if asked, print where each engine goes; refuse a grid that cannot fit."""
    from omk_ray.farm.placement import cluster_nodes, describe_placements, place, request_gpus
    from omk_ray.farm.runner import connect

    connect(args.address)
    nodes = request_gpus(grid, args.gpus, args.gpu_timeout, variants=variants) if args.gpus else cluster_nodes()
    try:
        placements = place(grid, nodes, variants)
    except PlanError as err:
        raise Refused(str(err)) from None
    print_rows("placement", describe_placements(placements))


def canary_failures(results: Path, run_id: str) -> dict[str, list[str]]:
    """Variants whose canary failed in that run -> the reasons (the farm skipped their full run)."""
    run = next(r for r in ResultsStore(results).runs() if r.run_id == run_id)
    judged = run.manifest().get("canary") or {}
    for variant, result in sorted(judged.items()):
        print(f"canary {variant}: {'passed' if result['passed'] else 'FAILED: ' + '; '.join(result['reasons'])}",
              flush=True)
    return {v: r["reasons"] for v, r in judged.items() if not r["passed"]}


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"== {title}")
    if not rows:
        print("(none)")
        return
    keys = list(rows[0])
    width = {k: max(len(str(k)), *(len(str(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(str(k).ljust(width[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k)).ljust(width[k]) for k in keys))
    sys.stdout.flush()
