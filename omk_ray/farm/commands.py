"""The farm's commands (`omk-ray plan`, `run`, `status`, `demo`, `lock`, `preflight`); `omk_ray.cli`
calls `register(app)` at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn, Optional

import typer

from omk_ray.config import ConfigError, GridConfig, load_grid
from omk_ray.console import output_console
from omk_ray.console import print_table as _print_table
from omk_ray.exits import ExitCode, error, fail

console = output_console()
err_console = output_console(stderr=True)


def register(app: typer.Typer) -> None:
    for command in (plan, run, status, demo, lock, preflight):
        app.command()(command)


def load(config: Path) -> GridConfig:
    """The grid, or its every problem in one report (exit 2): where its fields do not validate, the
    checks `plan` makes (bench data, checkpoints, builds) run on the parts that do, in the same report."""
    try:
        return load_grid(config)
    except ConfigError as err:
        fail("\n  ".join([str(err), *plan_problems(err.partial)]))


def plan_problems(grid: GridConfig | None) -> list[str]:
    from omk_ray.farm.planner import PlanError, read_benches

    if grid is None:
        return []
    try:
        read_benches(grid)
    except PlanError as err:
        return err.problems
    return []


def print_table(rows: list[dict], title: str | None = None) -> None:
    _print_table(rows, title, console=console)


def plan(
    config: Path = typer.Argument(..., help="grid config (YAML)"),
    results: Optional[Path] = typer.Option(None, help="results folder: count only what is still missing there"),
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="only these variants"),
    limit: Optional[int] = typer.Option(None, help="first N docs of every bench (smoke runs)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address: also show where each engine goes"),
) -> None:
    """Show what a run would do: samples per variant x bench, engines, estimated tokens.

    With --address, also the placement of every engine on the cluster's nodes (a grid that
    cannot fit, e.g. a tensor-parallel group larger than any node, is refused here).
    """
    from omk_ray.farm.planner import PlanError, describe, make_plan
    from omk_ray.results.store import ResultsStore, UnreadableResults

    grid = load(config)
    try:
        the_plan = make_plan(grid, ResultsStore(results) if results else None, variants=variant, limit_docs=limit)
    except (PlanError, UnreadableResults) as err:
        fail(str(err))
    rows = describe(the_plan)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print_table(rows, title=f"plan: {grid.name}")
    if address:
        from omk_ray.farm.placement import cluster_nodes, describe_placements, place
        from omk_ray.farm.runner import connect

        connect(address)
        try:
            print_table(describe_placements(place(grid, cluster_nodes(), variants=variant)), title="placement")
        except PlanError as err:
            fail(str(err))
    engines = {v.name: f"{v.engine} tp={v.engine_args.tensor_parallel_size}" for v in grid.variants}
    stale = sum(w.stale for w in the_plan.work)
    why = f" ({stale} stored before but generated again: their document changed)" if stale else ""
    console.print(
        f"{len(engines)} variants ({', '.join(f'{k}: {e}' for k, e in engines.items())}); "
        f"{the_plan.missing} of {the_plan.expected} samples to generate{why}, longest-expected first; "
        f"est. {sum(r['est_tokens'] for r in rows):,} completion tokens"
    )
    from omk_ray.farm.preflight import sandbox_here
    from omk_ray.farm.sizes import human_bytes

    console.print("engine start timeouts (farm.engine_start_timeout_s, else from the checkpoint): " + ", ".join(
        f"{v} {the_plan.start_timeout(v):.0f} s ({human_bytes(the_plan.checkpoint_bytes[v])})"
        for v in the_plan.model_paths), highlight=False)
    sandbox = sandbox_here(grid)
    if sandbox is not None:  # said up front: where namespaces are refused, programs run with resource limits only
        color = {"ok": "green", "warn": "yellow", "FAIL": "red"}[sandbox.status]
        console.print(f"code sandbox on this machine: [{color}]{sandbox.status}[/] {sandbox.detail} "
                      "(`omk-ray preflight GRID --address ADDR` checks every node of a cluster)", highlight=False)


def run(
    config: Path = typer.Argument(..., help="grid config (YAML)"),
    results: Path = typer.Option(..., "--results", "-r", help="results folder (created; reruns resume it)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local Ray)"),
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="only these variants"),
    limit: Optional[int] = typer.Option(None, help="first N docs of every bench (smoke runs)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress display"),
    locked: bool = typer.Option(False, "--locked", help="refuse to start if CONFIG drifted from CONFIG.lock.json "
                                "(see `omk-ray lock`)"),
    wait: bool = typer.Option(False, "--wait", help="if another run is writing RESULTS, wait for it to finish "
                              "instead of refusing"),
    resume_stopped: bool = typer.Option(False, "--resume-stopped", help="run the variants an earlier run stopped "
                                        "(canary or farm.stages) to full"),
) -> None:
    """Run a grid: generate every missing sample on Ray engine actors and store it as Parquet.

    Rerunning the same command resumes: only samples not yet in RESULTS are generated. One run
    writes a results folder at a time: a second one is refused (exit code 2), or waits with --wait.
    """
    from omk_ray.farm.builds import BuildFailed
    from omk_ray.farm.planner import PlanError
    from omk_ray.farm.runner import RayStartFailed, run_grid
    from omk_ray.files import disk_full
    from omk_ray.results.folder_lock import FolderBusy, holder
    from omk_ray.results.store import UnreadableResults

    grid = load(config)
    if locked:
        from omk_ray.farm.lock import check_lock

        try:
            check_lock(grid, variants=variant)
        except ConfigError as err:
            fail(str(err))
    busy = holder(results) if wait else None
    if busy:
        err_console.print(f"waiting for {busy} to finish writing {results} ...")
    try:
        summary = run_grid(grid, results, address=address, variants=variant, limit_docs=limit,
                           show_progress=not no_progress, wait=wait, resume_stopped=resume_stopped)
    except (PlanError, BuildFailed, UnreadableResults, FolderBusy, RayStartFailed) as err:
        fail(str(err))
    except OSError as err:
        if not disk_full(err):
            raise
        fail(f"{err}: the run stopped (results folder {results}); the samples stored before are whole and kept, "
             "and a rerun generates the rest once there is room")
    console.print(
        f"run {summary.run_id}: {summary.status}; generated {summary.generated} samples "
        f"({summary.expected - summary.planned} already stored, {summary.failed} failed (stored as error rows), "
        f"{summary.skipped} skipped by the canary or stages) in {summary.seconds:.1f} s"
    )
    report_canary(summary)
    console.print(f"results: {summary.results}  (log: {summary.results}/runs/{summary.run_id}/run.log)")
    if summary.failed or summary.skipped:
        raise typer.Exit(ExitCode.FAILED)


def report_canary(summary) -> None:
    for variant, result in summary.canary.items():  # as the run judged them (farm/gate.py)
        verdict = "[green]passed[/]" if result.passed else "[red]FAILED[/]"
        console.print(f"canary {variant}: {verdict}")
        for reason in result.reasons:
            console.print(f"  - {reason}")
    for arm, stop in summary.stops.items():  # farm.stages (farm/stages.py)
        console.print(f"[yellow]stopped[/] {arm}: {stop['text']}", highlight=False)


def status(results: Path = typer.Argument(..., help="results folder of a run")) -> None:
    """Done / missing / failed samples per variant x bench (with each variant's canary verdict), the runs so far, and engine usage.

    Files that cannot be read (a truncated shard, a broken manifest) are named and left out;
    their samples count as missing (`omk-ray doctor RESULTS --quarantine` moves them aside).

    \b
    The engines table (the latest run's engines), column by column:
      gpu_hours     GPUs the engine held x the hours it was alive (loading and idle included): what it cost
      busy          share of its alive time with at least one request in flight (0.5: busy half the time)
      samples       samples it generated
      tokens_per_s  completion tokens per second while busy
    A run still going shows no seconds or counts yet.
    """  # noqa: E501
    from omk_ray.analysis.declared import canary_verdicts
    from omk_ray.farm.planner import PlanError
    from omk_ray.farm.status import (
        engine_report, grid_status, import_status, latest_run, only_imports, runs_without_manifest, stage_stops,
    )
    from omk_ray.results.folder_lock import holder, stale_record
    from omk_ray.results.store import ResultsStore, UnreadableResults

    store = ResultsStore(results, skip_unreadable=True)
    store.unreadable.extend(runs_without_manifest(store))
    try:
        run_log = latest_run(store)
        cells = grid_status(store, run_log)
    except (FileNotFoundError, PlanError, ConfigError, UnreadableResults) as err:
        if only_imports(store):  # filled by `omk-ray import`: no grid, so nothing is expected or missing
            print_table(import_status(store), title="imported samples (no run: nothing expected or missing)")
            return
        _status_without_grid(store, results, err)
    canary = canary_verdicts(store.runs())
    stops = stage_stops(run_log)
    print_table([{"variant": c.variant, "bench": c.bench, "expected": c.expected, "done": c.done,
                  "missing": c.missing, "failed": c.failed,
                  "canary": canary[c.variant].label if c.variant in canary else "",
                  **({"stage": stops[c.variant].split(":")[0] if c.variant in stops else ""} if stops else {})}
                 for c in cells], title="samples")
    for c in cells:
        for reason in c.reasons:
            console.print(f"[red]failed[/] {c.variant}/{c.bench}: {reason}")
    for variant, text in stops.items():
        console.print(f"[yellow]stopped[/] {variant} (run {run_log.run_id}): {text}", highlight=False)
    for variant, verdict in canary.items():
        if not verdict.passed:
            console.print(f"[red]canary {verdict.label}[/] {variant} (run {verdict.run_id}): {'; '.join(verdict.reasons)}")
    writer = holder(results)
    runs = [r.records() for r in store.runs()]
    print_table([{"run": r.run_id, "status": r.status(writer.run_id if writer else None),
                  "started": (r.manifest.started_at or "")[:19], "seconds": _shown(r.manifest.seconds),
                  "generated": _shown(r.manifest.generated_samples), "failed": _shown(r.manifest.failed_samples)}
                 for r in runs],
                title="runs")
    for r in runs:
        if r.manifest.ended_because:
            console.print(f"[red]run {r.run_id} ended[/] on {r.manifest.ended_because[:300]}", highlight=False)
    for e in run_log.records().failures()[-10:]:
        console.print(f"[yellow]{e.event}[/] {e.variant} {e.bench or ''}: {(e.error or '')[:200]}")
    print_table(engine_report(run_log), title=f"engines of run {run_log.run_id}")
    if writer is not None:
        console.print(f"{writer} is writing this folder now", highlight=False)
    elif (dead := stale_record(results)) is not None:
        console.print(f"[yellow]stale[/] {dead} died holding this folder; the next run takes it over", highlight=False)
    for bad in store.unreadable:
        console.print(f"[red]unreadable[/] {bad.path}: {bad.problem}", highlight=False)
    if store.unreadable:
        console.print(f"{len(store.unreadable)} unreadable file(s) left out (their samples count as missing); "
                      f"move them aside with `omk-ray doctor {results} --quarantine`")


def _shown(value):
    """A run's figure, blank while it is still running (not known yet)."""
    return "" if value is None else value


def _status_without_grid(store, results: Path, err: Exception) -> NoReturn:
    """No readable run to plan against: show the samples on disk and name what cannot be read."""
    from omk_ray.farm.status import stored_counts

    counts = stored_counts(store) if store.samples_dir.is_dir() else []
    if not counts and not store.unreadable:
        fail(str(err))  # nothing here at all
    print_table(counts, title="samples stored (no readable run manifest: expected counts unknown)")
    for bad in store.unreadable:
        console.print(f"[red]unreadable[/] {bad.path}: {bad.problem}", highlight=False)
    error(f"{results}: cannot show the grid's status: {err}")
    raise typer.Exit(ExitCode.FAILED)


def demo(
    out: Path = typer.Option(Path("demo_out"), help="folder for the demo's models, config and results"),
    fresh: bool = typer.Option(False, help="delete OUT first instead of resuming it"),
    grid: str = typer.Option("main", help="main (configs/demo.yaml: pruned arms on vLLM) or gguf "
                             "(configs/demo_gguf.yaml: GGUF twins on llama.cpp; needs `make llamacpp`)"),
) -> None:
    """Build tiny MoE variants, run a small grid on a local Ray cluster with real engines, summarise."""
    from omk_ray.demo import DEMO_CONFIG, GGUF_COHORTS, GGUF_CONFIG, run_demo

    if grid not in ("main", "gguf"):
        fail(f"--grid {grid!r}: choose main or gguf")
    if grid == "gguf":
        run_demo(out, fresh=fresh, config=GGUF_CONFIG, cohorts=GGUF_COHORTS)
    else:
        run_demo(out, fresh=fresh, config=DEMO_CONFIG)


def lock(
    config: Path = typer.Argument(..., help="grid config of a canonical suite (YAML)"),
    relock: bool = typer.Option(False, "--relock", help="overwrite a lock the config no longer matches"),
    check: bool = typer.Option(False, "--check", help="only check the config against its lock (exit 1 on drift)"),
    out: Optional[Path] = typer.Option(None, "--lock-file", help="lock file (default: CONFIG's name with .lock.json)"),
) -> None:
    """Freeze a canonical suite next to its config (configs/canonical.yaml -> configs/canonical.lock.json): recipe hashes, dataset revisions and document hashes, weights and engine versions.

    A locked run (jobs/canonical_rerun.py, or check_lock in code) refuses to start when the config or the installed engines no longer match the lock. Rerunning `omk-ray lock` on a matching config changes nothing; on a drifted one it lists the differences and exits 1 unless --relock.
    """  # noqa: E501
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
    from dataclasses import asdict

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
