"""The results store: a folder of Parquet shards, one per finished work unit.

Layout under the results root:

    samples/<variant>/<bench>/part-<unit>-<uuid>.parquet   one shard per finished unit
    runs/<run_id>/manifest.json                            config, versions, host, start/end
    runs/<run_id>/events.jsonl                             failures and retries, as they happen
    runs/<run_id>/run.log                                  the run's log
    routing/<variant>/<bench>/part-<uuid>.parquet          experts each sample used (results/routing.py)

Every shard is written to a temporary name and renamed, so a crash leaves either the whole
shard or nothing. Any Parquet reader sees the samples with no omk-ray code, e.g.
`duckdb.sql("select * from 'RESULTS/samples/**/*.parquet'")` or `pandas.read_parquet(RESULTS + "/samples")`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from omk_ray.results.schema import RESUME_KEY, SAMPLE_SCHEMA


class ResultsStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.samples_dir = self.root / "samples"
        self.runs_dir = self.root / "runs"

    # -- samples -----------------------------------------------------------------------------

    def write_shard(self, table: pa.Table, variant: str, bench: str, unit_id: str) -> Path:
        folder = self.samples_dir / variant / bench
        folder.mkdir(parents=True, exist_ok=True)
        return write_parquet(table.cast(SAMPLE_SCHEMA), folder / f"part-{unit_id}-{uuid.uuid4().hex[:8]}.parquet")

    def shard_paths(self) -> list[Path]:
        if not self.samples_dir.is_dir():
            return []
        return sorted(p for p in self.samples_dir.glob("*/*/part-*.parquet"))

    def read(self, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
        """All samples. A correct run never writes a key twice; if shards overlap, one row per key is kept."""
        paths = self.shard_paths()
        if not paths:
            return SAMPLE_SCHEMA.empty_table() if columns is None else SAMPLE_SCHEMA.empty_table().select(columns)
        wanted = None if columns is None else list(dict.fromkeys([*columns, *RESUME_KEY, "started_at"]))
        table = ds.dataset([str(p) for p in paths], schema=SAMPLE_SCHEMA, format="parquet").to_table(
            columns=wanted, filter=filter
        )
        table = _dedupe(table)
        return table if columns is None else table.select(columns)

    def done_keys(self) -> set[tuple]:
        """Keys of the samples stored without an error: a sample whose generation failed is run again."""
        return set(iter_keys(self.read(columns=list(RESUME_KEY), filter=pc.field("error").is_null())))

    # -- runs --------------------------------------------------------------------------------

    def new_run(self, run_id: str | None = None) -> "RunLog":
        run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        return RunLog(self.runs_dir / run_id, run_id)

    def runs(self) -> list["RunLog"]:
        if not self.runs_dir.is_dir():
            return []
        return [RunLog(p, p.name) for p in sorted(self.runs_dir.iterdir()) if (p / "manifest.json").exists()]


class RunLog:
    """One invocation of `omk-ray run`: its manifest and its event log."""

    def __init__(self, folder: Path, run_id: str):
        self.folder = folder
        self.run_id = run_id
        self.manifest_path = folder / "manifest.json"
        self.events_path = folder / "events.jsonl"
        self.log_path = folder / "run.log"

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, self.manifest_path)

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def event(self, kind: str, **fields: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"time": datetime.now(timezone.utc).isoformat(), "event": kind, **fields}
        with self.events_path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")

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


def write_parquet(table: pa.Table, final: Path) -> Path:
    """Write `final` aside and rename it into place: a crash leaves the whole file or nothing."""
    tmp = final.with_name(f".tmp-{final.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


def _dedupe(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    keyed = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    last = keyed.group_by(list(RESUME_KEY), use_threads=False).aggregate([("_row", "max")])
    if last.num_rows == table.num_rows:
        return table
    return table.take(pc.sort_indices(last.column("_row_max")))


def iter_keys(table: pa.Table) -> Iterable[tuple]:
    return zip(*(table.column(c).to_pylist() for c in RESUME_KEY))
