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


def test_a_key_stored_twice_reads_back_as_its_newest_row(tmp_path):
    """Every reader (the store's, the analysis') keeps per key the row started last, and of rows
    started at the same moment the one written last: keys and values checked."""
    from omk_ray.analysis.samples import load_rows

    at = lambda hour: datetime(2026, 5, 14, hour, tzinfo=timezone.utc)  # noqa: E731
    first = rows("a", "b", 4)  # docs 0-3, started at 01:00; doc 1 failed
    for r in first:
        r.update(started_at=at(1), score=0.0)
    first[1].update(error="engine died", score=None)
    retry = rows("a", "b", 2, start=1)  # docs 1-2 again, at 02:00
    for r in retry:
        r.update(started_at=at(2), score=1.0)
    stale = rows("a", "b", 1, start=3)  # doc 3 imported afterwards, but generated at 00:00
    stale[0].update(started_at=at(0), score=5.0)
    tie = rows("a", "b", 1, start=0)  # doc 0 again, started when the first was: written later wins
    tie[0].update(started_at=at(1), score=7.0)
    store = ResultsStore(tmp_path)
    for unit, part in (("u1", first), ("u2", retry), ("u3", stale), ("u4", tie)):
        store.write_shard(rows_to_table(part), "a", "b", unit)

    expected = {"0": (7.0, None), "1": (1.0, None), "2": (1.0, None), "3": (0.0, None)}
    table = store.read()
    assert {d: (s, e) for d, s, e in zip(*(table[c].to_pylist() for c in ("doc_id", "score", "error")))} == expected
    assert sorted(table["doc_id"].to_pylist()) == ["0", "1", "2", "3"]
    analysed = load_rows(store, None, None, lambda batch: {})
    assert dict(zip(analysed["doc_id"].to_pylist(), analysed["score"].to_pylist())) == {d: v for d, (v, _) in expected.items()}
    assert store.done_keys() == {("fp-a", "r1", "b", d, 0) for d in expected}


def test_rows_outside_schema_are_refused():
    with pytest.raises(Exception):
        rows_to_table([{"variant": "a", "repeat": "not a number"}])


def test_torn_event_line_is_skipped(tmp_path):
    run = ResultsStore(tmp_path).new_run("r1")
    run.event("request_failed", error="x")
    with run.events_path.open("a") as f:
        f.write('{"event": "cut sho')
    assert [e["event"] for e in run.events()] == ["request_failed"]


def test_error_rows_are_not_done(tmp_path):
    store = ResultsStore(tmp_path)
    bad = rows("a", "b", 3)
    bad[1]["error"] = "endpoint unreachable after 6 retries"
    store.write_shard(rows_to_table(bad), "a", "b", "u1")
    assert {k[3] for k in store.done_keys()} == {"0", "2"}  # the failed sample is generated again


# -- unreadable files ----------------------------------------------------------------------------


