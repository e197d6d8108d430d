"""The results store: a folder of Parquet shards of finished samples.

A run writes its finished samples in batches (farm/buffer.py: every `farm.flush_samples` samples
or `farm.flush_seconds`, and at its end), one shard per variant x bench of a batch; an import
writes one shard per log (replacing it when the same log is imported again).

Layout under the results root:

    samples/<variant>/<bench>/part-<shard>-<uuid>.parquet  <shard>: <run_id>-<n> from a run, a log's key from an import
    runs/<run_id>/manifest.json                            config, versions, host, start/end
    runs/<run_id>/events.jsonl                             failures and retries, as they happen
    runs/<run_id>/run.log                                  the run's log
    routing/<variant>/<bench>/part-<uuid>.parquet          experts each sample used (results/routing.py)

Every shard is written to a temporary name and renamed, so a crash leaves either the whole
shard or nothing. Any Parquet reader sees the samples with no omk-ray code, e.g.
`duckdb.sql("select * from 'RESULTS/samples/**/*.parquet'")` or `pandas.read_parquet(RESULTS + "/samples")`.

Every shard is checked against the sample schema before it is read (`shard_problem`): columns
missing (only those added later, `LATER_COLUMNS`, may be absent and read as null), columns not in
the schema, columns of another type, rows whose variant or bench is not the folder they sit in.
Such a shard is never counted: like one that cannot be read (a truncated copy, a disk error) it raises
`UnreadableResults`, naming each bad file and what is wrong with it; a store opened with
`skip_unreadable=True` (`omk-ray status`) leaves such shards out and lists them in
`unreadable`. `check()` reads every file (`omk-ray doctor`) and `quarantine()` moves the bad
ones to `quarantine/<time>/`, so that the next run generates their samples again.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import ValidationError

from omk_ray.files import DiskFull, disk_full, write_bytes_atomic, write_text_atomic, written_aside
from omk_ray.redact import scrub_all
from omk_ray.results.run_records import EventKind, RunEvent, RunManifest, RunRecords
from omk_ray.results.schema import COLUMNS, NEVER_RUNS, RESUME_KEY, SAMPLE_SCHEMA, schema_problems


@dataclass(frozen=True)
class StoredSample:
    doc_hash: str | None  # None: stored before documents were hashed (or imported)
    error_kind: str | None  # set: the sample cannot run (NEVER_RUNS)
    prompt_tokens: int | None


@dataclass(frozen=True)
class BadFile:
    path: Path
    problem: str


class UnreadableResults(ValueError):
    """Files of a results folder that cannot be read; the message names each and what is wrong."""

    def __init__(self, root: Path, bad: list[BadFile]):
        self.bad = bad
        lines = "\n  ".join(f"{b.path}: {b.problem}" for b in bad)
        super().__init__(f"{root}: {len(bad)} unreadable file(s):\n  {lines}\nMove them aside with "
                         f"`omk-ray doctor {root} --quarantine` (the next run generates their samples again).")


class ResultsStore:
    def __init__(self, root: str | Path, skip_unreadable: bool = False):
        self.root = Path(root)
        self.samples_dir = self.root / "samples"
        self.runs_dir = self.root / "runs"
        self.skip_unreadable = skip_unreadable
        self.unreadable: list[BadFile] = []  # what a tolerant store left out so far
        self._checked: dict[Path, tuple[tuple[int, int], str | None]] = {}  # path -> (mtime, size), problem

    # -- samples -----------------------------------------------------------------------------

    def write_shard(self, table: pa.Table, variant: str, bench: str, shard_id: str) -> Path:
        folder = self.samples_dir / variant / bench
        folder.mkdir(parents=True, exist_ok=True)
        return write_parquet(table.cast(SAMPLE_SCHEMA), folder / f"part-{shard_id}-{uuid.uuid4().hex[:8]}.parquet")

    def shard_paths(self) -> list[Path]:
        if not self.samples_dir.is_dir():
            return []
        return sorted(p for p in self.samples_dir.glob("*/*/part-*.parquet"))

    def shard_problem(self, path: Path) -> str | None:
        """What keeps this shard from being read as samples (see `shard_problem`), remembered while the file stays."""
        try:
            stat = path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
        except OSError as err:
            return _problem(err, path)
        known = self._checked.get(path)
        if known is None or known[0] != seen:
            known = self._checked[path] = (seen, shard_problem(path))
        return known[1]

    def readable_shards(self) -> list[Path]:
        """The shards that conform to the sample schema and their folder. The others raise
        `UnreadableResults`, or with `skip_unreadable` are left out and listed in `unreadable`."""
        paths = self.shard_paths()
        bad = [BadFile(p, problem) for p in paths if (problem := self.shard_problem(p))]
        if not bad:
            return paths
        if not self.skip_unreadable:
            raise UnreadableResults(self.root, bad)
        self.unreadable.extend(b for b in bad if b not in self.unreadable)
        left_out = {b.path for b in bad}
        return [p for p in paths if p not in left_out]

    def read(self, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
        """All samples, one row per key: the newest (see `newest_per_key`) where a key was stored twice
        (an error row then its retry, a rerun, a second import)."""
        paths = self.readable_shards()
        if not paths:
            return SAMPLE_SCHEMA.empty_table() if columns is None else SAMPLE_SCHEMA.empty_table().select(columns)
        wanted = None if columns is None else list(dict.fromkeys([*columns, *RESUME_KEY, "started_at"]))
        try:
            table = _scan(paths, wanted, filter)
        except (pa.ArrowException, OSError) as err:
            bad = self.find_unreadable(paths, err)
            if not self.skip_unreadable:
                raise UnreadableResults(self.root, bad) from None
            self.unreadable.extend(b for b in bad if b not in self.unreadable)
            good = [p for p in paths if p not in {b.path for b in bad}]
            table = _scan(good, wanted, filter) if good else SAMPLE_SCHEMA.empty_table().select(wanted or COLUMNS)
        table = newest_per_key(table)
        return table if columns is None else table.select(columns)

    def find_unreadable(self, paths: list[Path], err: BaseException | None = None) -> list[BadFile]:
        """The shards among `paths` that do not conform or cannot be read whole, each with its problem."""
        bad = []
        for path in paths:
            problem = self.shard_problem(path)
            if problem:
                bad.append(BadFile(path, problem))
                continue
            try:
                _scan([path], None, None)
            except (pa.ArrowException, OSError) as problem:
                bad.append(BadFile(path, _problem(problem, path)))
        return bad or [BadFile(self.samples_dir, _problem(err) if err else "unreadable")]

    def check(self) -> list[BadFile]:
        """Every file of the store that cannot be read: shards (read whole) and run manifests."""
        bad = [b for b in self.find_unreadable(self.shard_paths()) if b.path != self.samples_dir]
        for path in sorted(self.runs_dir.glob("*/manifest.json")) if self.runs_dir.is_dir() else []:
            problem = _read_manifest(path)[1]
            if problem:
                bad.append(BadFile(path, problem))
        return bad

    def quarantine(self, bad: list[BadFile]) -> Path:
        """Move bad files to `quarantine/<time>/<their path under the root>`; returns that folder."""
        folder = self.root / "quarantine" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        for b in bad:
            target = folder / b.path.relative_to(self.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(b.path, target)
        return folder

    def stored_samples(self) -> dict[tuple, "StoredSample"]:
        """Per key, what the newest row knows of its inputs, for the keys that need no new generation
        while those inputs stay the same: rows without an error, and samples that can never run
        (`error_kind` in NEVER_RUNS). A sample whose generation failed otherwise is run again."""
        table = self.read(columns=[*RESUME_KEY, "error", "error_kind", "doc_hash", "prompt_tokens"])
        done = pc.or_kleene(pc.is_null(table["error"]), pc.is_in(table["error_kind"], pa.array(NEVER_RUNS)))
        table = table.filter(pc.fill_null(done, False))
        facts = zip(table["doc_hash"].to_pylist(), table["error_kind"].to_pylist(), table["prompt_tokens"].to_pylist())
        return {key: StoredSample(*fact) for key, fact in zip(iter_keys(table), facts)}

    def done_keys(self) -> set[tuple]:
        return set(self.stored_samples())

    # -- runs --------------------------------------------------------------------------------

    def new_run(self, run_id: str | None = None) -> "RunLog":
        run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        return RunLog(self.runs_dir / run_id, run_id)

    def runs(self) -> list["RunLog"]:
        """The runs recorded, oldest first; with `skip_unreadable`, those with a readable manifest."""
        if not self.runs_dir.is_dir():
            return []
        runs = [RunLog(p, p.name) for p in sorted(self.runs_dir.iterdir()) if (p / "manifest.json").exists()]
        if not self.skip_unreadable:
            return runs
        readable = []
        for run in runs:
            problem = _read_manifest(run.manifest_path)[1]
            if problem:
                bad = BadFile(run.manifest_path, problem)
                if bad not in self.unreadable:
                    self.unreadable.append(bad)
            else:
                readable.append(run)
        return readable


ERROR_FIELDS = frozenset({"error", "reason", "reasons", "ended_because"})  # free text: where a secret may be echoed


class RunLog:
    """One invocation of `omk-ray run`: its manifest and its event log.

    A run keeps room on its device for its manifest's last write (`reserve_room`, released by
    `release_room`): a run that fills the disk still records how it ended (`ended_because`).
    """

    ROOM = ".manifest-room"

    def __init__(self, folder: Path, run_id: str):
        self.folder = folder
        self.run_id = run_id
        self.manifest_path = folder / "manifest.json"
        self.events_path = folder / "events.jsonl"
        self.log_path = folder / "run.log"
        self.room_path = folder / self.ROOM
        self.secrets: tuple[str, ...] = ()  # values scrubbed from events besides the environment's keys (`redact`)

    def write_manifest(self, manifest: RunManifest | dict[str, Any]) -> None:
        """The one writer of the manifest: whatever is written reads back as a `RunManifest`. On a full
        device it gives up the room the run reserved and tries once more (`DiskFull` if that fails too)."""
        if not isinstance(manifest, RunManifest):
            manifest = RunManifest.model_validate(manifest)
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest.model_dump(), indent=2, default=str)
        try:
            write_text_atomic(self.manifest_path, text)
        except DiskFull:
            if not self.room_path.exists():
                raise
            self.release_room()
            write_text_atomic(self.manifest_path, text)

    def reserve_room(self, nbytes: int) -> None:
        """Hold `nbytes` on the run folder's device for the manifest's last write (`DiskFull` if there is none)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.room_path, bytes(nbytes))

    def release_room(self) -> None:
        self.room_path.unlink(missing_ok=True)

    def records(self) -> RunRecords:
        """The one reader of the run: its manifest and events, typed (run_records.py)."""
        events = []
        for e in self.events():
            try:
                events.append(RunEvent.model_validate(e))
            except ValidationError:
                continue  # not an event (a line some other tool wrote): skipped like a torn line
        return RunRecords(manifest=RunManifest.model_validate(self.manifest()), events=events)

    def manifest(self) -> dict[str, Any]:
        """The manifest's JSON as stored (code reads `records()`)."""
        manifest, problem = _read_manifest(self.manifest_path)
        if problem:
            raise UnreadableResults(self.folder.parent.parent, [BadFile(self.manifest_path, problem)])
        return manifest

    def event(self, kind: EventKind | str, **fields: Any) -> None:
        """Append one event; `kind` must be an `EventKind` (a ValueError names any other). Secrets are
        scrubbed first (`omk_ray.redact`; an engine's error may echo its API key): known secret values
        everywhere, key-shaped tokens too in the error texts (ERROR_FIELDS)."""
        record = RunEvent(event=EventKind(kind), time=datetime.now(timezone.utc).isoformat(), **fields)
        self.folder.mkdir(parents=True, exist_ok=True)
        fields = {k: scrub_all(v, self.secrets, shapes=k in ERROR_FIELDS)
                  for k, v in record.model_dump(exclude_unset=True).items()}
        line = json.dumps(fields, default=str) + "\n"
        append_line(self.events_path, line)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        out = []
        for line in self.events_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed driver
        return out


