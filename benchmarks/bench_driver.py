"""Driver capacity (issue 22): how many samples per second the farm's driver absorbs, and its CPU per sample.

Run: `.venv/bin/python benchmarks/bench_driver.py` (500k samples; 64 engines, then 8, in one run).

A simulated cluster of FAKE GPUs (`ray.cluster_utils.Cluster`, `--nodes` x `--gpus-per-node`; with
`--nodes 1` one local Ray declaring them) runs `simgpu` engines with zero step time: every request
is answered at the next turn of the actor's event loop, so the engines are instant and the driver
(plan -> scheduler -> scoring actors -> Parquet shards) is what is measured. `--variants` variants,
one jsonl bench; each engine count runs the whole grid into a fresh results folder through
`run_grid`, the farm's one entry point, with `farm.max_engines` set to that count.

Figures per engine count (the driver is this process; CPU from `resource.getrusage`, all its threads):
- whole run: samples / wall, driver CPU / samples (planning, engine starts and the last flush in);
- steady: between the shards holding 20% and 95% of the rows (engines started, queues full):
  rows / wall there, and the driver's CPU per row there. `capacity = 1 / CPU per row` is what the
  driver would absorb with a core of its own: on a machine with fewer cores than engines + driver
  the engines' processes take CPU from the driver and the wall rate measures the machine, not it.
Every key is checked to be stored exactly once (the raw shards read, no dedup): `exact` in the line.
The load average is printed beside the figures (other processes on a shared machine slow all of it).

`--json PATH` writes the figures as JSON as well; `--profile PATH` runs the first engine count under
cProfile and prints the driver's top costs (file:line).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pyarrow.dataset as ds
import ray

from omk_ray.config import parse_grid
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray starts as many idle workers as a node has CPUs when the driver connects: 64+ idle processes of
# ~100 MB here, beside the engines; the engine actors start their own workers anyway.
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
KEY = ["variant", "bench", "doc_id", "repeat"]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def start_cluster(nodes: int, gpus_per_node: int, cpus_per_node: int):
    """A local Ray (nodes == 1) or a `Cluster` of `nodes` simulated nodes; returns the Cluster or None."""
    if nodes <= 1:
        ray.init(address="local", num_cpus=cpus_per_node, num_gpus=gpus_per_node, include_dashboard=False,
                 log_to_driver=False)
        return None
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "num_gpus": gpus_per_node})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node, num_gpus=gpus_per_node)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


class MemoryLow:
    """The machine's lowest available memory while it runs (a sample every second)."""

    def __init__(self):
        self.low, self.stop = psutil.virtual_memory().available, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(1.0):
            self.low = min(self.low, psutil.virtual_memory().available)

    def done(self) -> float:
        self.stop.set()
        self.low = min(self.low, psutil.virtual_memory().available)
        return round(self.low / 2**30, 1)


def write_bench(folder: Path, docs: int) -> Path:
    path = folder / f"bench-{docs}.jsonl"
    with path.open("w") as f:
        for i in range(docs):
            f.write(json.dumps({"id": str(i), "prompt": f"p {i}", "target": f"p {i}"}) + "\n")
    return path


def grid_for(bench: Path, variants: int, engines: int, flush: int):
    return parse_grid({
        "name": "driver", "recipe": {"max_gen_toks": 16},
        "variants": [{"name": f"v{i}", "model": "none", "engine": "simgpu",
                      "engine_args": {"extra": {"step_s": 0, "step_s_per_seq": 0}}} for i in range(variants)],
        "benches": [{"name": "b", "kind": "jsonl", "source": str(bench)}],
        "farm": {"canary": {"enabled": False}, "flush_samples": flush, "max_engines": engines},
    })


def exact(root: Path, run_id: str) -> tuple[int, int]:
    """(rows, distinct keys) of the run in the raw shards: equal when no sample is stored twice."""
    store = ResultsStore(root)
    table = ds.dataset([str(p) for p in store.shard_paths()], format="parquet").to_table(columns=[*KEY, "run_id"])
    table = table.filter(pc.field("run_id") == run_id)
    return table.num_rows, table.group_by(KEY).aggregate([]).num_rows


