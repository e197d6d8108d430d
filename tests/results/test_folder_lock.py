"""One writer per results folder: a second run is refused (or waits), a killed run is seen as dead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from helpers import write_grid
from omk_ray.cli import app
from omk_ray.results.folder_lock import FolderBusy, holder, stale_record, writing
from omk_ray.results.schema import RESUME_KEY
from omk_ray.results.store import ResultsStore, iter_keys

ROOT = Path(__file__).resolve().parents[2]
cli = CliRunner()


def slow_grid(tmp_path: Path, docs: int, name: str = "grid.yaml") -> Path:
    """The FAKE GPU engine (simgpu), slowed down: each answer of 6 tokens takes about 6 s."""
    bench = tmp_path / f"{name}.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "6", "target": "6"}) + "\n" for i in range(docs)))
    return write_grid(tmp_path / name, [{"name": "sim", "engine": "simgpu", "model": "sim",
                                         "engine_args": {"extra": {"step_s": 1.0}}}],
                      [{"name": "copy", "kind": "jsonl", "source": str(bench)}])


def start_run(config: Path, results: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "omk_ray", "run", str(config), "--results", str(results),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_writer(results: Path, proc: subprocess.Popen, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        who = holder(results)
        if who is not None and list(results.glob("runs/*/manifest.json")):
            return who
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("the first run never took the folder")


@pytest.mark.slow
def test_a_second_run_on_a_folder_being_written_is_refused_or_waits(tmp_path):
    results = tmp_path / "results"
    first = start_run(slow_grid(tmp_path, 6), results)
    try:
        writer = wait_for_writer(results, first)
        code = cli.invoke(app, ["run", str(slow_grid(tmp_path, 6)), "--results", str(results), "--no-progress"])
        assert code.exit_code == 2, code.output
        message = code.output
        assert f"run {writer.run_id} (host {writer.host}, pid {first.pid}," in message
        assert "is writing this results folder" in message and "--wait" in message
        status = cli.invoke(app, ["status", str(results)])
        assert f"run {writer.run_id}" in status.output and "is writing this folder now" in status.output
        assert "│ running" in status.output
        # a second one with --wait queues behind the first, then finds nothing left to do
        waited = cli.invoke(app, ["run", str(slow_grid(tmp_path, 6)), "--results", str(results), "--no-progress",
                                  "--wait"])
        assert waited.exit_code == 0, waited.output
        assert f"waiting for run {writer.run_id}" in waited.output
        assert "generated 0 samples (6 already stored" in waited.output
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    stored = [pq.read_table(p).num_rows for p in ResultsStore(results).shard_paths()]
    assert sum(stored) == 6  # every sample generated once: no doubles on disk
    keys = list(iter_keys(ResultsStore(results).read(columns=list(RESUME_KEY))))
    assert len(set(keys)) == 6


def test_a_run_killed_holding_the_folder_is_seen_as_dead(tmp_path):
    results = tmp_path / "results"
    config = slow_grid(tmp_path, 2)
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from omk_ray.config import grid_to_dict, load_grid
        from omk_ray.results.folder_lock import writing
        from omk_ray.results.store import ResultsStore
        with writing({str(results)!r}, "20260101T000000Z-dead00"):
            run = ResultsStore({str(results)!r}).new_run("20260101T000000Z-dead00")
            run.write_manifest({{"run_id": run.run_id, "status": "running", "started_at": "2026-01-01T00:00:00",
                                "config": grid_to_dict(load_grid({str(config)!r})), "variants": ["sim"]}})
            os.kill(os.getpid(), signal.SIGKILL)  # no finally, no manifest update: as a driver killed by the OOM killer
    """)])
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert holder(results) is None
    dead = stale_record(results)
    assert (dead.run_id, dead.pid) == ("20260101T000000Z-dead00", killed.pid)
    status = cli.invoke(app, ["status", str(results)])
    assert status.exit_code == 0, status.output
    assert "│ died" in status.output and "│ running" not in status.output
    assert f"stale run 20260101T000000Z-dead00 (host {dead.host}, pid {killed.pid}," in status.output
    with writing(results, "20260102T000000Z-next00") as stale:  # the next writer takes over, and says from whom
        assert stale == dead
        assert holder(results).run_id == "20260102T000000Z-next00"
        with pytest.raises(FolderBusy, match="run 20260102T000000Z-next00 .* is writing this results folder"):
            with writing(results, "20260102T000000Z-third0"):
                pass
    assert holder(results) is None and stale_record(results) is None
