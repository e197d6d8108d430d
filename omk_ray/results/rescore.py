"""Score stored responses again with the current scorers, without generating anything.

For each bench (optionally one), every stored row's response is scored by the bench's current
scorer; a row whose scorer raises gets that error (and only that row). A row whose score or
scorer version changes keeps its previous score in the metric map as
`score@<previous scorer version>`. Shards are rewritten only once every shard of their bench
has been scored: a bench that cannot be scored whole (its definition or data missing, a shard
unreadable, no sandbox) is skipped with the reason and none of its shards changes. Each shard
is rewritten in place, atomically (write aside, then rename).

Where a bench's definition comes from, first found wins:
  1. the grid given with `--config`;
  2. the grids of the runs recorded in the store (`runs/*/manifest.json`);
  3. what an import recorded (`benches/<bench>.json`, with the imported docs beside it).
A variant imported with its own record of the bench (`variants` in `benches/<bench>.json`) is
scored by that record, never by another variant's or a run's grid (only `--config` overrides it):
each variant's rows are rescored under the primary metric they were imported with. `variants`
limits the rescoring to those variants; the others' shards are not touched.

A stored score changes only when the scorer or its inputs changed: the scorer's version differs
from the one the row records, the row's document differs from the bench's (its `doc_hash` or its
target), or the row held a scorer error. A row that the same scorer now scores differently from
the same inputs (a scorer that changed without a new version, a bench option edited) keeps its
stored score: it is reported as `kept` and written only with `force`. Every change is in the
report (`BenchRescore.changes`) and `confirm(reports)`, when given, sees them all before anything
is written: it returns False to write nothing (`omk-ray rescore` prints them, and writes more
than 10 only with `--yes`).

A rescoring that writes holds the results folder's writer lock (`results/folder_lock.py`) from
start to end: it is refused while a run or an import writes the folder (or waits, `wait`).
An lm-eval bench is scored from its docs (imported docs first, else its data); a loglikelihood
task's row (multiple choice, loglikelihood, rolling) from its stored (log-likelihood, is_greedy) pairs
through the task's filters and process_results, without an engine, and only while its document is
the one it was scored on (a changed `doc_hash`: the bench is skipped, its texts were others); a code task
imported from lm-eval (kind `program_tests`) runs the stored program (the task's filtered
response) followed by its tests (the row's target) in the sandbox.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from omk_ray.benches import Doc, Score, make_bench, score_guarded
from omk_ray.benches.base import ScorerUnavailable
from omk_ray.benches.sources import DataError
from omk_ray.config import BenchSpec, GridConfig, recorded_grid
from omk_ray.engines.base import Completion
from omk_ray.results.folder_lock import writing
from omk_ray.results.importers import (
    PROGRAM_TESTS, TOKENS_MISSING, LogImportError, bench_sidecar_paths, variant_bench_specs,
)
from omk_ray.results.schema import SAMPLE_SCHEMA, make_row
from omk_ray.results.store import ResultsStore, shard_problem, write_parquet

KEEP_FLAGS = (TOKENS_MISSING, "thinking_budget_hit")


class RescoreError(RuntimeError):
    """A bench that cannot be scored again; the message says why."""


@dataclass(frozen=True)
class ScoreChange:
    """One stored score that rescoring changes (or, `kept`, would change without a reason)."""

    doc_id: str
    repeat: int
    old: float | None
    new: float | None
    why: str  # what changed: the scorer's version, the document, a scorer error before; or "forced"


@dataclass
class BenchRescore:
    bench: str
    variant: str = ""
    rows: int = 0
    changed: int = 0  # scores that change (written unless a dry run or refused)
    errors: int = 0
    scorer_versions: set[str] = field(default_factory=set)
    shards: int = 0
    skipped: str | None = None  # why this bench could not be scored again
    changes: list[ScoreChange] = field(default_factory=list)
    kept: list[ScoreChange] = field(default_factory=list)  # same scorer, same inputs, another score: not written
    restamped: int = 0  # rows whose score stays but whose scorer version or metrics are brought up to date


# Scores a shard's rows at once (code benches run their programs in parallel); a failed row's
# entry is the exception.
Scorer = Callable[[list[dict[str, Any]]], list[Score | Exception]]


@dataclass(frozen=True)
class RowScorer:
    score: Scorer
    version: str
    inputs_changed: Callable[[dict[str, Any]], str | None] = lambda row: None  # what of the row's doc changed


def rescore(
    results_root: str | Path,
    bench: str | None = None,
    grid: GridConfig | None = None,
    dry_run: bool = False,
    variants: list[str] | None = None,
    wait: bool = False,
    force: bool = False,
    confirm: Callable[[list[BenchRescore]], bool] | None = None,
) -> list[BenchRescore]:
    """Rescore every variant's shards of every bench (or of `bench`, of `variants`); one report per
    bench and variant. Writes nothing with `dry_run`, or when `confirm(reports)` returns False;
    otherwise holds the folder's writer lock. `force` writes the kept changes too."""
    if dry_run:
        return _rescore(ResultsStore(results_root), bench, grid, True, variants, force, confirm)
    with writing(results_root, "rescore", wait=wait):
        return _rescore(ResultsStore(results_root), bench, grid, False, variants, force, confirm)


