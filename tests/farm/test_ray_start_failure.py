"""Ray that cannot start ends `run` with a message and exit code 2, and the manifest records why."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import write_bench, write_grid


def test_a_ray_start_failure_is_a_message_and_the_manifest_says_why(tmp_path):
    config = write_grid(tmp_path / "grid.yaml", [{"name": "a", "engine": "echo", "model": "m"}],
                        [{"name": "b", "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 2))}])
    (tmp_path / "a-file").write_text("")
    results = tmp_path / "results"
    # Ray makes its session folder under RAY_TMPDIR: a path below a file is a real start failure
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "a-file" / "ray")}
    done = subprocess.run([sys.executable, "-m", "omk_ray", "run", str(config), "--results", str(results),
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "error: could not start a local Ray: NotADirectoryError" in done.stderr
    assert "Traceback" not in done.stderr
    [manifest] = [json.loads(p.read_text()) for p in results.glob("runs/*/manifest.json")]
    assert manifest["status"] == "failed"
    assert manifest["ended_because"].startswith("RayStartFailed: could not start a local Ray: NotADirectoryError")
    assert manifest["generated_samples"] == 0 and not (results / "samples").exists()

    status = subprocess.run([sys.executable, "-m", "omk_ray", "status", str(results)], env={**env, "COLUMNS": "300"},
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    run_id = results.glob("runs/*").__next__().name
    assert f"run {run_id} ended on RayStartFailed: could not start a local Ray" in status.stdout, status.stdout


def test_the_manifest_records_why_a_run_ended_without_its_secrets(tmp_path):
    """The error that ended the run (here Ray's, naming a path that holds the key) is stored scrubbed of the
    value of the grid's `api_key_env`, whatever that variable is called."""
    key = "cred-value-4f9a2b"
    config = write_grid(tmp_path / "grid.yaml",
                        [{"name": "a", "engine": "echo", "model": "m"},
                         {"name": "o", "engine": "openai", "model": "m",
                          "engine_args": {"extra": {"base_url": "http://127.0.0.1:9/v1",
                                                    "api_key_env": "ENDPOINT_CRED"}}}],
                        [{"name": "b", "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 2))}])
    (tmp_path / "a-file").write_text("")
    results = tmp_path / "results"
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "a-file" / key), "ENDPOINT_CRED": key}
    done = subprocess.run([sys.executable, "-m", "omk_ray", "run", str(config), "--results", str(results),
                           "--no-progress", "--variant", "a"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    [manifest] = [json.loads(p.read_text()) for p in results.glob("runs/*/manifest.json")]
    assert manifest["ended_because"].startswith("RayStartFailed: could not start a local Ray: NotADirectoryError")
    assert "[redacted]" in manifest["ended_because"] and key not in json.dumps(manifest)