def append_line(path: Path, line: str) -> None:
    """Append `line` in one write; on a full device the file is cut back to where it was (no torn
    line for the next one to run into) and `DiskFull` names it."""
    data = line.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise DiskFull(path)
        except OSError as err:
            os.ftruncate(fd, end)
            if disk_full(err):
                raise DiskFull(path) from err
            raise
    finally:
        os.close(fd)


def write_parquet(table: pa.Table, final: Path) -> Path:
    """Write `final` aside and rename it into place: a crash leaves the whole file or nothing."""
    with written_aside(final) as tmp:
        pq.write_table(table, tmp)
    return final


def shard_problem(path: Path) -> str | None:
    """What keeps a shard from being read as samples, or None: a file that is not Parquet, a schema
    that is not the sample schema (`schema_problems`), rows keyed to another variant or bench than
    the folder `samples/<variant>/<bench>/` it sits in."""
    try:
        problems = schema_problems(pq.read_schema(path))
        if problems:
            return "not in the sample schema: " + "; ".join(problems)
        keys = pq.read_table(path, columns=["variant", "bench"])
    except (pa.ArrowException, OSError) as err:
        return _problem(err, path)
    for column, folder in (("variant", path.parent.parent.name), ("bench", path.parent.name)):
        others = [v for v in pc.unique(keys[column]).to_pylist() if v != folder]
        if others:
            return f"rows of {column} {', '.join(map(repr, others))} in the folder of {column} {folder!r}"
    return None