def steady(points: list[tuple[float, float, int]], since: float, lo: float = 0.2,
           hi: float = 0.95) -> tuple[float | None, float | None, int]:
    """(rows/s, driver CPU s per row, rows) over the shards written once every engine had loaded (`since`)
    and between `lo` and `hi` of the rows; points are (wall time, driver CPU, rows written so far) after
    each shard. (None, None, 0) when fewer than two shards fall there (too few samples for the start)."""
    total = points[-1][2]
    window = [p for p in points if p[0] >= since and lo * total <= p[2] <= hi * total]
    if len(window) < 2 or window[-1][2] == window[0][2]:
        return None, None, 0
    (t0, c0, r0), (t1, c1, r1) = window[0], window[-1]
    return (r1 - r0) / max(t1 - t0, 1e-9), (c1 - c0) / (r1 - r0), r1 - r0


def one(bench: Path, tmp: Path, variants: int, engines: int, flush: int, profile: Path | None) -> dict:
    grid = grid_for(bench, variants, engines, flush)
    root = tmp / f"r{engines}"
    points: list[tuple[float, float, int]] = []
    written = [0]

    def on_shard(variant, bench_name, table) -> None:
        written[0] += table.num_rows
        points.append((time.time(), cpu_s(), written[0]))

    load_before = load()
    memory = MemoryLow()
    profiler = cProfile.Profile() if profile else None
    t0, c0 = time.time(), cpu_s()
    if profiler:
        profiler.enable()
    summary = run_grid(grid, root, show_progress=False, on_shard=on_shard)
    if profiler:
        profiler.disable()
        profiler.dump_stats(str(profile))
    wall, cpu = time.time() - t0, cpu_s() - c0
    lowest_available_gib = memory.done()
    rows, keys = exact(root, summary.run_id)
    run = next(r for r in ResultsStore(root).runs() if r.run_id == summary.run_id)
    loaded = [datetime.fromisoformat(e["time"]).timestamp() for e in run.events() if e["event"] == "engine_started"]
    all_loaded = sorted(loaded)[engines - 1] if len(loaded) >= engines else None
    rate, cpu_row, steady_rows = steady(points, all_loaded) if all_loaded else (None, None, 0)
    return {
        "engines": engines, "engines_started": len(loaded), "variants": variants,
        "planned": summary.planned, "generated": summary.generated, "failed": summary.failed,
        "rows": rows, "keys": keys, "exact": rows == keys == summary.planned == summary.generated,
        "wall_s": round(wall, 2), "samples_per_s": round(summary.generated / wall, 1),
        "driver_cpu_s": round(cpu, 2), "driver_cpu_us_per_sample": round(1e6 * cpu / max(summary.generated, 1), 1),
        "all_loaded_s": round(all_loaded - t0, 1) if all_loaded else None,
        "steady_rows": steady_rows,
        "steady_samples_per_s": round(rate, 1) if rate else None,
        "steady_driver_cpu_us_per_sample": round(1e6 * cpu_row, 1) if cpu_row else None,
        "steady_capacity_per_s": round(1 / cpu_row, 1) if cpu_row else None,
        "load_before": load_before, "load_after": load(), "lowest_available_gib": lowest_available_gib,
    }


