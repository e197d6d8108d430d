"""benchmarks/bench_driver.py at a tiny size: it runs, prints its figures, and every sample is stored once.

A real local Ray with FAKE GPUs (Ray resources, no device) and the simgpu engine; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_driver_prints_its_figures_and_loses_no_sample(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_driver.py", "--samples", "600", "--variants", "3", "--engines", "3,1",
         "--gpus", "3", "--flush-samples", "40", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for key in ("== driver capacity: 600 samples (3 variants x 200 docs), one local Ray with 3 fake GPUs",
                "samples/s", "CPU us/sample", "capacity/s", "load before -> after", "ratio 3 / 1 engines",
                "target: >= 10,000 samples/s at 64 engines"):
        assert key in text, key
    figures = json.loads(out.read_text())
    assert [r["engines"] for r in figures["results"]] == [3, 1]
    for r in figures["results"]:
        # every planned sample generated, stored once: rows in the raw shards == distinct keys == 600
        assert (r["planned"], r["generated"], r["failed"], r["rows"], r["keys"]) == (600, 600, 0, 600, 600)
        assert r["exact"] is True
        assert r["engines_started"] >= r["engines"]
        assert r["samples_per_s"] > 0 and r["driver_cpu_us_per_sample"] > 0
        assert f"engines={r['engines']} " in text and "exact=True" in text
