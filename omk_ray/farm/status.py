"""What a results folder holds against what its grid asks: done / missing / failed, per run and engine."""

from __future__ import annotations

from dataclasses import dataclass

from omk_ray.config import recorded_grid
from omk_ray.farm.planner import make_plan
from omk_ray.results.run_records import EventKind
from omk_ray.results.store import BadFile, ResultsStore, RunLog, UnreadableResults


@dataclass
class CellStatus:
    variant: str
    bench: str
    expected: int
    done: int
    missing: int
    failed: int
    reasons: list[str]


def latest_run(store: ResultsStore) -> RunLog:
    """The newest run whose manifest can be read."""
    runs = store.runs()
    if not runs:
        unreadable = [b for b in store.unreadable if b.path.name == "manifest.json"]
        if unreadable:
            raise UnreadableResults(store.root, unreadable)
        raise FileNotFoundError(f"{store.root}: no runs recorded (no runs/*/manifest.json)")
    return runs[-1]


def runs_without_manifest(store: ResultsStore) -> list[BadFile]:
    """Run folders whose manifest.json is missing (a driver killed before it wrote one, a partial copy)."""
    if not store.runs_dir.is_dir():
        return []
    return [BadFile(p / "manifest.json", "missing") for p in sorted(store.runs_dir.iterdir())
            if p.is_dir() and not (p / "manifest.json").exists()]


def stored_counts(store: ResultsStore) -> list[dict]:
    """Samples on disk per variant x bench (what `status` can still show without a readable manifest)."""
    table = store.read(columns=["variant", "bench", "score", "error"])
    counts: dict[tuple[str, str], dict] = {}
    for row in table.to_pylist():
        c = counts.setdefault((row["variant"], row["bench"]),
                              {"variant": row["variant"], "bench": row["bench"], "stored": 0, "scored": 0, "errors": 0})
        c["stored"] += 1
        c["scored"] += row["score"] is not None
        c["errors"] += row["error"] is not None
    return [counts[k] for k in sorted(counts)]


def only_imports(store: ResultsStore) -> bool:
    """A folder that `omk-ray import` filled and no run ever wrote to: samples, no run folder, nothing unreadable."""
    runs = store.runs_dir.is_dir() and any(p.is_dir() for p in store.runs_dir.iterdir())
    return not runs and not store.unreadable and bool(store.shard_paths())


def import_status(store: ResultsStore) -> list[dict]:
    """Per imported variant x bench: samples stored, scored, errors, the log it came from and its recipe's source
    (`benches/<bench>.json`; "not recorded" for an import without one)."""
    from omk_ray.results.importers import LogImportError, read_bench_record

    rows = []
    for c in stored_counts(store):
        try:
            entry = (read_bench_record(store.root, c["bench"]).get("variants") or {}).get(c["variant"]) or {}
        except LogImportError:
            entry = {}
        recipe = entry.get("recipe", "?") if isinstance(entry, dict) else "?"
        rows.append({**c, "imported from": entry.get("imported_from") or "?",
                     "recipe": "not recorded" if recipe is None else "?" if recipe == "?" else
                     f"from {recipe.get('source') or 'the import'}"})
    return rows


def grid_status(store: ResultsStore, run: RunLog | None = None) -> list[CellStatus]:
    run = run or latest_run(store)
    records = run.records()
    manifest = records.manifest
    if manifest.config is None:
        raise UnreadableResults(store.root, [BadFile(run.manifest_path, "not a run manifest (no config)")])
    grid = recorded_grid(manifest.config, f"{run.manifest_path}:config")
    plan = make_plan(grid, store, model_paths=manifest.model_paths, variants=manifest.variants,
                     limit_docs=manifest.limit_docs, gpu=manifest.gpu)
    failures: dict[tuple[str, str], set[str]] = {}
    reasons: dict[tuple[str, str], list[str]] = {}
    for event in records.given_up():
        key = (event.variant, event.bench)
        failures.setdefault(key, set()).update(event.doc_ids)
        reasons.setdefault(key, []).append(event.reason)
    cells = []
    for w in plan.work:
        missing = {f"{d.id}#{r}" for d, r in w.samples}
        failed = missing & failures.get((w.variant, w.bench), set())
        cells.append(CellStatus(w.variant, w.bench, w.expected, w.expected - len(missing), len(missing),
                                len(failed), sorted(set(reasons.get((w.variant, w.bench), [])))))
    return cells


def engine_report(run: RunLog) -> list[dict]:
    """Per engine: GPU-hours (GPUs held x time alive), busy share, tokens per second."""
    rows = []
    for e in run.records().manifest.engines:
        busy = e.busy_s or 0.0
        rows.append({
            "engine": e.name.split("-", 2)[-1],
            "variant": e.variant,
            "host": (e.info or {}).get("host"),
            "gpu_hours": round(e.gpus * e.alive_s / 3600, 4),
            "busy": round(busy / e.alive_s, 3) if e.alive_s else 0.0,
            "samples": e.samples,
            "tokens_per_s": round(e.tokens / busy, 1) if busy else 0.0,
        })
    return rows


def stage_stops(run: RunLog) -> dict[str, str]:
    """arm -> its stop by `farm.stages` in `run` ("stopped at 50/200: Δ <= -19 pp ..."), from the events
    (live: written as each arm stops)."""
    return {e.variant: e.reason or "" for e in run.records().events if e.event == EventKind.STAGE_STOP and e.variant}
