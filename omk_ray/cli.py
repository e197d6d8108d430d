"""The `omk-ray` command. Farm commands live here; each area adds its own through `register(app)`."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.table import Table

from omk_ray.config import ConfigError, GridConfig, load_grid
from omk_ray.console import output_console
from omk_ray.exits import ExitCode, error, fail

app = typer.Typer(
    name="omk-ray",
    help="Evaluation and ablation farm for expert-pruned MoE models, on Ray.\n\n"
    "Typical flow: `omk-ray plan GRID`, `omk-ray run GRID --results DIR`, `omk-ray status DIR`, "
    "`omk-ray compare DIR --baseline NAME`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = output_console()
err_console = output_console(stderr=True)

AREAS = ("farm", "variants", "analysis", "benches", "results", "toy", "llamacpp", "view")


def load(config: Path) -> GridConfig:
    try:
        return load_grid(config)
    except ConfigError as err:
        fail(str(err))


def print_table(rows: list[dict], title: str | None = None) -> None:
    if not rows:
        console.print(f"{title or 'table'}: (empty)")
        return
    table = Table(title=title, title_justify="left")
    for key in rows[0]:
        table.add_column(str(key), justify="right" if isinstance(rows[0][key], (int, float)) else "left",
                         overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@app.command()
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


@app.command()
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
) -> None:
    """Run a grid: generate every missing sample on Ray engine actors and store it as Parquet.

    Rerunning the same command resumes: only samples not yet in RESULTS are generated. One run
    writes a results folder at a time: a second one is refused (exit code 2), or waits with --wait.
    """
    from omk_ray.farm.builds import BuildFailed
    from omk_ray.farm.planner import PlanError
    from omk_ray.farm.runner import RayStartFailed, run_grid
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
                           show_progress=not no_progress, wait=wait)
    except (PlanError, BuildFailed, UnreadableResults, FolderBusy, RayStartFailed) as err:
        fail(str(err))
    console.print(
        f"run {summary.run_id}: {summary.status}; generated {summary.generated} samples "
        f"({summary.expected - summary.planned} already stored, {summary.failed} failed (stored as error rows), "
        f"{summary.skipped} skipped by the canary) in {summary.seconds:.1f} s"
    )
    report_canary(summary)
    console.print(f"results: {summary.results}  (log: {summary.results}/runs/{summary.run_id}/run.log)")
    if summary.failed or summary.skipped:
        raise typer.Exit(ExitCode.FAILED)


def report_canary(summary) -> None:
    from omk_ray.results.store import ResultsStore

    run_log = next(r for r in ResultsStore(summary.results).runs() if r.run_id == summary.run_id)
    for variant, result in run_log.records().manifest.canary.items():
        verdict = "[green]passed[/]" if result.passed else "[red]FAILED[/]"
        console.print(f"canary {variant}: {verdict}")
        for reason in result.reasons:
            console.print(f"  - {reason}")


@app.command()
def status(results: Path = typer.Argument(..., help="results folder of a run")) -> None:
    """Done / missing / failed samples per variant x bench (with each variant's canary verdict), the runs so far, and engine usage.

    Files that cannot be read (a truncated shard, a broken manifest) are named and left out;
    their samples count as missing (`omk-ray doctor RESULTS --quarantine` moves them aside).
    """  # noqa: E501
    from omk_ray.analysis.declared import canary_verdicts
    from omk_ray.farm.planner import PlanError
    from omk_ray.farm.status import engine_report, grid_status, latest_run, runs_without_manifest, stored_counts
    from omk_ray.results.folder_lock import holder, stale_record
    from omk_ray.results.store import ResultsStore, UnreadableResults

    store = ResultsStore(results, skip_unreadable=True)
    store.unreadable.extend(runs_without_manifest(store))
    try:
        run_log = latest_run(store)
        cells = grid_status(store, run_log)
    except (FileNotFoundError, PlanError, ConfigError, UnreadableResults) as err:
        _status_without_grid(store, results, err)
    canary = canary_verdicts(store.runs())
    print_table([{"variant": c.variant, "bench": c.bench, "expected": c.expected, "done": c.done,
                  "missing": c.missing, "failed": c.failed,
                  "canary": canary[c.variant].label if c.variant in canary else ""} for c in cells], title="samples")
    for c in cells:
        for reason in c.reasons:
            console.print(f"[red]failed[/] {c.variant}/{c.bench}: {reason}")
    for variant, verdict in canary.items():
        if not verdict.passed:
            console.print(f"[red]canary {verdict.label}[/] {variant} (run {verdict.run_id}): {'; '.join(verdict.reasons)}")
    writer = holder(results)
    runs = [r.records() for r in store.runs()]
    print_table([{"run": r.run_id, "status": r.status(writer.run_id if writer else None),
                  "started": (r.manifest.started_at or "")[:19], "seconds": r.manifest.seconds,
                  "generated": r.manifest.generated_samples, "failed": r.manifest.failed_samples} for r in runs],
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


@app.command()
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


for _area in AREAS:
    importlib.import_module(f"omk_ray.{_area}.commands").register(app)


def main() -> None:  # pragma: no cover
    sys.exit(app())
