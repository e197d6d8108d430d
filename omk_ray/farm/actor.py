"""The farm's Ray actors: an engine actor (one variant's engine, fed request by request) and a
scoring actor (the benches' scorers, on CPU).

The engine actor is an async actor: `submit` hands it requests, each starts at once on the
engine, and `poll` returns whatever finished since the last poll (waiting a moment when nothing
has). Nothing is scored here: the engine only generates.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from omk_ray.benches import Bench, Doc, Score, make_bench
from omk_ray.config import BenchSpec, Recipe, VariantSpec
from omk_ray.devices import cuda_visible, gpu_names
from omk_ray.farm.artifact_store import local_copy
from omk_ray.engines import Completion, Request, engine_class
from omk_ray.farm.rows import score_all


@dataclass
class Generated:
    sample: int  # the scheduler's id of the sample
    completion: Completion
    started_at: datetime
    engine_error: bool = False  # the engine raised (not the request's own error): worth a retry


class EngineActor:
    """Wrapped by `ray.remote` in the scheduler."""

    def __init__(self, variant: VariantSpec, model_path: str):
        if not cuda_visible():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        engine = engine_class(variant.engine)
        self.artifact = None
        if engine.holds_weights:  # a variant built on another node: a verified copy on this one (farm/artifact_store.py)
            model_path, self.artifact = local_copy(model_path)
        start = time.perf_counter()
        self.variant = variant
        self.engine = engine(variant, model_path)
        self.load_s = time.perf_counter() - start
        self.identity = self.engine.identity()  # what made this engine's samples (engines/identity.py)
        self.finished: list[Generated] = []
        self.tasks: set[asyncio.Task] = set()
        self.wake: asyncio.Event | None = None

    async def info(self) -> dict:
        return {
            "variant": self.variant.name,
            "engine": self.engine.version,
            "identity": self.identity.model_dump(),
            "capacity": self.engine.capacity,
            "host": socket.gethostname(),
            "node_id": _node_id(),
            "pid": os.getpid(),
            "gpus": gpu_names(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "load_s": round(self.load_s, 2),
            "artifact": self.artifact,
        }

    async def submit(self, requests: list[tuple[int, Request]], recipe: Recipe) -> int:
        """Start every request now; returns how many are in flight."""
        for sample, request in requests:
            task = asyncio.get_running_loop().create_task(self._run(sample, request, recipe))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(self.tasks)

    async def poll(self, wait_s: float = 0.2) -> list[Generated]:
        """Everything finished since the last poll; waits up to `wait_s` for the first one."""
        if not self.finished:
            self.wake = self.wake or asyncio.Event()
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        done, self.finished = self.finished, []
        return done

    async def _run(self, sample: int, request: Request, recipe: Recipe) -> None:
        started = datetime.now(timezone.utc)
        try:
            completion = await self.engine.respond(request, recipe)
            engine_error = False
        except Exception as err:  # noqa: BLE001
            if self.engine.fatal(err):
                os._exit(1)  # the engine is gone: the farm sees a dead actor and retries elsewhere
            completion = Completion(text="", finish_reason="error", error=f"engine error: {type(err).__name__}: {err}")
            engine_error = True
        self.finished.append(Generated(sample, replace(completion, token_ids=[]), started, engine_error))
        if self.wake is not None:
            self.wake.set()


class ScorerActor:
    """Scores finished samples for every bench of a grid; the benches are built on first use."""

    def __init__(self, benches: list[BenchSpec]):
        self.specs = {b.name: b for b in benches}
        self.benches: dict[str, Bench] = {}

    def bench(self, name: str) -> Bench:
        if name not in self.benches:
            self.benches[name] = make_bench(self.specs[name])
        return self.benches[name]

    def score(self, bench: str, pairs: list[tuple[Doc, Completion]]) -> tuple[list[tuple[Score | None, str | None]], str]:
        """(score, error) per pair, and the bench's scorer version."""
        b = self.bench(bench)
        return score_all(b, pairs), b.scorer_version


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


