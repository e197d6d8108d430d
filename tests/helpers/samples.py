"""Hand-made sample rows and results stores for the analysis tests (imported explicitly)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from omk_ray.config import Recipe
from omk_ray.results.schema import rows_to_table
from omk_ray.results.store import ResultsStore

GREEDY = Recipe()
SAMPLED = Recipe(temperature=0.6, top_p=0.95, top_k=20)


def sample(variant: str, bench: str, doc_id: str, correct: bool | float, *, recipe: Recipe = GREEDY, **fields) -> dict:
    """One sample row; `correct` may be a graded score in [0, 1]."""
    score = float(correct)
    response = fields.pop("response", f"The answer is {doc_id}.")
    row = {
        "run_id": "run-1",
        "cohort": recipe.cohort,
        "variant": variant,
        "variant_fingerprint": f"fp-{variant}",
        "bench": bench,
        "doc_id": doc_id,
        "repeat": 0,
        "prompt_hash": "p",
        "prompt_tokens": 10,
        "completion_tokens": max(1, len(response) // 4) if response else 0,
        "reasoning_tokens": 0,
        "finish_reason": "stop",
        "response": response,
        "reasoning": None,
        "extracted_answer": doc_id,
        "target": doc_id,
        "score": score,
        "correct": score >= 1.0,
        "metrics": {"exact_match": score},
        "domain": None,
        "subdomain": None,
        "latency_s": 0.1,
        "engine": "test",
        "engine_version": "0",
        "recipe_hash": recipe.hash,
        "scorer_version": "1",
        "dataset_revision": None,
        "started_at": datetime(2026, 5, 14, tzinfo=timezone.utc),
        "error": None,
    }
    row.update(fields)
    return row


def bench_rows(variant: str, bench: str, outcomes: list, **fields) -> list[dict]:
    """Rows for docs d0..dN-1 with the given outcomes (bools or graded scores)."""
    return [sample(variant, bench, f"d{i}", o, **fields) for i, o in enumerate(outcomes)]


def write_store(root: Path, rows: list[dict], configs: list[dict] | None = None) -> ResultsStore:
    """Write rows as shards (one per variant x bench) and one run manifest per grid config."""
    store = ResultsStore(root)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["variant"], r["bench"])].append(r)
    for (variant, bench), part in groups.items():
        store.write_shard(rows_to_table(part), variant, bench, "u0")
    for i, config in enumerate(configs or []):
        store.new_run(f"run-{i}").write_manifest({"run_id": f"run-{i}", "status": "finished", "config": config})
    return store


def grid_config(variants: list[dict], benches: list[str], recipe: dict | None = None) -> dict:
    """A grid config as the farm dumps it into a run manifest."""
    return {
        "name": "test",
        "recipe": recipe or {},
        "variants": [{"model": "/m", **v} for v in variants],
        "benches": [{"name": b, "source": "/x.jsonl"} for b in benches],
    }
