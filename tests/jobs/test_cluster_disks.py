"""A two-node Ray cluster on this machine where no node sees the other's disk: the worker runs in a
mount namespace of its own with a private tmpfs over the folder the head writes (results, artifacts,
base model). A pruned + NVFP4A16 arm is built on the head and served on the worker, which gets it
only through the artifact store (farm/artifact_store.py).

Needs root (mount namespaces) and `unshare`; skipped otherwise. Every process started here is
stopped by its PID (never `ray stop`: other suites' Rays share this machine)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray

from helpers import write_bench, write_grid
from omk_ray.config import load_grid
from omk_ray.farm.artifact_store import FAULT_ENV, find_published, manifest_of, publish
from omk_ray.farm.planner import weights_identity
from omk_ray.variants.checkpoint import PROVENANCE_NAME as PROVENANCE
from omk_ray.farm import NAMESPACE
from omk_ray.results.store import ResultsStore
from omk_ray.variants.artifacts import content_hash

RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (mount namespaces)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_pids(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (this test's folder or port), not this one."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def split_disks(monkeypatch):
    """(root, data folder, node ids {head, worker}): a head (no GPU, a `builder` resource) and a
    worker (one fake GPU) that cannot see the head's data folder; the driver connected to them."""
    root = Path(tempfile.mkdtemp(prefix="omkd", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    data = root / "data"
    data.mkdir()
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(sys.path), "TOKENIZERS_PARALLELISM": "false"}
    head_env = {**env, "OMK_RAY_ARTIFACT_CACHE": str(data / "head-cache")}
    worker_env = {**env, "OMK_RAY_ARTIFACT_CACHE": str(data / "worker-cache"), FAULT_ENV: "1"}
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--temp-dir", str(root / "ray"),
                        "--num-cpus", "2", "--num-gpus", "0", "--resources", '{"builder": 1}',
                        "--include-dashboard", "false", "--disable-usage-stats"],
                       env=head_env, check=True, capture_output=True, timeout=180)
        worker = (f"mount -t tmpfs tmpfs {data} && exec {RAY} start --address 127.0.0.1:{port} "
                  f"--num-cpus 2 --num-gpus 1 --disable-usage-stats")
        subprocess.run(["unshare", "-m", "bash", "-c", worker], env=worker_env, check=True, capture_output=True,
                       timeout=180)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address=f"127.0.0.1:{port}", namespace=NAMESPACE, log_to_driver=False)
        deadline = time.monotonic() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the worker node never joined"
            time.sleep(1)
        nodes = {("worker" if n["Resources"].get("GPU") else "head"): n["NodeID"] for n in ray.nodes() if n["Alive"]}
        yield root, data, nodes
    finally:
        ray.shutdown()
        for marker in (str(root), f"127.0.0.1:{port}"):
            for pid in own_pids(marker):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        time.sleep(3)
        for marker in (str(root), f"127.0.0.1:{port}"):
            for pid in own_pids(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(root, ignore_errors=True)


def on_node(node_id: str, fn, *args):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(fn).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    return ray.get(task.remote(*args))


def view(paths: list[str]) -> dict:
    """What this node sees: whether each path exists, and the manifest of the cached copy."""
    from omk_ray.farm.artifact_store import cache_root

    return {"exists": {p: Path(p).exists() for p in paths}, "cache": str(cache_root())}


def test_an_arm_built_on_one_node_is_served_on_another_that_cannot_see_its_disk(split_disks, tiny_gemma4):
    from omk_ray.farm.actor import EngineActor
    from omk_ray.farm.runner import run_grid

    root, data, nodes = split_disks
    base = data / "base"
    shutil.copytree(tiny_gemma4, base)
    bench = write_bench(root / "b.jsonl", 3)  # outside `data`: the scoring actors may run on either node
    grid = load_grid(write_grid(
        data / "grid.yaml",
        [{"name": "pruned-nvfp4", "engine": "transformers", "engine_args": {"dtype": "float32", "max_model_len": 256},
          "build": {"base": str(base), "drop_map": {"0": [1, 6], "1": [0, 7]}, "quantization": "NVFP4A16"}}],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        farm={"build_resources": {"CPU": 1, "builder": 1}, "scorers": 1, "canary": {"enabled": False}},
    ))

    summary = run_grid(grid, data / "results", show_progress=False)

    assert summary.status == "finished" and summary.generated == 3 and summary.failed == 0
    built = Path(ResultsStore(data / "results").runs()[-1].manifest()["model_paths"]["pruned-nvfp4"])
    assert built.parent == data / "results" / "artifacts" and (built / "config.json").is_file()
    published = find_published(str(built))
    assert published.node_id == nodes["head"] and published.manifest == manifest_of(built)

    # the worker cannot see the head's folders; its engine read its own verified copy
    seen = on_node(nodes["worker"], view, [str(built), str(base), str(data / "results")])
    assert seen["exists"] == {str(built): False, str(base): False, str(data / "results"): False}
    copy = Path(seen["cache"]) / published.fingerprint
    assert copy != built
    assert on_node(nodes["worker"], manifest_of, str(copy)) == published.manifest  # every file's sha256 equal
    assert not (data / "worker-cache").exists()  # ... and it lies on the worker's disk only

    [engine] = summary.engines
    assert engine["info"]["node_id"] == nodes["worker"]
    artifact = engine["info"]["artifact"]
    assert artifact["source"] == "fetched" and artifact["fingerprint"] == published.fingerprint
    assert artifact["built_on"] == nodes["head"] and artifact["bytes"] == published.size
    # the fault injector damaged the first chunk fetched: that file was refused and fetched again
    assert artifact["refused"] == [sorted(published.manifest)[0]]

    # the rows: one per document, generated by the fetched weights, identified by the built folder's content
    rows = ResultsStore(data / "results").read().to_pylist()
    assert sorted(r["doc_id"] for r in rows) == ["q0", "q1", "q2"]
    assert all(r["variant"] == "pruned-nvfp4" and r["finish_reason"] != "error" and r["completion_tokens"] > 0
               for r in rows)
    weights = ResultsStore(data / "results").runs()[-1].manifest()["weights"]["pruned-nvfp4"]
    assert weights["content_sha256"] == content_hash(built)

    # a later engine on the worker reuses the verified copy: no fetch
    again = ray.remote(EngineActor).options(num_gpus=1, num_cpus=1).remote(grid.variants[0], str(built))
    info = ray.get(again.info.remote())
    assert info["node_id"] == nodes["worker"]
    assert info["artifact"]["source"] == "cache" and "refused" not in info["artifact"]
    ray.kill(again)
    assert json.loads((built / "config.json").read_text())["num_experts"] == 6

    # a variant built where the driver cannot see it: the driver identifies it by its manifest,
    # with the hash the building node computes from the files
    elsewhere, hashed_there = on_node(nodes["worker"], copy_and_hash, str(copy), str(data / "worker-built" / "fpw"))
    assert not Path(elsewhere).exists()
    publish(elsewhere, nodes["worker"], "fpw")
    identity = weights_identity(grid.variants[0], elsewhere)
    assert identity["content_sha256"] == hashed_there == content_hash(built)
    assert identity[PROVENANCE] == published.manifest[PROVENANCE]["identity"]
    assert identity == weights_identity(grid.variants[0], str(built))  # as the node that sees the folder says


def copy_and_hash(source: str, dest: str) -> tuple[str, str]:
    shutil.copytree(source, dest)
    return dest, content_hash(Path(dest))
