"""The example plug-ins installed as a package (pip, into a temporary folder) are found through their
entry points by the `omk-ray` command and by the Ray workers that host the engine actors: no
`register_*` call and no sitecustomize anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omk_ray.results.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "tests/docs/example_plugins"


@pytest.mark.slow
def test_installed_plugins_are_found_by_the_command_and_the_workers(tmp_path):
    source = shutil.copytree(EXAMPLE, tmp_path / "src", ignore=shutil.ignore_patterns("sitecustomize.py", "__pycache__"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", "--target", str(site), str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert sorted(p.name for p in site.glob("*.py")) == ["wordcount_bench.py", "wordcount_engine.py"]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "RAY_AUTH_MODE": "disabled"}
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "omk_ray", "run", str(EXAMPLE / "grid.yaml"), "--results",
                          str(results), "--limit", "8", "--no-progress"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = ResultsStore(results).read().to_pylist()
    by_variant = {v: sorted((r["doc_id"], r["score"]) for r in rows if r["variant"] == v) for v in ("counter", "sloppy")}
    assert all(r["error"] is None for r in rows) and [len(v) for v in by_variant.values()] == [8, 8]
    assert {score for _, score in by_variant["counter"]} == {1.0}  # the exact counter is always right

    without = subprocess.run([sys.executable, "-m", "omk_ray", "plan", str(EXAMPLE / "grid.yaml")], cwd=tmp_path,
                             env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert without.returncode == 2 and "unknown engine 'wordcounter'" in without.stdout + without.stderr
