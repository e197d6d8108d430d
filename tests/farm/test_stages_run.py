"""Stages through real Ray (replay engines answering from a results folder): an arm that answers every
problem wrong is stopped at the first look and its samples left ungenerated; `--resume-stopped` then
completes it to exactly the full set of keys, each generated once."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers import write_grid
from helpers.samples import sample, write_store
from omk_ray.cli import app
from omk_ray.config import load_grid
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore

N = 120  # the canary look (24) comes before 25% (30)


@pytest.mark.slow
def test_a_stopped_arm_resumes_to_exactly_the_full_set_of_keys(tmp_path, local_ray):
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps({"id": f"d{i}", "prompt": f"q{i}", "target": str(100 + i),
                                         "domain": "even" if i % 2 == 0 else "odd"}) + "\n" for i in range(N)))
    source = write_store(tmp_path / "answers", [sample("base", "b", f"d{i}", True, response=str(100 + i))
                                                for i in range(N)])
    # `bad` answers every prompt with itself ("q7": wrong) on the FAKE GPU engine, 8 answers a second: its
    # canary look (24 rows) is judged long before the last of its 120 could be made, however slowly the
    # scoring actors start (a replayed arm can finish the whole bench first on a loaded machine)
    slow = {"engine": "simgpu", "model": "none", "engine_args": {"extra": {"step_s": 1.0, "step_s_per_seq": 0}}}
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml", [{"name": "base", "engine": "replay", "model": str(source.root)},
                                 {"name": "bad", **slow}],
        [{"name": "b", "kind": "jsonl", "source": str(bench)}],
        farm={"canary": {"enabled": False, "docs": 24}, "stages": {"enabled": True}, "max_in_flight": 8},
    ))
    results = tmp_path / "results"
    first = run_grid(grid, results, show_progress=False)
    stop = first.stops["bad"]
    assert (stop["rule"], stop["stage"], stop["n"], stop["of"], stop["delta_pp"]) == ("canary", "canary", 24, N, -100.0)
    store = ResultsStore(results)
    done = {r["doc_id"] for r in store.read(columns=["variant", "doc_id"]).to_pylist() if r["variant"] == "bad"}
    assert 24 <= len(done) < N and first.skipped == N - len(done) and first.status == "finished_with_skips"
    manifest = store.runs()[-1].records().manifest
    assert manifest.stops["bad"].n == 24 and manifest.stops["bad"].text == stop["text"]

    status = CliRunner().invoke(app, ["status", str(results)])
    assert status.exit_code == 0 and f"stopped bad (run {first.run_id}): {stop['text']}" in " ".join(status.output.split())

    resumed = CliRunner().invoke(app, ["run", str(tmp_path / "grid.yaml"), "--results", str(results), "--resume-stopped",
                                       "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    last = store.runs()[-1].records().manifest
    assert last.resumed_stopped == ["bad"] and last.stops == {} and last.generated_samples == N - len(done)
    raw = [r for p in store.shard_paths() for r in pq.read_table(p, columns=["variant", "doc_id", "repeat"]).to_pylist()
           if r["variant"] == "bad"]
    assert sorted((r["doc_id"], r["repeat"]) for r in raw) == sorted((f"d{i}", 0) for i in range(N))  # each once
    status = CliRunner().invoke(app, ["status", str(results)])
    assert "stopped bad" not in status.output
