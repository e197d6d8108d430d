"""Where each engine goes on the cluster's nodes, decided before anything starts.

An engine of a variant with `tensor_parallel_size: N` needs N GPUs on ONE node (vLLM's
workers share NVLink/PCIe; a transformers engine is one process); several small engines share
a node. `place` mirrors what the scheduler asks Ray for:

- vLLM with N > 1: a STRICT_PACK placement group of N bundles `{GPU: 1, CPU: 1}`;
- any other engine: one actor with `num_gpus=N, num_cpus=1`;
- a cluster without GPUs: one actor with `farm.cpus_per_engine` CPUs (tensor parallelism unused);
- an engine that holds no model (openai, replay, echo: `uses_accelerator = False`): one actor
  with no GPU and at most one CPU, anywhere.

It packs engines largest first, each on the node that fits it most tightly (best fit), so big
engines keep whole nodes and small ones fill the rest. Engines that do not fit beside the
first ones form later waves: they start when earlier engines finish and free their GPUs. A
grid that can never run is refused with the reason: a variant needing more GPUs (or CPUs) than
any node has, or a generation budget longer than an engine's `max_model_len` (`check_grid`).

`pin_options(placement)` gives the Ray options that hold an engine to its planned node, for a
scheduler that wants the run to follow the plan exactly.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass

from omk_ray.config import GridConfig, VariantSpec
from omk_ray.farm.planner import PlanError, check_grid


@dataclass(frozen=True)
class Node:
    node_id: str
    host: str
    gpus: float
    cpus: float
    accelerator: str | None = None  # e.g. "H100", from Ray's `accelerator_type:*` resource


@dataclass(frozen=True)
class Placement:
    variant: str
    engine: str  # engine kind: vllm, transformers, ...
    node_id: str
    host: str
    gpus: float  # GPUs the engine holds (all on `node_id`)
    cpus: float
    bundles: int  # placement-group bundles (tensor-parallel workers); 0: a plain actor
    wave: int  # 0: starts at once; k: after engines of earlier waves free their resources

    def as_row(self) -> dict:
        row = asdict(self)
        row["node_id"] = self.node_id[:12]
        return row


def cluster_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        resources = n.get("Resources", {})
        accelerators = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
        nodes.append(Node(
            node_id=n["NodeID"],
            host=n.get("NodeName") or n.get("NodeManagerAddress", ""),
            gpus=float(resources.get("GPU", 0)),
            cpus=float(resources.get("CPU", 0)),
            accelerator=accelerators[0] if accelerators else None,
        ))
    return nodes


@dataclass(frozen=True)
class Needs:
    """What one engine of a variant asks Ray for: `place` packs it so and the scheduler starts it so."""

    gpus: float
    cpus: float
    bundles: int  # > 0: a STRICT_PACK placement group of `bundles` x {GPU: 1, CPU: 1}; 0: a plain actor
    cost: float  # its share of the scheduler's capacity (the cluster's GPUs, or its CPUs where it has none)


def needs(variant: VariantSpec, gpu_mode: bool, cpus_per_engine: float) -> Needs:
    """The resources of one engine of `variant` on a cluster with GPUs (`gpu_mode`) or without."""
    from omk_ray.engines import engine_class

    if not engine_class(variant.engine).uses_accelerator:
        return Needs(0.0, min(1.0, cpus_per_engine), 0, cost=0.0 if gpu_mode else cpus_per_engine)
    if not gpu_mode:
        return Needs(0.0, cpus_per_engine, 0, cost=cpus_per_engine)
    tp = variant.engine_args.tensor_parallel_size
    bundles = tp if tp > 1 and variant.engine == "vllm" else 0  # vLLM's Ray executor: a worker per bundle
    return Needs(float(tp), float(tp) if bundles else 1.0, bundles, cost=tp)


def place(grid: GridConfig, nodes: list[Node], variants: list[str] | None = None) -> list[Placement]:
    """One engine per variant, on the nodes given; raises PlanError for a grid that cannot run."""
    check_grid(grid)
    chosen = [v for v in grid.variants if variants is None or v.name in variants]
    gpu_mode = sum(n.gpus for n in nodes) >= 1  # the scheduler's rule: any GPU in the cluster
    usable = [n for n in nodes if n.cpus > 0]
    if not usable:
        raise PlanError("grid cannot run: the cluster has no node with CPUs")
    cpus_per_engine = grid.farm.cpus_per_engine
    demand = {v.name: needs(v, gpu_mode, cpus_per_engine) for v in chosen}

    problems = []
    for v in chosen:
        gpus, cpus = demand[v.name].gpus, demand[v.name].cpus
        if not any(n.gpus >= gpus and n.cpus >= cpus for n in usable):
            largest = max(usable, key=lambda n: (n.gpus, n.cpus))
            what = f"{gpus:g} GPUs and {cpus:g} CPUs on one node" if gpus else f"{cpus:g} CPUs on one node"
            why = f" (tensor_parallel_size={v.engine_args.tensor_parallel_size})" if gpus else ""
            shapes = Counter((n.gpus, n.cpus) for n in usable)
            listed = ", ".join(f"{k} x {g:g} GPU {c:g} CPU" for (g, c), k in shapes.items())
            problems.append(f"variant {v.name!r} needs {what}{why}, but the largest node has "
                            f"{largest.gpus:g} GPUs and {largest.cpus:g} CPUs (nodes: {listed})")
    if problems:
        raise PlanError("grid cannot fit the cluster:\n  " + "\n  ".join(problems))

    order = {n.node_id: i for i, n in enumerate(usable)}
    pending = sorted(chosen, key=lambda v: (-demand[v.name].gpus, -demand[v.name].cpus))  # stable: grid order otherwise
    limit = grid.farm.max_engines
    placements: list[Placement] = []
    wave = 0
    while pending:
        free = {n.node_id: [n.gpus, n.cpus] for n in usable}
        later = []
        in_wave = 0
        for v in pending:
            gpus, cpus, bundles = demand[v.name].gpus, demand[v.name].cpus, demand[v.name].bundles
            fits = [n for n in usable if free[n.node_id][0] >= gpus and free[n.node_id][1] >= cpus]
            if not fits or (limit is not None and in_wave >= limit):
                later.append(v)
                continue
            # best fit: the node left with the least room, so whole nodes stay free for big engines;
            # an engine without a model goes to a node without GPUs when one has room
            node = min(fits, key=lambda n: (gpus == 0 and n.gpus > 0, free[n.node_id][0] - gpus,
                                            free[n.node_id][1] - cpus, order[n.node_id]))
            free[node.node_id][0] -= gpus
            free[node.node_id][1] -= cpus
            in_wave += 1
            placements.append(Placement(v.name, v.engine, node.node_id, node.host, gpus, cpus, bundles, wave))
        pending = later
        wave += 1
    return placements


def describe_placements(placements: list[Placement]) -> list[dict]:
    """Rows for a table: variant, engine, node, GPUs, CPUs, how (placement group or actor), wave."""
    return [
        {
            "variant": p.variant,
            "engine": p.engine,
            "node": f"{p.host}/{p.node_id[:8]}",
            "gpus": p.gpus,
            "cpus": p.cpus,
            "as": f"STRICT_PACK group of {p.bundles}" if p.bundles else "actor",
            "wave": p.wave,
        }
        for p in placements
    ]


def pin_options(placement: Placement) -> dict:
    """Ray options that hold an engine to its planned node.

    For a plain actor: `{"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}`.
    For a tensor-parallel vLLM engine: `{"bundle_label_selector": [...]}` to pass to
    `placement_group(...)`, so that every bundle of the STRICT_PACK group lands on that node.
    """
    if placement.bundles:
        return {"bundle_label_selector": [{"ray.io/node-id": placement.node_id}] * placement.bundles}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(placement.node_id, soft=False)}


def request_gpus(grid: GridConfig, gpus: int, timeout_s: float = 1800, poll_s: float = 5,
                 variants: list[str] | None = None) -> list[Node]:
    """Ask an autoscaling cluster for `gpus` GPUs (whole tensor-parallel groups first) and wait for them.

    Returns the alive nodes once the cluster has that many GPUs; raises TimeoutError otherwise.
    Harmless on a fixed cluster (the request is then only a hint nobody reads).
    """
    from ray.autoscaler.sdk import request_resources

    bundles = [{"GPU": float(v.engine_args.tensor_parallel_size)} for v in grid.variants
               if variants is None or v.name in variants]
    while sum(b["GPU"] for b in bundles) < gpus:
        bundles.append({"GPU": 1.0})
    request_resources(bundles=bundles)
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = cluster_nodes()
        have = sum(n.gpus for n in nodes)
        if have >= gpus:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster has {have:g} GPUs after {timeout_s:.0f} s; {gpus} were requested "
                               "(check `ray status` and the autoscaler's max_workers)")
        time.sleep(poll_s)
