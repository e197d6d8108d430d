"""The engine actor: one variant's engine, loaded once, answering work units until told to stop."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from omk_ray.benches import Bench, Doc, Score, make_bench
from omk_ray.config import BenchSpec, Recipe, VariantSpec
from omk_ray.engines import Request, engine_class
from omk_ray.results.schema import rows_to_table


@dataclass
class WorkUnit:
    id: str
    run_id: str
    variant: str
    fingerprint: str
    bench: BenchSpec
    recipe: Recipe
    samples: list[tuple[Doc, int]]
    dataset_revision: str | None = None


class EngineActor:
    """Wrapped by `ray.remote` in the scheduler; kept a plain class so it can be used in-process."""

    def __init__(self, variant: VariantSpec, model_path: str):
        if os.environ.get("CUDA_VISIBLE_DEVICES") == "" or not _has_cuda():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        start = time.perf_counter()
        self.variant = variant
        self.engine = engine_class(variant.engine)(variant, model_path)
        self.load_s = time.perf_counter() - start
        self.benches: dict[str, Bench] = {}

    def info(self) -> dict:
        return {
            "variant": self.variant.name,
            "engine": self.engine.version,
            "host": socket.gethostname(),
            "node_id": _node_id(),
            "pid": os.getpid(),
            "gpus": _gpu_names(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "load_s": round(self.load_s, 2),
        }

    def run_unit(self, unit: WorkUnit) -> pa.Table:
        bench = self.benches.get(unit.bench.name)
        if bench is None:
            bench = self.benches[unit.bench.name] = make_bench(unit.bench)
        started = datetime.now(timezone.utc)
        requests = [Request(id=f"{doc.id}#{r}", messages=doc.messages, repeat=r) for doc, r in unit.samples]
        completions = self.engine.generate(requests, unit.recipe)
        scores = self._score(bench, unit.samples, completions)
        rows = []
        for (doc, repeat), completion, (score, error) in zip(unit.samples, completions, scores):
            metrics = dict(score.metrics) if score else {}
            if completion.thinking_budget_hit:
                metrics["thinking_budget_hit"] = 1.0
            rows.append(
                {
                    "run_id": unit.run_id,
                    "cohort": unit.recipe.cohort,
                    "variant": unit.variant,
                    "variant_fingerprint": unit.fingerprint,
                    "bench": unit.bench.name,
                    "doc_id": doc.id,
                    "repeat": repeat,
                    "prompt_hash": completion.prompt_hash,
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "reasoning_tokens": completion.reasoning_tokens,
                    "finish_reason": completion.finish_reason,
                    "response": completion.text,
                    "reasoning": completion.reasoning,
                    "extracted_answer": score.extracted if score else None,
                    "target": doc.target,
                    "score": score.score if score else 0.0,
                    "correct": score.correct if score else False,
                    "metrics": metrics,
                    "domain": doc.domain,
                    "subdomain": doc.subdomain,
                    "latency_s": completion.latency_s,
                    "engine": self.variant.engine,
                    "engine_version": self.engine.version,
                    "recipe_hash": unit.recipe.hash,
                    "scorer_version": bench.scorer_version,
                    "score_detail": score.detail if score else None,
                    "dataset_revision": unit.dataset_revision,
                    "started_at": started,
                    "error": error,
                }
            )
        return rows_to_table(rows)

    @staticmethod
    def _score(bench: Bench, samples, completions) -> list[tuple[Score | None, str | None]]:
        """(score, error) per sample; a scorer choking on a hostile completion fails that sample only."""
        todo = [(i, doc, c) for i, ((doc, _), c) in enumerate(zip(samples, completions)) if c.error is None]
        out: list[tuple[Score | None, str | None]] = [(None, c.error) for c in completions]
        try:
            for (i, _, _), score in zip(todo, bench.score_many([(doc, c) for _, doc, c in todo])):
                out[i] = (score, None)
        except Exception:
            for i, doc, c in todo:
                try:
                    out[i] = (bench.score(doc, c), None)
                except Exception as err:
                    out[i] = (None, f"scorer error: {type(err).__name__}: {err}")
        return out

    def pid(self) -> int:
        return os.getpid()


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _gpu_names() -> list[str]:
    if not _has_cuda():
        return []
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