def _rescore(store: ResultsStore, bench: str | None, grid: GridConfig | None, dry_run: bool,
             variants: list[str] | None, force: bool, confirm) -> list[BenchRescore]:
    shards = [p for p in store.shard_paths() if (bench is None or p.parent.name == bench)
              and (variants is None or p.parent.parent.name in variants)]
    if not shards:
        where = f"bench {bench!r} in " if bench else ""
        who = f"variants {', '.join(variants)} " if variants else ""
        raise RescoreError(f"no samples of {who}{where}{store.root}")
    specs = bench_specs(store, grid)
    try:
        own = {} if grid is not None else variant_bench_specs(store.root)  # --config overrides what imports recorded
    except LogImportError as err:
        raise RescoreError(str(err)) from None
    by_bench: dict[tuple[str, str], list[Path]] = {}
    for shard in shards:
        by_bench.setdefault((shard.parent.name, shard.parent.parent.name), []).append(shard)
    reports, scored = [], []
    for (name, variant), paths in sorted(by_bench.items()):
        report = BenchRescore(name, variant)
        spec = own.get((variant, name)) or specs.get(name)
        try:
            if spec is None:
                raise RescoreError(
                    f"bench {name!r}: no definition found (give `--config GRID`, or import it with `omk-ray import`)"
                )
            scorer = make_scorer(store, spec)
            changes = [(path, _rescored(path, scorer, report, force)) for path in paths]  # nothing written yet
        except RescoreError as err:
            if bench is not None:  # the one bench asked for: its failure is the answer
                raise
            reports.append(BenchRescore(name, variant, skipped=str(err)))  # none of its shards changed
            continue
        reports.append(report)
        scored.append((report, changes))
    if dry_run or (confirm is not None and not confirm(reports)):
        return reports
    for report, changes in scored:  # written once every bench asked for has scored: a refusal writes nothing
        for path, changed in changes:
            if changed:
                _apply(path, changed)
                report.shards += 1
    return reports


def bench_specs(store: ResultsStore, grid: GridConfig | None = None) -> dict[str, BenchSpec]:
    specs: dict[str, BenchSpec] = {}
    folder = store.root / "benches"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        spec = json.loads(path.read_text())["spec"]  # the first import's: variants it did not record use it
        specs[spec["name"]] = BenchSpec(**spec)
    for run in store.runs():  # later runs win over earlier ones and over imports
        config = run.records().manifest.config
        if config:
            specs.update({b.name: b for b in recorded_grid(config, str(run.manifest_path)).benches})
    if grid is not None:
        specs.update({b.name: b for b in grid.benches})
    return specs


