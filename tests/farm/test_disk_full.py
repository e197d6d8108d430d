"""A results folder on a full disk (before a run, and filling up during one) ends `run` with a message and
exit code 2: the manifest records why, the shards written before stay whole and readable, nothing half
written is left or counted, and a rerun with room generates the rest.

The disk is a real small tmpfs, mounted in a private mount namespace (`unshare -m`) that ends with the
script: the script copies the folder out for the checks. Needs root (mount) and util-linux's unshare.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_grid
from helpers.bench_data import small_gsm8k_log
from omk_ray.results.store import ResultsStore

DOCS = 40
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare -m"),
]


def write_big_bench(path: Path) -> dict[str, str]:
    """Docs of 16 KB of random text each (Parquet cannot shrink them): the echo engine answers each with itself."""
    prompts = {f"q{i}": f"copy {i} " + base64.b64encode(os.urandom(12 * 1024)).decode() for i in range(DOCS)}
    path.write_text("".join(json.dumps({"id": k, "prompt": p, "target": str(i)}) + "\n"
                            for i, (k, p) in enumerate(prompts.items())))
    return prompts


def test_a_full_disk_before_and_during_a_run_is_a_message_and_the_rows_stored_stay_whole(tmp_path):
    prompts = write_big_bench(tmp_path / "b.jsonl")
    config = write_grid(tmp_path / "grid.yaml", [{"name": "a", "engine": "echo", "model": "m"}],
                        [{"name": "b", "kind": "jsonl", "source": str(tmp_path / "b.jsonl")}],
                        farm={"canary": {"enabled": False}, "flush_samples": 5})
    log = small_gsm8k_log(tmp_path / "log", docs=10, wrong=(0,))
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    run = f"{sys.executable} -m omk_ray run {config} --results {disk}/results --no-progress"
    script = f"""
set -u
mount -t tmpfs -o size=768k tmpfs {disk}
dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null    # fills the disk to the last byte
{run} >{out}/before.out 2>{out}/before.err; echo $? >{out}/before.rc
cp -a {disk}/results {out}/before 2>/dev/null
{sys.executable} -m omk_ray import lm-eval {log} --variant v --results {disk}/imported >{out}/import.out 2>{out}/import.err
echo $? >{out}/import.rc
rm {disk}/filler
{run} >{out}/during.out 2>{out}/during.err; echo $? >{out}/during.rc
cp -a {disk}/results {out}/during
mount -o remount,size=8m {disk}                        # room again: a rerun finishes the grid
{run} >{out}/rerun.out 2>{out}/rerun.err; echo $? >{out}/rerun.rc
cp -a {disk}/results {out}/rerun
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "1000"}
    subprocess.run(["unshare", "-m", "bash", "-c", script], env=env, timeout=900, check=True)

    def read(name: str) -> tuple[int, str]:
        return int((out / f"{name}.rc").read_text()), (out / f"{name}.err").read_text()

    # Before: not even the writer's record fits; nothing ran, nothing was written but the empty lock file.
    rc, err = read("before")
    assert rc == 2, err
    assert "error: no space left on the device writing" in err and "Traceback" not in err, err
    assert f"the run stopped (results folder {disk}/results)" in " ".join(err.split())
    assert not list((out / "before").rglob("*.parquet")) and not (out / "before" / "runs").exists()

    # Any other command that meets a full disk (here an import) ends the same way.
    rc, err = read("import")
    assert rc == 2 and "Traceback" not in err, err
    assert " ".join(err.split()).startswith(f"error: no space left on the device writing {disk}/imported/"), err

    # During: the disk fills while shards are written.
    rc, err = read("during")
    flat = " ".join(err.split())
    assert rc == 2, err
    assert "error: no space left on the device writing" in flat and "Traceback" not in err, err
    assert "the samples stored before are whole and kept" in flat
    [manifest_path] = (out / "during").glob("runs/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["status"] == "failed"
    assert manifest["ended_because"].startswith("DiskFull: no space left on the device writing "), manifest
    leftovers = [p.name for p in (out / "during").rglob("*") if p.name.startswith((".tmp-", ".manifest-room"))]
    assert leftovers == []
    store = ResultsStore(out / "during")
    assert store.check() == []  # every shard reads whole
    rows = store.read().to_pylist()
    assert 0 < len(rows) < DOCS and len(rows) % 5 == 0  # whole shards of 5 rows only
    assert all(r["response"] == prompts[r["doc_id"]] and r["error"] is None for r in rows)

    # A rerun with room keeps those rows and generates the rest.
    rc, err = read("rerun")
    assert rc == 0, err
    rerun = ResultsStore(out / "rerun")
    assert sorted(r["doc_id"] for r in rerun.read().to_pylist()) == sorted(prompts)
    runs = [r.records().manifest for r in rerun.runs()]
    assert [m.status for m in runs] == ["failed", "finished"] and runs[1].generated_samples == DOCS - len(rows)
