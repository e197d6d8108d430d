"""The results store: atomic shards, one row per key, readable with no omk-ray code."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from omk_ray.results.schema import SAMPLE_SCHEMA, rows_to_table
from omk_ray.results.store import ResultsStore


def rows(variant: str, bench: str, n: int, start: int = 0) -> list[dict]:
    return [
        {"variant": variant, "variant_fingerprint": f"fp-{variant}", "bench": bench, "doc_id": str(i), "repeat": 0,
         "recipe_hash": "r1", "cohort": "greedy", "score": float(i % 2), "correct": bool(i % 2),
         "metrics": {"exact_match": float(i % 2)}, "completion_tokens": 10 + i,
         "started_at": datetime(2026, 5, 14, tzinfo=timezone.utc)}
        for i in range(start, start + n)
    ]


def test_shards_are_atomic_and_readable_everywhere(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_shard(rows_to_table(rows("128e", "gsm8k", 5)), "128e", "gsm8k", "u1")
    store.write_shard(rows_to_table(rows("v4", "gsm8k", 5)), "v4", "gsm8k", "u2")
    assert not list(tmp_path.rglob(".tmp-*"))
    assert store.read().num_rows == 10
    assert store.done_keys() == {(f"fp-{v}", "r1", "gsm8k", str(i), 0) for v in ("128e", "v4") for i in range(5)}

    frame = pd.read_parquet(tmp_path / "samples")
    assert len(frame) == 10 and set(frame["variant"]) == {"128e", "v4"}
    n = duckdb.sql(f"select count(*) from '{tmp_path}/samples/**/*.parquet' where variant = 'v4'").fetchall()[0][0]
    assert n == 5
    one = pq.read_table(next((tmp_path / "samples" / "v4" / "gsm8k").glob("*.parquet")))
    assert one.schema.equals(SAMPLE_SCHEMA, check_metadata=False)
    assert one.column("metrics").to_pylist()[1] == [("exact_match", 1.0)]


def test_overlapping_shards_read_once(tmp_path):
    store = ResultsStore(tmp_path)
    store.write_shard(rows_to_table(rows("a", "b", 4)), "a", "b", "u1")
    store.write_shard(rows_to_table(rows("a", "b", 4, start=2)), "a", "b", "u2")
    assert store.read().num_rows == 6


def test_rows_outside_schema_are_refused():
    with pytest.raises(Exception):
        rows_to_table([{"variant": "a", "repeat": "not a number"}])


def test_torn_event_line_is_skipped(tmp_path):
    run = ResultsStore(tmp_path).new_run("r1")
    run.event("unit_failed", error="x")
    with run.events_path.open("a") as f:
        f.write('{"event": "cut sho')
    assert [e["event"] for e in run.events()] == ["unit_failed"]


def test_error_rows_are_not_done(tmp_path):
    store = ResultsStore(tmp_path)
    bad = rows("a", "b", 3)
    bad[1]["error"] = "endpoint unreachable after 6 retries"
    store.write_shard(rows_to_table(bad), "a", "b", "u1")
    assert {k[3] for k in store.done_keys()} == {"0", "2"}  # the failed sample is generated again
