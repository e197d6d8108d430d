"""`omk-ray demo`: the whole path on this machine, from nothing to tables.

It builds two tiny Gemma 4 MoE checkpoints, writes a small bench and a grid config that runs
both on both engines (vLLM and transformers), runs the grid on a local Ray cluster, and
prints a per-variant summary. Rerunning resumes from what `OUT` already holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.compute as pc
import yaml
from rich.console import Console

from omk_ray.config import load_grid
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore

console = Console()


def demo_bench(path: Path, n: int = 24) -> Path:
    """Short exact-answer problems (digit copying and reversal)."""
    rows = []
    for i in range(n):
        digits = str(1000 + 37 * i)
        if i % 2:
            rows.append({"id": f"rev-{i}", "prompt": f"reverse {digits}", "target": digits[::-1], "domain": "strings"})
        else:
            rows.append({"id": f"copy-{i}", "prompt": f"copy {digits}", "target": digits, "domain": "copy"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def demo_config(out: Path, models: dict[str, Path], bench: Path) -> Path:
    engine_args = {"dtype": "float32", "max_model_len": 256, "extra": {}}
    vllm_args = {**engine_args, "extra": {"enforce_eager": True}}
    variants = []
    for name, path in models.items():
        variants.append({"name": f"{name}-vllm", "model": str(path), "engine": "vllm", "engine_args": vllm_args})
        variants.append({"name": f"{name}-hf", "model": str(path), "engine": "transformers", "engine_args": engine_args})
    config = {
        "name": "demo",
        "recipe": {"max_gen_toks": 8, "temperature": 0},
        "variants": variants,
        "benches": [{"name": "digits", "kind": "jsonl", "source": str(bench)}],
        "farm": {"shard_size": 8},
    }
    path = out / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo(out: Path, fresh: bool = False) -> None:
    from omk_ray.toy.tiny import build_tiny_gemma4

    if fresh and out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    models = {}
    for name, seed in (("tiny-a", 0), ("tiny-b", 1)):
        path = out / "models" / name
        if not (path / "config.json").exists():
            console.print(f"building tiny random Gemma 4 MoE {name} (seed {seed})")
            build_tiny_gemma4(path, seed=seed)
        models[name] = path
    config = demo_config(out, models, demo_bench(out / "digits.jsonl"))
    grid = load_grid(config)
    console.print(f"grid {config}: {len(grid.variants)} variants x {len(grid.benches)} bench, local Ray")
    summary = run_grid(grid, out / "results")
    console.print(f"run {summary.run_id}: {summary.status}, {summary.generated} samples generated in {summary.seconds:.0f} s")
    summarize(ResultsStore(out / "results"))
    console.print(f"\nresults: {out / 'results'} (Parquet: {out / 'results' / 'samples'}/<variant>/<bench>/*.parquet)")


def summarize(store: ResultsStore) -> None:
    from omk_ray.cli import print_table

    table = store.read()
    rows = []
    for variant in sorted(set(table["variant"].to_pylist())):
        part = table.filter(pc.equal(table["variant"], variant))
        rows.append({
            "variant": variant,
            "engine": part["engine"][0].as_py(),
            "samples": part.num_rows,
            "accuracy %": round(100 * pc.mean(part["score"]).as_py(), 2),
            "mean tokens": round(pc.mean(part["completion_tokens"]).as_py(), 1),
            "length caps": pc.sum(pc.equal(part["finish_reason"], "length")).as_py() or 0,
        })
    print_table(rows, title="per-variant summary")
    by_key = {}
    for row in table.select(["variant", "doc_id", "response"]).to_pylist():
        by_key[(row["variant"], row["doc_id"])] = row["response"]
    for variant in sorted({v.rsplit("-", 1)[0] for v, _ in by_key}):
        docs = [d for v, d in by_key if v == f"{variant}-vllm"]
        same = sum(by_key.get((f"{variant}-vllm", d)) == by_key.get((f"{variant}-hf", d)) for d in docs)
        if docs:
            console.print(f"{variant}: vLLM and transformers gave the same greedy answer on {same}/{len(docs)} problems")
