"""Shared fixtures: tiny real models built once per session, and grid/bench writers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray
import yaml

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def local_ray():
    """A real local Ray with 2 CPUs, shut down after the test."""
    from omk_ray.farm.scheduler import NAMESPACE

    ray.init(address="local", num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_gemma4(tmp_path_factory) -> Path:
    from omk_ray.toy.tiny import build_tiny_gemma4

    return build_tiny_gemma4(tmp_path_factory.mktemp("models") / "tiny-gemma4", seed=0)


def stored_keys(results: Path) -> list[tuple]:
    """Every stored row's key, duplicates included (read past the store's one-row-per-key reader)."""
    import pyarrow.dataset as ds

    from omk_ray.results.schema import RESUME_KEY
    from omk_ray.results.store import ResultsStore, iter_keys

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
