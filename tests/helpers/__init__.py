"""Helpers the tests import (`from helpers import write_grid`): grids, benches, stored keys.

    helpers.samples      hand-made sample rows and results stores (analysis)
    helpers.bench_data   lm-eval logs in tests/fixtures and rows in each task's format (benches)
    helpers.gpqa         GPQA-Diamond-shaped lm-eval logs that reproduce the seed card
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from omk_ray.results.schema import rows_to_table
from omk_ray.results.store import ResultsStore


def stored_keys(results: Path) -> list[tuple]:
    """Every stored row's key, duplicates included (read past the store's one-row-per-key reader)."""
    import pyarrow.dataset as ds

    from omk_ray.results.schema import RESUME_KEY
    from omk_ray.results.store import iter_keys

    paths = [str(p) for p in ResultsStore(results).shard_paths()]
    return list(iter_keys(ds.dataset(paths, format="parquet").to_table(columns=list(RESUME_KEY)))) if paths else []


def write_bench(path: Path, n: int, prefix: str = "q") -> Path:
    rows = [{"id": f"{prefix}{i}", "prompt": f"copy {1000 + 7 * i}", "target": str(1000 + 7 * i),
             "domain": "even" if i % 2 == 0 else "odd"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_grid(path: Path, variants: list[dict], benches: list[dict], **top) -> Path:
    top.setdefault("farm", {}).setdefault("canary", {"enabled": False})  # random models fail any canary
    config = {"name": "test", "recipe": {"max_gen_toks": 8}, "variants": variants, "benches": benches, **top}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def hf_variant(name: str, model: Path, **engine_args) -> dict:
    return {"name": name, "model": str(model), "engine": "transformers",
            "engine_args": {"dtype": "float32", "max_model_len": 256, **engine_args}}


def vllm_variant(name: str, model: Path) -> dict:
    return {"name": name, "model": str(model), "engine": "vllm",
            "engine_args": {"dtype": "float32", "max_model_len": 256, "extra": {"enforce_eager": True}}}


def write_farm_store(root: Path, grid: dict, rows: list[dict], model_paths: dict[str, str]) -> ResultsStore:
    """A results store as a farm run leaves it: sample shards and a run manifest holding the grid."""
    store = ResultsStore(root)
    for key in {(r["variant"], r["bench"]) for r in rows}:
        part = [r for r in rows if (r["variant"], r["bench"]) == key]
        store.write_shard(rows_to_table(part), key[0], key[1], "u0")
    store.new_run("run-1").write_manifest({"run_id": "run-1", "config": grid, "model_paths": model_paths})
    return store
