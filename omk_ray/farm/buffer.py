"""Finished rows wait here until they are written: one atomic shard per (variant, bench) every
`flush_samples` rows or `flush_seconds`, whichever comes first. A crash of the driver loses at
most what is buffered (plus what is still being generated or scored); the next run redoes it."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa

from omk_ray.files import TMP_PREFIX
from omk_ray.results.schema import rows_to_table
from omk_ray.results.store import ResultsStore


class RowBuffer:
    def __init__(self, store: ResultsStore, run_id: str, flush_samples: int, flush_seconds: float,
                 on_shard: Callable[[str, str, pa.Table], None] | None = None):
        self.store, self.run_id = store, run_id
        self.flush_samples, self.flush_seconds = flush_samples, flush_seconds
        self.on_shard = on_shard
        self.rows: dict[tuple[str, str], list[dict]] = {}
        self.count = 0
        self.oldest: float | None = None
        self.shards = 0
        # A shard a killed run was writing (its temporary name): this run is the folder's one writer now.
        for torn in store.samples_dir.glob(f"*/*/{TMP_PREFIX}*"):
            torn.unlink(missing_ok=True)

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            self.rows.setdefault((row["variant"], row["bench"]), []).append(row)
        self.count += len(rows)
        if rows and self.oldest is None:
            self.oldest = time.monotonic()
        if self.count >= self.flush_samples:
            self.flush()

    def maybe_flush(self) -> None:
        if self.oldest is not None and time.monotonic() - self.oldest >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        pending, self.rows, self.count, self.oldest = self.rows, {}, 0, None
        for (variant, bench), rows in pending.items():
            self.shards += 1
            table = rows_to_table(rows)
            self.store.write_shard(table, variant, bench, f"{self.run_id}-{self.shards:06d}")
            if self.on_shard:
                self.on_shard(variant, bench, table)