def make_scorer(store: ResultsStore, spec: BenchSpec) -> RowScorer:
    """The bench's scorer of stored rows, its version, and what tells a row's document changed."""
    if spec.kind == PROGRAM_TESTS:  # the row holds its tests (target): its inputs are the row's own
        return RowScorer(_program_scorer(spec), f"omk-ray-sandbox:{spec.options.get('task', spec.name)}")
    try:
        bench = make_bench(spec)
    except (KeyError, ValueError, DataError) as err:
        raise RescoreError(f"bench {spec.name!r}: {err}") from None
    imported = _imported_docs(store, spec.name)
    docs: dict[str, Doc] | None = None

    def doc_for(doc_id: str) -> Doc:
        nonlocal docs
        if doc_id in imported:
            return Doc(id=doc_id, messages=[], meta={"doc": imported[doc_id]})
        if docs is None:
            try:
                docs = {d.id: d for d in bench.docs()}
            except (OSError, ValueError, DataError) as err:
                raise RescoreError(f"bench {spec.name!r}: cannot load its docs to score against: {err}") from None
        if doc_id not in docs:
            raise RescoreError(f"bench {spec.name!r}: doc {doc_id!r} is not in the bench's data")
        return docs[doc_id]

    try:
        version, scored = bench.scorer_version, bench.scores_text
    except (OSError, ValueError, DataError) as err:
        raise RescoreError(f"bench {spec.name!r}: {err}") from None

    def score(rows: list[dict[str, Any]]) -> list[Score | Exception]:
        if scored:  # the stored log-likelihoods are of the texts the row's document asked then
            for row in rows:
                _same_texts(spec.name, row, None if row["doc_id"] in imported else doc_for(row["doc_id"]))
        pairs = [(doc_for(r["doc_id"]), _stored_completion(r, scored)) for r in rows]
        return score_guarded(bench, pairs)

    def inputs_changed(row: dict[str, Any]) -> str | None:
        if row["doc_id"] in imported:
            return None  # the doc as imported with the row: it changes only with the row
        doc = doc_for(row["doc_id"])
        if row.get("doc_hash") and row["doc_hash"] != doc.hash:
            return "its document changed"
        if row.get("target") is not None and doc.target is not None and row["target"] != doc.target:
            return f"its target changed ({row['target']!r} -> {doc.target!r})"
        return None

    return RowScorer(score, version, inputs_changed)


def _stored_completion(row: dict[str, Any], scored: bool) -> Completion:
    """What the engine answered, as stored: the response, or a scored row's (log-likelihood, is_greedy) pairs
    (a rolling document imported from lm-eval's logs has no greedy flag: lm-eval's scorer does not read it)."""
    if not scored:
        return Completion(text=row["response"] or "", reasoning=row.get("reasoning"))
    lls = row.get("choice_logprobs")
    greedy = row.get("choice_greedy") or [False] * len(lls or [])
    return Completion(text="", finish_reason="scored", loglikelihoods=list(zip(lls, greedy)) if lls else None)


def _same_texts(bench: str, row: dict[str, Any], doc: Doc | None) -> None:
    """A scored row's log-likelihoods are of its document's texts then: rescoring them against a document
    asked otherwise now (another num_fewshot, prompt or data) would give the new document scores it never had."""
    if doc is not None and row.get("doc_hash") and row["doc_hash"] != doc.hash:
        raise RescoreError(
            f"bench {bench!r}: doc {row['doc_id']!r} of variant {row.get('variant')!r} was scored on other texts "
            f"than the bench asks now (its document changed: num_fewshot, the task's prompt or its data), so its "
            f"stored log-likelihoods cannot be rescored; run the bench again")


def _imported_docs(store: ResultsStore, bench: str) -> dict[str, dict]:
    _, docs_path = bench_sidecar_paths(store.root, bench)
    if not docs_path.is_file():
        return {}
    out = {}
    for line in docs_path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out[record["doc_id"]] = record["doc"]
    return out