def _scan(paths: list[Path], columns: list[str] | None, filter: Any) -> pa.Table:
    return ds.dataset([str(p) for p in paths], schema=SAMPLE_SCHEMA, format="parquet").to_table(
        columns=columns, filter=filter
    )


def _problem(err: BaseException, path: Path | None = None) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.replace(f"Could not open Parquet input source '{path}': ", "")
    return f"not a readable Parquet shard ({text})"


def _read_manifest(path: Path) -> tuple[dict[str, Any], str | None]:
    """(the manifest, None), or ({}, what is wrong with the file)."""
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return {}, f"not valid JSON ({err})"
    except (OSError, UnicodeDecodeError) as err:
        return {}, f"cannot be read ({err})"
    if not isinstance(manifest, dict) or "run_id" not in manifest:
        return {}, "not a run manifest (a JSON object with run_id, config, ...)"
    try:
        RunManifest.model_validate(manifest)
    except ValidationError as err:
        first = err.errors()[0]
        return {}, f"not a run manifest ({'.'.join(map(str, first['loc']))}: {first['msg']})"
    return manifest, None


def newest_per_key(table: pa.Table) -> pa.Table:
    """One row per sample key (RESUME_KEY): the one started last (`started_at`), and of rows started
    at the same moment the one read last (shards in name order, rows in file order: write order).
    The rows kept stay in the order they were read. Every reader of samples goes through here."""
    n = table.num_rows
    if n == 0:
        return table
    started = table.column("started_at")
    started = pc.fill_null(started, pa.scalar(0, started.type))  # unknown start: older than any known one
    when = pa.table({"t": started, "row": pa.array(np.arange(n))})
    order = pc.sort_indices(when, [("t", "ascending"), ("row", "ascending")]).to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)  # position of each row in (started_at, write order)
    keyed = table.select(list(RESUME_KEY)).append_column("_rank", pa.array(rank))
    newest = keyed.group_by(list(RESUME_KEY), use_threads=False).aggregate([("_rank", "max")])
    if newest.num_rows == n:
        return table
    return table.take(pa.array(np.sort(order[newest.column("_rank_max").to_numpy()])))


def iter_keys(table: pa.Table) -> Iterable[tuple]:
    return zip(*(table.column(c).to_pylist() for c in RESUME_KEY))
