"""The cluster launcher config, and engine placement on a simulated multi-node GPU cluster."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import ray
import yaml

from helpers import hf_variant, write_bench, write_grid
from omk_ray.config import load_grid, parse_grid
from omk_ray.farm.placement import Node, cluster_nodes, describe_placements, pin_options, place
from omk_ray.farm.planner import PlanError

ROOT = Path(__file__).resolve().parents[2]


# -- ray_cluster.yaml ---------------------------------------------------------------------------


def prepared(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config))  # merges the provider's defaults, as `ray up` does
    validate_config(config)
    return config


def test_cluster_yaml_validates_with_rays_own_validator():
    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    config = prepared(raw)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # engines never land on the head
    gpu_types = [t for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in gpu_types)
    assert any("[gpu" in cmd and "pip install" in cmd for cmd in config["setup_commands"])
    mounted = [Path(local) for local in config["file_mounts"].values()]
    assert any((ROOT / p / "configs").resolve() == (ROOT / "configs").resolve() for p in mounted)

    # the validator is strict: a misspelt key in a node type is caught
    typo = copy.deepcopy(raw)
    typo["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        prepared(typo)


# -- placement as a pure function -----------------------------------------------------------------


def grid_of(variants: list[tuple[str, str, int]], **farm):
    return parse_grid({
        "variants": [{"name": n, "model": "m", "engine": e, "engine_args": {
                         "tensor_parallel_size": tp, "extra": {"base_url": "http://127.0.0.1:1/v1"} if e == "openai" else {}}}
                     for n, e, tp in variants],
        "benches": [{"name": "b", "source": "b.jsonl"}],
        "farm": farm,
    })


NODES = [Node("head", "h0", 0, 8), Node("n1", "h1", 2, 8), Node("n2", "h2", 2, 8)]


def test_big_engine_gets_a_whole_node_small_ones_share():
    grid = grid_of([("small-a", "vllm", 1), ("big", "vllm", 2), ("small-b", "transformers", 1)])
    plan = {p.variant: p for p in place(grid, NODES)}
    assert plan["big"].gpus == 2 and plan["big"].bundles == 2  # a STRICT_PACK group of 2
    assert plan["small-a"].bundles == 0 and plan["small-a"].gpus == 1  # a plain actor
    assert plan["small-a"].node_id == plan["small-b"].node_id != plan["big"].node_id
    assert {p.wave for p in plan.values()} == {0}
    assert "head" not in {p.node_id for p in plan.values()}
    rows = describe_placements(list(plan.values()))
    assert rows[0]["variant"] == "big" and rows[0]["as"] == "STRICT_PACK group of 2"


def test_engines_without_a_model_take_no_gpu():
    grid = grid_of([("big", "vllm", 2), ("served", "openai", 1), ("replayed", "replay", 1), ("small", "vllm", 1)])
    plan = {p.variant: p for p in place(grid, NODES)}
    assert (plan["served"].gpus, plan["served"].cpus, plan["replayed"].gpus) == (0, 1, 0)
    assert plan["served"].node_id == plan["replayed"].node_id == "head"  # GPU nodes keep their room
    assert plan["small"].node_id not in ("head", plan["big"].node_id)
    assert {p.wave for p in plan.values()} == {0}


def test_engines_that_do_not_fit_beside_the_first_wait_for_a_later_wave():
    grid = grid_of([("a", "vllm", 2), ("b", "vllm", 2), ("c", "vllm", 2), ("d", "vllm", 1)])
    plan = place(grid, NODES)
    waves = {p.variant: p.wave for p in plan}
    assert waves == {"a": 0, "b": 0, "c": 1, "d": 1}
    capped = place(grid_of([("a", "vllm", 1), ("b", "vllm", 1), ("c", "vllm", 1)], max_engines=2), NODES)
    assert [p.wave for p in capped] == [0, 0, 1]


def test_impossible_grid_refused_with_the_reason():
    grid = grid_of([("ok", "vllm", 2), ("huge", "vllm", 4)])
    with pytest.raises(PlanError) as err:
        place(grid, NODES)
    message = str(err.value)
    assert "'huge' needs 4 GPUs" in message and "tensor_parallel_size=4" in message
    assert "largest node has 2 GPUs" in message and "'ok'" not in message
    assert "nodes: 1 x 0 GPU 8 CPU, 2 x 2 GPU 8 CPU" in message

    too_long = parse_grid({
        "recipe": {"max_gen_toks": 512},
        "variants": [{"name": "short", "model": "m", "engine_args": {"max_model_len": 256}}],
        "benches": [{"name": "b", "source": "b.jsonl"}],
    })
    with pytest.raises(PlanError, match="generation budget 512 tokens does not fit max_model_len=256"):
        place(too_long, NODES)


def test_without_gpus_engines_are_packed_by_cpus():
    grid = grid_of([("a", "transformers", 1), ("b", "transformers", 1)], cpus_per_engine=2)
    plan = place(grid, [Node("only", "h", 0, 2)])
    assert [(p.gpus, p.cpus, p.wave) for p in plan] == [(0, 2, 0), (0, 2, 1)]
    with pytest.raises(PlanError, match="needs 4 CPUs on one node"):
        place(grid_of([("a", "transformers", 1)], cpus_per_engine=4), [Node("only", "h", 0, 2)])


# -- on a simulated cluster: 2 worker nodes with 2 fake GPUs each ----------------------------------


@pytest.fixture(scope="module")
def gpu_cluster():
    from ray.cluster_utils import Cluster

    from omk_ray.farm import NAMESPACE

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    for _ in range(2):  # fake GPUs: there is no CUDA here, the engines run on CPU
        cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_tp2_and_two_tp1_variants_land_where_the_plan_says(tmp_path, tiny_gemma4, gpu_cluster):
    bench = write_bench(tmp_path / "b.jsonl", 1)  # one sample each: no variant finishes early and frees GPUs
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("big", tiny_gemma4, tensor_parallel_size=2), hf_variant("small-a", tiny_gemma4),
         hf_variant("small-b", tiny_gemma4)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        farm={"max_in_flight": 1},
    ))
    nodes = cluster_nodes()
    assert sorted(n.gpus for n in nodes) == [0, 2, 2]
    plan = {p.variant: p for p in place(grid, nodes)}
    assert plan["big"].gpus == 2 and plan["small-a"].node_id == plan["small-b"].node_id != plan["big"].node_id
    assert all(p.wave == 0 for p in plan.values())

    from omk_ray.farm.runner import run_grid

    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert summary.status == "finished" and summary.generated == 3
    landed = {e["variant"]: e["info"] for e in summary.engines}
    assert set(landed) == {"big", "small-a", "small-b"} and len(summary.engines) == 3
    # the TP=2 engine holds both GPUs of one node, alone; the two TP=1 engines share the other node
    assert len(landed["big"]["cuda_visible_devices"].split(",")) == 2
    assert all(len(landed[s]["cuda_visible_devices"].split(",")) == 1 for s in ("small-a", "small-b"))
    assert landed["small-a"]["node_id"] == landed["small-b"]["node_id"] != landed["big"]["node_id"]
    # the same grouping as the plan (the two GPU nodes are interchangeable, so compare up to renaming)
    planned_to_real = {plan[v].node_id: landed[v]["node_id"] for v in plan}
    assert all(planned_to_real[plan[v].node_id] == landed[v]["node_id"] for v in plan)
    assert len(set(planned_to_real.values())) == 2


def test_pinned_tensor_parallel_group_lands_on_the_planned_node(gpu_cluster):
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    grid = grid_of([("big", "vllm", 2), ("small", "vllm", 1)])
    nodes = cluster_nodes()
    plan = {p.variant: p for p in place(grid, nodes)}
    big = plan["big"]
    # ask for the node the plan chose, even if it is not the one Ray would have picked first
    pg = placement_group([{"GPU": 1, "CPU": 1}] * big.bundles, strategy="STRICT_PACK", **pin_options(big))
    try:
        ray.get(pg.ready(), timeout=60)
        table = placement_group_table(pg)
        assert table["strategy"] == "STRICT_PACK"
        assert set(table["bundles_to_node_id"].values()) == {big.node_id}
    finally:
        remove_placement_group(pg)

    @ray.remote(num_gpus=1, num_cpus=1)
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    small = plan["small"]
    assert ray.get(where.options(**pin_options(small)).remote(), timeout=60) == small.node_id


def test_request_gpus_waits_for_the_cluster_and_says_when_it_gives_up(gpu_cluster):
    from omk_ray.farm.placement import request_gpus

    grid = grid_of([("big", "vllm", 2), ("small", "vllm", 1)])
    assert sum(n.gpus for n in request_gpus(grid, 4, timeout_s=10)) == 4  # already there: no wait
    with pytest.raises(TimeoutError, match="the cluster has 4 GPUs after 1 s; 8 were requested"):
        request_gpus(grid, 8, timeout_s=1, poll_s=0.2)  # no autoscaler here: nobody adds nodes
