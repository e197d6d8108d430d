"""The farm end to end on a real local Ray: real engines in actors, Parquet out, failures survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray

from conftest import hf_variant, vllm_variant, write_bench, write_grid
from omk_ray.config import load_grid
from omk_ray.farm.planner import make_plan
from omk_ray.farm.runner import run_grid
from omk_ray.farm.scheduler import NAMESPACE
from omk_ray.results.schema import RESUME_KEY
from omk_ray.results.store import ResultsStore, iter_keys


def planned_keys(grid, store=None) -> set[tuple]:
    plan = make_plan(grid, store)
    return {
        (plan.fingerprints[w.variant], w.recipe.hash, w.bench, doc.id, r) for w in plan.work for doc, r in w.samples
    }


def stored_keys(results: Path) -> list[tuple]:
    table = ResultsStore(results).read(columns=list(RESUME_KEY))
    return list(iter_keys(table))


def test_grid_with_both_engines_in_actors(tmp_path, tiny_gemma4, local_ray):
    bench = write_bench(tmp_path / "b.jsonl", 10)
    config = write_grid(
        tmp_path / "grid.yaml",
        [vllm_variant("v-vllm", tiny_gemma4), hf_variant("v-hf", tiny_gemma4)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)},
         {"name": "copy2", "kind": "jsonl", "source": str(bench), "recipe": {"repeats": 2, "temperature": 0.7}}],
        farm={"shard_size": 4},
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
            farm={"shard_size": 4},
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


def test_engine_actor_killed_mid_run(tmp_path, tiny_gemma4, local_ray):
    bench = write_bench(tmp_path / "b.jsonl", 40)
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("a", tiny_gemma4, batch_size=2)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        recipe={"max_gen_toks": 16},
        farm={"shard_size": 2, "max_engines": 2},
    ))
    killed = []

    def kill_one(unit, table):
        if not killed:  # an engine that has loaded (one still loading would be a failed start instead)
            events = ResultsStore(tmp_path / "results").runs()[-1].events()
            name = next(e["name"] for e in events if e["event"] == "engine_started")
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            killed.append(name)

    summary = run_grid(grid, tmp_path / "results", show_progress=False, on_unit=kill_one)
    assert killed
    keys = stored_keys(tmp_path / "results")
    assert len(keys) == len(set(keys)) == 40  # every expected row exactly once
    assert summary.status == "finished"
    events = ResultsStore(tmp_path / "results").runs()[-1].events()
    died = [e for e in events if e["event"] == "engine_died"]
    assert died and died[0]["retrying"] == died[0]["samples"]
    assert sum(e["event"] == "engine_starting" for e in events) >= 2  # a replacement was started


def test_driver_killed_mid_run_then_resumed(tmp_path, tiny_gemma4):
    bench = write_bench(tmp_path / "b.jsonl", 120)
    config = write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("a", tiny_gemma4, batch_size=2)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        recipe={"max_gen_toks": 24},
        farm={"shard_size": 2, "max_engines": 1},
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
    before = stored_keys(results)
    assert 0 < len(before) < 120 and len(before) == len(set(before))
    assert not list(results.glob("samples/*/*/.tmp-*"))  # no torn shard is visible

    rerun = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    manifest = store.runs()[-1].manifest()
    assert manifest["planned_samples"] == 120 - len(before)
    assert manifest["generated_samples"] == 120 - len(before)  # only the missing ones were generated
    after = stored_keys(results)
    assert len(after) == len(set(after)) == 120
    assert set(before) <= set(after)
    runs = [r.manifest()["status"] for r in store.runs()]
    assert runs == ["running", "finished"]  # the killed run never got to close its manifest


def test_canary_gates_the_full_run(tmp_path, tiny_gemma4, local_ray):
    """A random model answers nothing right: its canary fails and its full run is skipped."""
    bench = write_bench(tmp_path / "b.jsonl", 20)
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("random", tiny_gemma4)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        farm={"shard_size": 4, "canary": {"enabled": True, "docs": 5}},
    ))
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert summary.status == "finished_with_skips"
    assert summary.generated == 5 and summary.skipped == 15
    assert sorted(k[3] for k in stored_keys(tmp_path / "results")) == ["q0", "q1", "q2", "q3", "q4"]
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
