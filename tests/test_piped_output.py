"""Piped (a file, `| less`, a Ray Job's log): `doctor`, `plan` and `import` print every path and metric
name whole, on one line, whatever COLUMNS says (the commands run as real processes, stdout a pipe)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import write_bench, write_grid
from helpers.bench_data import small_gsm8k_log
from helpers.samples import bench_rows, write_store

ROOT = Path(__file__).resolve().parents[1]


def piped(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omk_ray", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "40"})


def test_doctor_names_a_bad_shard_by_its_whole_path(tmp_path):
    deep = tmp_path.joinpath(*["a-folder-with-a-rather-long-name"] * 6) / "results"
    store = write_store(deep, bench_rows("base", "b", [True, False]))
    shard = store.shard_paths()[0]
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    done = piped("doctor", deep)
    assert done.returncode == 1, done.stderr
    assert len(str(shard)) > 200 and any(str(shard) in line for line in done.stdout.splitlines()), done.stdout


def test_plan_prints_long_names_whole(tmp_path):
    bench = "a-bench-with-a-name-much-longer-than-forty-columns"
    grid = write_grid(tmp_path / "grid.yaml", [{"name": "echo-variant-with-a-long-name", "model": "echo",
                                                 "engine": "echo"}],
                      [{"name": bench, "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 3))}])
    done = piped("plan", grid)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if bench in line)
    assert "echo-variant-with-a-long-name" in row and len(row) > 80


def test_import_prints_metric_names_whole(tmp_path):
    log = small_gsm8k_log(tmp_path / "log", docs=3)
    done = piped("import", "lm-eval", log, "--variant", "v", "--results", tmp_path / "results")
    assert done.returncode == 0, done.stderr
    assert "exact_match,flexible-extract" in done.stdout and "exact_match,strict-match" in done.stdout, done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) > 40