def test_a_truncated_shard_is_named_and_the_rest_still_reported(tmp_path):
    """status names a truncated shard and a broken manifest and reports the rest; plan refuses
    with the file's name; doctor lists them and moves them aside, and their samples count as missing.
    Piped output is never wrapped or cut: each path is whole on one line, however narrow COLUMNS
    and however long the folder's path."""
    from helpers import write_bench, write_grid
    from typer.testing import CliRunner

    from omk_ray.cli import app
    from omk_ray.config import grid_to_dict, load_grid
    from omk_ray.farm.planner import make_plan

    config = write_grid(tmp_path / "grid.yaml", [{"name": "a", "engine": "echo", "model": "m"}],
                        [{"name": "b", "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 6))}])
    grid = load_grid(config)
    plan = make_plan(grid)
    fp, recipe = plan.fingerprints["a"], plan.work[0].recipe.hash
    results = tmp_path / ("a-results-folder-with-a-long-name-" * 4) / "results"
    store = ResultsStore(results)
    shards = []
    for unit, docs in (("u1", ["q0", "q1", "q2"]), ("u2", ["q3", "q4"])):
        part = [{**r, "doc_id": d, "variant_fingerprint": fp, "recipe_hash": recipe} for r, d in zip(rows("a", "b", 3), docs)]
        shards.append(store.write_shard(rows_to_table(part), "a", "b", unit))
    run = store.new_run("20260101T000000Z-aaaaaa")
    run.write_manifest({"run_id": run.run_id, "status": "finished", "started_at": "2026-01-01T00:00:00",
                        "config": grid_to_dict(grid), "variants": ["a"]})
    broken = results / "runs" / "20260102T000000Z-bbbbbb" / "manifest.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"run_id": "20260102T000000Z-bbbbbb", "status": "run')  # a driver killed mid-write
    shards[1].write_bytes(shards[1].read_bytes()[:200])  # a copy cut short
    cli = CliRunner(env={"COLUMNS": "40"})

    status = cli.invoke(app, ["status", str(results)])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert any(line.startswith(f"unreadable {shards[1]}: not a readable Parquet shard (Parquet magic bytes not found "
                                "in footer.") for line in lines), status.output
    assert any(line.startswith(f"unreadable {broken}: not valid JSON (Unterminated string") for line in lines)
    [cells] = [[c.strip() for c in line.split("│")[1:-1]] for line in status.output.splitlines() if line.startswith("│ a ")]
    assert cells[:6] == ["a", "b", "6", "3", "3", "0"]  # variant, bench, expected, done, missing, failed

    plan_out = cli.invoke(app, ["plan", str(config), "--results", str(results)])
    assert plan_out.exit_code == 2 and any(str(shards[1]) in line for line in plan_out.output.splitlines())
    assert "Traceback" not in plan_out.output

    doctor = cli.invoke(app, ["doctor", str(results)])
    assert doctor.exit_code == 1 and "checked 2 shards and 2 run manifests: 2 unreadable" in doctor.output
    rows_shown = [[c.strip() for c in line.split("│")[1:-1]] for line in doctor.output.splitlines() if "│" in line]
    shown = {row[0]: row[1] for row in rows_shown}  # file -> problem
    assert shown.keys() == {str(shards[1]), str(broken)}, doctor.output
    assert shown[str(shards[1])].startswith("not a readable Parquet shard (Parquet magic bytes not found in footer.")
    fixed = cli.invoke(app, ["doctor", str(results), "--quarantine"])
    assert fixed.exit_code == 0 and "moved 2 file(s) to" in fixed.output
    assert not shards[1].exists() and not broken.exists()
    assert len(list((results / "quarantine").rglob("part-u2-*.parquet"))) == 1
    assert cli.invoke(app, ["doctor", str(results)]).exit_code == 0
    again = make_plan(grid, ResultsStore(results))
    assert sorted(d.id for d, _ in again.work[0].samples) == ["q3", "q4", "q5"]


@pytest.mark.parametrize("manifest", ["unparseable", "missing"])
def test_status_shows_the_samples_and_names_the_manifest_when_no_run_reads(tmp_path, manifest):
    from typer.testing import CliRunner

    from omk_ray.cli import app

    results = tmp_path / "results"
    store = ResultsStore(results)
    store.write_shard(rows_to_table(rows("a", "b", 3)), "a", "b", "u1")
    store.write_shard(rows_to_table([{**r, "score": None, "error": "HTTP 500"} for r in rows("a", "c", 2)]),
                      "a", "c", "u1")
    path = results / "runs" / "20260102T000000Z-bbbbbb" / "manifest.json"
    path.parent.mkdir(parents=True)
    if manifest == "unparseable":
        path.write_text('{"run_id": "20260102T000000Z-bbbbbb", "status": "run')  # a driver killed mid-write
    status = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["status", str(results)])
    assert status.exit_code == 1, status.output
    lines = status.output.splitlines()
    cells = {tuple(c.strip() for c in line.split("│")[1:-1]) for line in lines if line.startswith("│ a ")}
    assert cells == {("a", "b", "3", "3", "0"), ("a", "c", "2", "0", "2")}  # variant, bench, stored, scored, errors
    problem = "not valid JSON" if manifest == "unparseable" else "missing"
    assert any(line.startswith(f"unreadable {path}: {problem}") for line in lines), status.output
    assert "cannot show the grid's status" in status.output and "Traceback" not in status.output

    empty = CliRunner().invoke(app, ["status", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "no runs recorded" in empty.output


def test_status_names_a_newer_run_without_manifest(tmp_path):
    from helpers import write_bench, write_grid
    from typer.testing import CliRunner

    from omk_ray.cli import app
    from omk_ray.config import grid_to_dict, load_grid

    grid = load_grid(write_grid(tmp_path / "grid.yaml", [{"name": "a", "engine": "echo", "model": "m"}],
                                [{"name": "b", "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 2))}]))
    results = tmp_path / "results"
    ResultsStore(results).new_run("20260101T000000Z-aaaaaa").write_manifest(
        {"run_id": "20260101T000000Z-aaaaaa", "status": "finished", "config": grid_to_dict(grid), "variants": ["a"]})
    newer = results / "runs" / "20260102T000000Z-bbbbbb"
    newer.mkdir()
    (newer / "events.jsonl").write_text("")
    status = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["status", str(results)])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    [cells] = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│ a ")]
    assert cells[:5] == ["a", "b", "2", "0", "2"]  # variant, bench, expected, done, missing: the older run's grid
    assert f"unreadable {newer / 'manifest.json'}: missing" in status.output
