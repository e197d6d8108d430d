"""What the job scripts share: arguments, connecting and placing, the run's line, tables.

Every job exits with omk_ray.exits.ExitCode (0 ok, 1 failed samples, 2 refused, 3 canary failed,
4 regression), as the CLI does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omk_ray.config import ConfigError, GridConfig, load_grid
from omk_ray.exits import ExitCode, error
from omk_ray.farm.planner import PlanError


class Refused(Exception):
    """The job cannot start as asked (bad config, drifted lock, grid that cannot fit)."""


def refused(err: Exception) -> ExitCode:
    """Say why the job did not start; its exit code."""
    error(f"refused: {err}")
    return ExitCode.REFUSED


def cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray cluster address (default: $RAY_ADDRESS, set by `ray job submit`; else a local Ray)")
    parser.add_argument("--gpus", type=int, default=0,
                        help="ask the autoscaler for this many GPUs and wait for them before starting")
    parser.add_argument("--gpu-timeout", type=float, default=1800, help="seconds to wait for --gpus")
    parser.add_argument("--artifacts", type=Path,
                        help="where built variants go on the node that builds them (default: the config's "
                             "`artifacts`, else RESULTS/artifacts); other nodes fetch them from there "
                             "(docs/clusters.md); a path every node sees (NFS, EFS) is used in place")
    parser.add_argument("--verbose", action="store_true",
                        help="also show third-party notices (Ray's token-authentication notice, vLLM's Triton notice)")


def load(config: Path, args: argparse.Namespace) -> GridConfig:
    from omk_ray.console import quiet_third_parties

    quiet_third_parties(getattr(args, "verbose", False))
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


def print_run(summary) -> None:
    """The run's one line, then each variant's canary verdict (`after_run` of run_and_compare)."""
    print(f"run {summary.run_id}: {summary.status}; {summary.generated} samples generated, {summary.failed} failed, "
          f"{summary.skipped} skipped, {summary.seconds:.0f} s", flush=True)
    for variant, result in sorted(summary.canary.items()):
        print(f"canary {variant}: {'passed' if result.passed else 'FAILED: ' + '; '.join(result.reasons)}",
              flush=True)


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
