"""`omk-ray compare` at scale (issue 5). Prints its figures; run with `.venv/bin/python benchmarks/bench_compare.py`.

Writes a synthetic results store of 1,000,000 sample rows (10 variants x 10 benches x
10,000 problems, one repeat): realistic text lengths (long-tailed, up to ~16k chars), thinking
on two benches, domains on one, a strict/flexible metric pair on one, and a sprinkle of every
anomaly (empty answers, loops, length caps, marker leaks). Then runs the whole `omk-ray
compare` command (every table, Markdown, HTML with plots, Parquet, JSON) in a fresh process
and prints its wall time and peak memory (max RSS). Targets: under 10 s and under 2 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from omk_ray.config import Recipe
from omk_ray.results.schema import SAMPLE_SCHEMA
from omk_ray.results.store import ResultsStore

DOMAINS = {
    "Physics": ["Quantum Mechanics", "Astrophysics", "High-energy particle physics", "Physics (general)"],
    "Chemistry": ["Organic Chemistry", "Chemistry (general)"],
    "Biology": ["Molecular Biology", "Genetics"],
}


def text_pool(rng: np.random.Generator, size: int, median_chars: float) -> tuple[pa.Array, np.ndarray]:
    """Texts of long-tailed lengths (lognormal, capped at 16k chars) from a 5,000-word vocabulary;
    one in 500 is a degenerate loop that runs to the cap, one in 700 leaks a reasoning marker."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(5000)])
    lengths = np.minimum(rng.lognormal(np.log(median_chars), 0.9, size).astype(int) + 1, 16000)
    texts = []
    for i, n in enumerate(lengths):
        if i % 500 == 1:
            texts.append(("Let me reconsider the constraint once more. " * 400)[:16000])
        elif i % 700 == 2:
            texts.append("<|channel>thinking<channel|>The answer is 4.")
        else:
            texts.append(" ".join(rng.choice(vocab, size=max(1, n // 5)))[:n])
    texts[0] = ""
    return pa.array(texts, pa.large_string()), np.array([len(t) for t in texts])


def synthetic_table(variant: str, v: int, bench: str, b: int, docs: int, pools, rng: np.random.Generator) -> pa.Table:
    answers, answer_chars, thoughts, thought_chars = pools
    n = docs
    pick = rng.integers(0, len(answer_chars), n)
    difficulty = np.random.default_rng(b).uniform(0, 1, n)  # the same problems are hard for every variant
    correct = difficulty < 0.85 - 0.01 * v + rng.normal(0, 0.05, n)
    thinking = b in (3, 7)
    finish = np.where(answer_chars[pick] >= 15000, "length", "stop").astype(object)
    if thinking:
        finish[rng.random(n) < 0.01] = "length_in_reasoning"
    graded = b == 5
    score = np.where(correct, 1.0, rng.uniform(0, 0.9, n)) if graded else correct.astype(float)
    keys, values = (["exact_match,strict-match", "exact_match,flexible-extract"], [score * 0.1, score]) if b == 2 else (
        ["acc"], [score])
    offsets = pa.array(np.arange(0, (n + 1) * len(keys), len(keys)), pa.int32())
    metrics = pa.MapArray.from_arrays(offsets, pa.array(np.tile(keys, n)), pa.array(np.column_stack(values).ravel()))
    domain = subdomain = pa.nulls(n, pa.string())
    if b == 1:
        names = list(DOMAINS)
        d = np.arange(n) % len(names)
        domain = pa.array(np.array(names, dtype=object)[d])
        subdomain = pa.array([DOMAINS[names[i]][j % len(DOMAINS[names[i]])] for j, i in enumerate(d)])
    recipe = Recipe(enable_thinking=thinking)
    columns = {
        "run_id": pa.array(["bench-run"] * n),
        "cohort": pa.array([recipe.cohort] * n),
        "variant": pa.array([variant] * n),
        "variant_fingerprint": pa.array([f"fp-{variant}"] * n),
        "bench": pa.array([bench] * n),
        "doc_id": pa.array([f"{bench}/{i}" for i in range(n)]),
        "repeat": pa.array(np.zeros(n, np.int32)),
        "prompt_hash": pa.array(["p"] * n),
        "prompt_tokens": pa.array(np.full(n, 200, np.int32)),
        "completion_tokens": pa.array((answer_chars[pick] // 4 + (thought_chars[pick] // 4 if thinking else 0)).astype(np.int32)),
        "reasoning_tokens": pa.array((thought_chars[pick] // 4 if thinking else np.zeros(n)).astype(np.int32)),
        "finish_reason": pa.array(finish, pa.string()),
        "response": answers.take(pa.array(pick)),
        "reasoning": thoughts.take(pa.array(pick)) if thinking else pa.nulls(n, pa.large_string()),
        "extracted_answer": pa.array(["4"] * n),
        "target": pa.array(["4"] * n),
        "score": pa.array(score),
        "correct": pa.array(correct),
        "metrics": metrics,
        "domain": domain,
        "subdomain": subdomain,
        "latency_s": pa.array(np.ones(n)),
        "engine": pa.array(["vllm"] * n),
        "engine_version": pa.array(["0.32"] * n),
        "recipe_hash": pa.array([recipe.hash] * n),
        "scorer_version": pa.array(["1"] * n),
        "started_at": pa.array([datetime(2026, 5, 14, tzinfo=timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
    }
    for f in SAMPLE_SCHEMA:  # columns this script does not fill stay null
        columns.setdefault(f.name, pa.nulls(n, f.type))
    return pa.table(columns, schema=SAMPLE_SCHEMA)


def build_store(root: Path, variants: int, benches: int, docs: int) -> None:
    rng = np.random.default_rng(0)
    answers, answer_chars = text_pool(rng, 4000, median_chars=800)
    thoughts, thought_chars = text_pool(rng, 4000, median_chars=2000)
    store = ResultsStore(root)
    for v in range(variants):
        name = "128e" if v == 0 else f"v{v}"
        for b in range(benches):
            bench = f"bench{b}"
            table = synthetic_table(name, v, bench, b, docs, (answers, answer_chars, thoughts, thought_chars), rng)
            store.write_shard(table, name, bench, "u0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--benches", type=int, default=10)
    parser.add_argument("--docs", type=int, default=10_000, help="problems per bench")
    parser.add_argument("--keep", type=Path, help="build the store here and keep it (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="with --keep: use the store already there")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        root = args.keep or Path(tmp) / "results"
        rows = args.variants * args.benches * args.docs
        t0 = time.perf_counter()
        if not (args.reuse and (root / "samples").is_dir()):
            build_store(root, args.variants, args.benches, args.docs)
        size = sum(p.stat().st_size for p in (root / "samples").rglob("*.parquet"))
        print(f"store: {rows:,} rows ({args.variants} variants x {args.benches} benches x {args.docs:,} problems), "
              f"{size / 2**20:.0f} MiB Parquet, built in {time.perf_counter() - t0:.1f} s")

        command = [sys.executable, "-c", "from omk_ray.cli import app; app(prog_name='omk-ray')", "compare", str(root), "--baseline", "128e",
                   "--out", str(Path(tmp) / "report"), "--quiet"]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n")
            raise SystemExit(f"compare failed with exit code {done.returncode}")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = usage.ru_maxrss / 2**20  # KiB -> GiB
        print(f"omk-ray compare (whole command, fresh process): {wall:.2f} s wall, {usage.ru_utime + usage.ru_stime:.2f} s CPU, "
              f"peak RSS {peak:.2f} GiB (targets: < 10 s, < 2 GiB) -> {'OK' if wall < 10 and peak < 2 else 'MISSED'}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        html = Path(tmp) / "report" / "report.html"
        print(f"report.html {html.stat().st_size / 2**20:.1f} MiB; "
              f"{len(list((Path(tmp) / 'report' / 'tables').glob('*.parquet')))} Parquet tables")


if __name__ == "__main__":
    main()
