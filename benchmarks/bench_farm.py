"""Farm benchmarks (issue 2). Prints its figures; run with `.venv/bin/python benchmarks/bench_farm.py`.

1. Overhead: scheduler + actor + store cost per sample with the `echo` engine (no model,
   answers instantly), at 1k / 10k / 100k samples. Target: below 0.2 ms per sample.
2. Grid efficiency: engines whose time is proportional to their tokens, completion lengths
   long-tailed like the seed's LCB row (p50 ~2k, p90 ~6k, max 16k), 4 engines: fraction of
   engine time busy until the grid ends, omk-ray's scheduler vs a static even split of the
   requests over the replicas (lm-eval's data-parallel mode). Target: >= 0.95 for omk-ray.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import ray

from omk_ray.config import parse_grid
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def bench_file(folder: Path, n: int) -> Path:
    path = folder / f"bench-{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": str(i), "prompt": f"p {i}", "target": f"p {i}"}) + "\n")
    return path


def grid(folder: Path, n: int, shard_size: int, engines: int, extra: dict) -> object:
    return parse_grid({
        "name": "bench",
        "recipe": {"max_gen_toks": 16384},
        "variants": [{"name": "sim", "model": "none", "engine": "echo", "engine_args": {"extra": extra}}],
        "benches": [{"name": "b", "kind": "jsonl", "source": str(bench_file(folder, n))}],
        "farm": {"shard_size": shard_size, "max_engines": engines},
    })


def overhead(sizes: list[int], shard_size: int) -> None:
    print(f"\n== farm overhead per sample (echo engine answers instantly; shard_size={shard_size}; 1 engine)")
    print(f"{'samples':>8} {'wall s':>8} {'ms/sample':>10} {'target':>8}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            g = grid(Path(tmp), n, shard_size, 1, {})
            t0 = time.perf_counter()
            summary = run_grid(g, Path(tmp) / "r", show_progress=False)
            wall = time.perf_counter() - t0
            assert summary.generated == n, summary
            assert ResultsStore(Path(tmp) / "r").read(columns=["doc_id"]).num_rows == n
        ms = 1000 * wall / n
        print(f"{n:>8} {wall:>8.2f} {ms:>10.4f} {'< 0.2':>8}")


def long_tail_lengths(n: int, rng: np.random.Generator) -> list[int]:
    """Log-normal completion lengths with p50 ~2k, p90 ~6k, capped at 16k (the seed's LCB envelope)."""
    sigma = np.log(6000 / 2000) / 1.2816
    return [int(x) for x in np.minimum(rng.lognormal(np.log(2000), sigma, n), 16384).clip(16)]


def efficiency(n: int, engines: int, seconds_total: float, shard_size: int) -> None:
    rng = np.random.default_rng(0)
    lengths = long_tail_lengths(997, rng)  # indexed by crc32(request id) in the echo engine
    import zlib

    per_request = [lengths[zlib.crc32(f"{i}#0".encode()) % len(lengths)] for i in range(n)]
    spt = seconds_total * engines / sum(per_request)
    p = np.percentile(per_request, [50, 90])
    print(f"\n== grid efficiency: {n} requests, {engines} engines, time per request = tokens x {spt * 1e6:.1f} us")
    print(f"   completion tokens p50 {p[0]:.0f}, p90 {p[1]:.0f}, max {max(per_request)}; "
          f"ideal makespan {sum(per_request) * spt / engines:.1f} s")

    # Static even split: contiguous equal-count chunks, one per replica, as lm-eval's data-parallel mode.
    chunks = np.array_split(np.array(per_request, dtype=float), engines)
    work = [c.sum() * spt for c in chunks]
    static = sum(work) / (engines * max(work))

    with tempfile.TemporaryDirectory() as tmp:
        g = grid(Path(tmp), n, shard_size, engines, {"seconds_per_token": spt, "lengths": lengths})
        summary = run_grid(g, Path(tmp) / "r", show_progress=False)
        assert summary.generated == n
        events = ResultsStore(Path(tmp) / "r").runs()[-1].events()
        manifest = ResultsStore(Path(tmp) / "r").runs()[-1].manifest()
    ready = {e["name"]: datetime.fromisoformat(e["time"]) for e in events if e["event"] == "engine_started"}
    end = datetime.fromisoformat(manifest["ended_at"])
    windows = sum((end - ready[e["name"]]).total_seconds() for e in manifest["engines"])
    measured = sum(e["busy_s"] for e in manifest["engines"]) / windows  # each engine from its load to the end
    makespan = (end - min(ready.values())).total_seconds()
    print(f"{'scheduler':<34} {'busy fraction':>14} {'makespan s':>11}")
    print(f"{'static even split (computed)':<34} {static:>14.3f} {max(work):>11.1f}")
    print(f"{'omk-ray guided self-scheduling':<34} {measured:>14.3f} {makespan:>11.1f}   (target >= 0.95)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=40.0, help="ideal makespan of the efficiency grid")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)  # 4 logical CPUs: 4 engine slots
    try:
        overhead([int(s) for s in args.sizes.split(",")], args.shard_size)
        efficiency(args.requests, 4, args.seconds, shard_size=16)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