def top_costs(profile: Path, n: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.sort_stats("tottime").print_stats(n)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=500_000, help="samples per engine count (all variants)")
    parser.add_argument("--variants", type=int, default=8)
    parser.add_argument("--engines", default="64,8", help="comma list of engine counts, run one after another")
    parser.add_argument("--nodes", type=int, default=1, help="simulated Ray nodes (ray.cluster_utils.Cluster); "
                        "1: one local Ray with all the fake GPUs")
    parser.add_argument("--gpus", type=int, default=64, help="fake GPUs in all (split evenly over the nodes)")
    parser.add_argument("--flush-samples", type=int, default=4096, help="farm.flush_samples (rows per shard)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="cProfile the first engine count's run into this file")
    args = parser.parse_args()
    engine_counts = [int(x) for x in args.engines.split(",")]
    docs = -(-args.samples // args.variants)
    gpus_per_node = -(-args.gpus // args.nodes)
    # Logical CPUs: an engine actor takes one; the scoring actors none. Not the machine's cores.
    cpus_per_node = gpus_per_node + 1
    t0 = time.time()
    cluster = start_cluster(args.nodes, gpus_per_node, cpus_per_node)
    started_in = time.time() - t0
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="omk-bench-driver-") as tmp:
            bench = write_bench(Path(tmp), docs)
            for i, engines in enumerate(engine_counts):
                profile = args.profile if args.profile and i == 0 else None
                results.append(one(bench, Path(tmp), args.variants, engines, args.flush_samples, profile))
                r = results[-1]
                print(f"engines={r['engines']} started={r['engines_started']} samples={r['generated']} "
                      f"exact={r['exact']} wall_s={r['wall_s']} samples_per_s={r['samples_per_s']} "
                      f"driver_cpu_us_per_sample={r['driver_cpu_us_per_sample']} "
                      f"steady_samples_per_s={r['steady_samples_per_s']} "
                      f"steady_driver_cpu_us_per_sample={r['steady_driver_cpu_us_per_sample']} "
                      f"steady_capacity_per_s={r['steady_capacity_per_s']} load={r['load_before']}->{r['load_after']}",
                      flush=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    where = f"{args.nodes} nodes x {gpus_per_node} fake GPUs" if args.nodes > 1 else \
        f"one local Ray with {gpus_per_node} fake GPUs"
    print(f"\n== driver capacity: {docs * args.variants:,} samples ({args.variants} variants x {docs:,} docs), {where} "
          f"(cluster up in {started_in:.1f} s); {os.cpu_count()} cores, load average now {load()}")
    columns = [("engines", "engines", "d"), ("started", "engines_started", "d"), ("exact", "exact", ""),
               ("wall s", "wall_s", ".1f"), ("samples/s", "samples_per_s", ",.0f"),
               ("CPU us/sample", "driver_cpu_us_per_sample", ".1f"), ("all up at s", "all_loaded_s", ".1f"),
               ("steady rows", "steady_rows", ",d"), ("steady/s", "steady_samples_per_s", ",.0f"),
               ("steady CPU us/sample", "steady_driver_cpu_us_per_sample", ".1f"),
               ("capacity/s", "steady_capacity_per_s", ",.0f"), ("min free GiB", "lowest_available_gib", ".1f"),
               ("load before -> after", None, "")]
    print(" ".join(f"{title:>{max(len(title), 7)}}" for title, _, _ in columns))
    for r in results:
        cells = [format(r[key], spec) if key and r[key] is not None else "-" for _, key, spec in columns]
        cells[-1] = f"{r['load_before']} -> {r['load_after']}"
        print(" ".join(f"{cell:>{max(len(title), 7)}}" for (title, _, _), cell in zip(columns, cells)))
    if len(results) > 1:
        first, *rest = results
        for r in rest:
            capacity = (f"{first['steady_capacity_per_s'] / r['steady_capacity_per_s']:.3f}"
                        if first["steady_capacity_per_s"] and r["steady_capacity_per_s"] else "-")
            print(f"ratio {first['engines']} / {r['engines']} engines: samples/s "
                  f"{first['samples_per_s'] / r['samples_per_s']:.3f}, steady capacity {capacity}")
    print("target: >= 10,000 samples/s at 64 engines; capacity = 1 / the driver's CPU per sample once every engine "
          "is up (what the driver absorbs with a core of its own)")
    if args.json:
        args.json.write_text(json.dumps({"cluster": where, "cores": os.cpu_count(), "results": results}, indent=2))
    if args.profile:
        print(f"\n== driver profile of the {engine_counts[0]}-engine run ({args.profile}), top costs by own time")
        print(top_costs(args.profile))


if __name__ == "__main__":
    main()
