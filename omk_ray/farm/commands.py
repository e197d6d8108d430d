"""`omk-ray lock`, `omk-ray preflight`; `omk_ray.cli` calls `register(app)` at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def lock(
        config: Path = typer.Argument(..., help="grid config of a canonical suite (YAML)"),
        relock: bool = typer.Option(False, "--relock", help="overwrite a lock the config no longer matches"),
        check: bool = typer.Option(False, "--check", help="only check the config against its lock (exit 1 on drift)"),
        out: Optional[Path] = typer.Option(None, "--lock-file", help="lock file (default: CONFIG's name with .lock.json)"),
    ) -> None:
        """Freeze a canonical suite next to its config (configs/canonical.yaml -> configs/canonical.lock.json): recipe hashes, dataset revisions and document hashes, weights and engine versions.

        A locked run (jobs/canonical_rerun.py, or check_lock in code) refuses to start when the config or the installed engines no longer match the lock. Rerunning `omk-ray lock` on a matching config changes nothing; on a drifted one it lists the differences and exits 1 unless --relock.
        """  # noqa: E501
        from omk_ray.cli import console, load
        from omk_ray.exits import ExitCode, fail
        from omk_ray.farm.lock import LockError, lock_drift, lock_path, read_lock, write_lock
        from omk_ray.farm.planner import PlanError

        grid = load(config)
        path = out or lock_path(config)
        try:
            if not path.exists():
                if check:
                    fail(f"{path}: no lock file; create it with `omk-ray lock {config}`", ExitCode.FAILED)
                write_lock(grid, path)
                console.print(f"locked {len(grid.variants)} variants x {len(grid.benches)} benches: {path}")
                return
            drift = lock_drift(grid, read_lock(path))
        except (LockError, PlanError) as err:
            fail(str(err))
        if not drift:
            console.print(f"{config} matches its lock {path}")
            return
        for line in drift:
            console.print(f"[yellow]drift[/] {line}", highlight=False)
        if check or not relock:
            fail(f"{config} no longer matches {path} ({len(drift)} differences)"
                 + ("" if check else "; rerun with --relock to record the new state"), ExitCode.FAILED)
        write_lock(grid, path)
        console.print(f"relocked: {path}")

    @app.command()
    def preflight(
        config: Path = typer.Argument(..., help="grid config (YAML)"),
        address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local Ray: this machine)"),
        as_json: bool = typer.Option(False, "--json", help="print every node's checks as JSON"),
    ) -> None:
        """Check every node of the cluster for this grid: engine versions against the lock, GPU driver and
        CUDA, free disk for the artifacts, the code sandbox's isolation level, the checkpoints and hub
        models it must read, the HF token's presence. A table per node; exit 2 naming each node not ready.

        `omk-ray run` does the same on a cluster of several nodes before anything starts.
        """
        import json
        from dataclasses import asdict

        from omk_ray.cli import console, load
        from omk_ray.exits import fail
        from omk_ray.farm.preflight import refusal, run_preflight, tables
        from omk_ray.farm.runner import connect

        grid = load(config)
        connect(address)
        results = run_preflight(grid)
        if as_json:
            print(json.dumps([asdict(r) for r in results], indent=2))
        else:
            for table in tables(results):
                console.print(table)
        problem = refusal(results)
        if problem:
            fail(problem)
        warnings = sum(c.status == "warn" for r in results for c in r.checks)
        console.print(f"preflight: {len(results)} node(s) ready for {grid.name}"
                      + (f" ({warnings} warning(s))" if warnings else ""))