def _program_scorer(spec: BenchSpec) -> Scorer:
    """Run the stored program, then the row's target (the task's test code), in the sandbox."""
    from omk_ray.benches.sandbox import Program, Sandbox

    sandbox = Sandbox(workers=2, isolation=spec.options.get("isolation", "auto"))
    metric = spec.options.get("primary_metric") or "pass@1,none"

    def score(rows: list[dict[str, Any]]) -> list[Score | Exception]:
        programs = [r.get("extracted_answer") or "" for r in rows]
        outcomes = sandbox.run_many(Program(program=p, test_code=r.get("target") or "") for p, r in zip(programs, rows))
        refused = next((o for o in outcomes if o.setup_failed), None)
        if refused is not None:
            raise RescoreError(f"bench {spec.name!r}: the code sandbox cannot run here ({refused.reason})")
        return [
            Score(score=float(o.passed), correct=o.passed, extracted=p, metrics={metric: float(o.passed)},
                  isolation=o.isolation)
            for p, o in zip(programs, outcomes)
        ]

    return score


def _rescored(path: Path, scorer: RowScorer, report: BenchRescore, force: bool = False) -> dict[int, dict[str, Any]]:
    """The new values of the rows of one shard that change (row index -> columns); nothing is written.
    A score changes only for a reason (`_why`); without one it is `kept` (unless `force`)."""
    problem = shard_problem(path)
    if problem:
        raise RescoreError(f"{path}: unreadable shard ({problem}); see `omk-ray doctor`")
    try:
        rows = pq.read_table(path, schema=SAMPLE_SCHEMA).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise RescoreError(f"{path}: unreadable shard ({err}); see `omk-ray doctor`") from None
    report.rows += len(rows)
    version = scorer.version
    scorable = [(i, r) for i, r in enumerate(rows)  # no response (nor log-likelihoods): nothing to score
                if not (r["error"] and not r["response"] and not r.get("choice_logprobs"))]
    changes = {}
    for (i, row), new in zip(scorable, scorer.score([r for _, r in scorable])):
        if isinstance(new, ScorerUnavailable):
            raise RescoreError(f"bench {path.parent.name!r}: {new}")
        old_score, old_version, old_error = row["score"], row["scorer_version"] or "unknown", row["error"]
        error = old_error
        if isinstance(new, Exception):
            report.errors += 1
            error = f"scorer error: {type(new).__name__}: {new}"
            new = Score(score=0.0, correct=False, metrics={})
        elif (old_error or "").startswith("scorer error"):
            error = None  # the current scorer copes with this response
        new_score = None if error else new.score  # an error row's score is null (make_row)
        report.scorer_versions.add(old_version)
        if _same(old_score, new_score) and error == old_error:
            if old_version == version:
                continue
            report.restamped += 1  # the same score, now under the current scorer's version
        else:
            why = _why(row, version, scorer.inputs_changed)
            change = ScoreChange(row["doc_id"], row["repeat"], old_score, new_score, why or "forced")
            if why is None and not force:
                report.kept.append(change)
                continue
            report.changes.append(change)
            report.changed += 1
        metrics = {k: v for k, v in dict(row["metrics"] or []).items() if "@" in k or k in KEEP_FLAGS}
        metrics.update(new.metrics)
        if old_version != version and old_score is not None:
            metrics.setdefault(f"score@{old_version}", old_score)
        changes[i] = dict(score=new_score, correct=None if error else new.correct, extracted_answer=new.extracted,
                          metrics=metrics, scorer_version=version, isolation=new.isolation, error=error)
    return changes


def _why(row: dict[str, Any], version: str, inputs_changed: Callable[[dict[str, Any]], str | None]) -> str | None:
    """Why a stored score may change: its scorer or its inputs changed (None: neither did)."""
    if (row["scorer_version"] or "unknown") != version:
        return f"scorer {row['scorer_version'] or 'unknown'} -> {version}"
    if (row["error"] or "").startswith("scorer error"):
        return "its scorer failed before"
    return inputs_changed(row)


def _apply(path: Path, changes: dict[int, dict[str, Any]]) -> None:
    rows = pq.read_table(path, schema=SAMPLE_SCHEMA).to_pylist()
    for i, values in changes.items():
        rows[i] = make_row(**{**rows[i], **values})
    _replace_shard(path, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _replace_shard(path: Path, table: pa.Table) -> None:
    """Rewrite a shard under its own name (readers keep seeing one copy of each row)."""
    write_parquet(table, path)
