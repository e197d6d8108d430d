"""The scheduler: engine actors over the cluster's GPUs, work units pulled by whichever is free.

- One long-lived actor per (variant, slot); a variant's engine is loaded once and serves all of
  its benches. Slots go to the variants with the most work left; an engine whose variant has
  no work left is stopped, and its GPUs go to the next variant.
- Units are cut at dispatch time, longest-expected bench first, and shrink as a variant's
  work runs out (guided self-scheduling): big batches early, small ones at the end, so no
  engine idles while another still holds a long queue.
- A dead actor is replaced and its unit retried; an engine error retries the unit; each
  sample is retried at most `farm.max_retries` times, every failure recorded in the run's events.
- The driver writes each finished unit as one atomic Parquet shard: a crash loses at most
  the units in flight, and the next run regenerates only those.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from omk_ray.benches import Doc
from omk_ray.config import FarmSpec, VariantSpec
from omk_ray.engines import engine_class
from omk_ray.farm.actor import EngineActor, WorkUnit
from omk_ray.farm.planner import BenchWork, Plan
from omk_ray.results.store import ResultsStore, RunLog

NAMESPACE = "omk-ray"
ACTOR_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


@dataclass
class VariantQueue:
    """A variant's missing samples, grouped by bench, longest-expected bench first.

    With a canary, the first `canary_docs` docs of every bench are handed out first, and the
    rest waits until the canary has been judged.
    """

    groups: list[BenchWork]
    canary_docs: int = 0
    pending: dict[str, deque] = field(default_factory=dict)
    canary: dict[str, deque] = field(default_factory=dict)
    canary_outstanding: int = 0
    canary_state: str | None = None  # None (no canary), "pending", "passed", "failed"
    failed: bool = False

    def __post_init__(self) -> None:
        self.groups = sorted(self.groups, key=lambda w: w.tokens_per_sample, reverse=True)
        for w in self.groups:
            first = set(w.doc_order[: self.canary_docs])
            self.canary[w.bench] = deque(s for s in w.samples if s[0].id in first)
            self.pending[w.bench] = deque(s for s in w.samples if s[0].id not in first)
        self.canary_outstanding = sum(len(q) for q in self.canary.values())
        if self.canary_docs:
            self.canary_state = "pending"

    @property
    def remaining(self) -> int:
        return sum(len(q) for q in (*self.pending.values(), *self.canary.values()))

    @property
    def remaining_tokens(self) -> float:
        return sum((len(self.pending[w.bench]) + len(self.canary[w.bench])) * w.tokens_per_sample for w in self.groups)

    @property
    def waiting_for_canary(self) -> bool:
        return self.canary_state == "pending" and self.canary_outstanding > 0

    def cut(self, engines: int, max_size: int) -> tuple[BenchWork, list[tuple[Doc, int]], bool] | None:
        """The next unit (work, samples, is_canary), or None when nothing can be handed out now."""
        source, is_canary = (self.canary, True) if self.canary_state == "pending" else (self.pending, False)
        left = sum(len(q) for q in source.values())
        size = max(1, min(max_size, math.ceil(left / (2 * max(engines, 1)))))
        for w in self.groups:
            queue = source[w.bench]
            if queue:
                return w, [queue.popleft() for _ in range(min(size, len(queue)))], is_canary
        return None

    def put_back(self, bench: str, samples: list[tuple[Doc, int]], is_canary: bool) -> None:
        (self.canary if is_canary else self.pending)[bench].extendleft(reversed(samples))

    def drain(self) -> list[tuple[str, list[tuple[Doc, int]]]]:
        out = []
        for bench in self.pending:
            samples = [*self.canary[bench], *self.pending[bench]]
            if samples:
                out.append((bench, samples))
            self.canary[bench].clear()
            self.pending[bench].clear()
        return out


@dataclass
class Slot:
    name: str
    variant: str
    handle: Any
    cost: float
    pg: PlacementGroup | None = None
    loading: Any = None  # the info() future until the engine has loaded
    info: dict | None = None
    unit: WorkUnit | None = None
    work: BenchWork | None = None
    is_canary: bool = False
    ref: Any = None
    created: float = field(default_factory=time.monotonic)
    unit_started: float = 0.0
    busy_s: float = 0.0
    samples: int = 0
    tokens: int = 0

    @property
    def state(self) -> str:
        if self.loading is not None:
            return "loading"
        return f"{self.unit.bench} x{len(self.unit.samples)}" if self.unit else "idle"


@dataclass
class EngineStats:
    """Per-engine accounting kept in the run manifest (GPU-hours, tokens per second)."""

    name: str
    variant: str
    info: dict | None
    alive_s: float
    busy_s: float
    samples: int
    tokens: int
    gpus: float


class Scheduler:
    def __init__(self, plan: Plan, store: ResultsStore, runlog: RunLog, progress=None, on_unit=None, canary=None):
        self.plan = plan
        self.grid = plan.grid
        self.farm: FarmSpec = plan.grid.farm
        self.store = store
        self.runlog = runlog
        self.progress = progress
        self.on_unit = on_unit  # hook called after each shard is written (tests, jobs)
        self.canary = canary  # (variant, rows) -> result with .passed, .reasons, .to_dict()
        canary_docs = self.farm.canary.docs if canary is not None and self.farm.canary.enabled else 0
        variants = {v.name for v in self._variants()}
        by_variant: dict[str, list[BenchWork]] = {}
        for w in plan.work:
            if w.variant in variants and w.samples:
                by_variant.setdefault(w.variant, []).append(w)
        self.queues = {v: VariantQueue(ws, canary_docs) for v, ws in by_variant.items()}
        self.canary_results: dict[str, dict] = {}
        self.slots: list[Slot] = []
        self.retired: list[EngineStats] = []
        self.attempts: dict[tuple, int] = {}
        self.start_failures: dict[str, int] = {}
        self.generated = 0
        self.failed_samples = 0
        self.skipped_samples = 0
        self.units_done = 0
        self._counter = 0
        self.gpu_mode, self.capacity = self._capacity()

    # -- resources ---------------------------------------------------------------------------

    def _variants(self) -> list[VariantSpec]:
        return [v for v in self.grid.variants if v.name in self.plan.fingerprints]

    def _capacity(self) -> tuple[bool, float]:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        if gpus >= 1:
            return True, gpus
        return False, max(resources.get("CPU", 1), self.farm.cpus_per_engine)

    def _cost(self, variant: VariantSpec) -> float:
        if not engine_class(variant.engine).uses_accelerator:
            return 0.0 if self.gpu_mode else self.farm.cpus_per_engine
        return variant.engine_args.tensor_parallel_size if self.gpu_mode else self.farm.cpus_per_engine

    def _free(self) -> float:
        return self.capacity - sum(s.cost for s in self.slots)

    # -- engines -----------------------------------------------------------------------------

    def _start_engines(self) -> None:
        while True:
            if self.farm.max_engines is not None and len(self.slots) >= self.farm.max_engines:
                return
            best, best_share = None, 0.0
            for variant in self._variants():
                queue = self.queues.get(variant.name)
                if queue is None or queue.failed or queue.remaining == 0:
                    continue
                engines = sum(1 for s in self.slots if s.variant == variant.name)
                if queue.remaining <= engines:
                    continue  # every engine of this variant already has a sample to work on
                if engines and not engine_class(variant.engine).uses_accelerator:
                    continue  # a client of a server or a replay: one actor per variant is enough
                share = queue.remaining_tokens / (engines + 1)
                if share > best_share and self._cost(variant) <= self._free() + 1e-9:
                    best, best_share = variant, share
            if best is None:
                return
            self._start(best)

    def _start(self, variant: VariantSpec) -> None:
        self._counter += 1
        name = f"omk-{self.runlog.run_id}-{variant.name}-{self._counter}"
        tp = variant.engine_args.tensor_parallel_size
        options: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "max_restarts": 0}
        pg = None
        if not engine_class(variant.engine).uses_accelerator:
            options.update(num_cpus=min(1.0, self.farm.cpus_per_engine), num_gpus=0)
        elif self.gpu_mode and tp > 1 and variant.engine == "vllm":
            # vLLM's Ray executor puts one worker per bundle; STRICT_PACK keeps them on one node.
            pg = placement_group([{"GPU": 1, "CPU": 1}] * tp, strategy="STRICT_PACK")
            options.update(num_cpus=0, num_gpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_capture_child_tasks=True))
        elif self.gpu_mode:
            options.update(num_cpus=1, num_gpus=tp)
        else:
            options.update(num_cpus=self.farm.cpus_per_engine, num_gpus=0)
        handle = ray.remote(EngineActor).options(**options).remote(variant, self.plan.model_paths[variant.name])
        slot = Slot(name, variant.name, handle, self._cost(variant), pg=pg)
        slot.loading = handle.info.remote()
        self.slots.append(slot)
        self.runlog.event("engine_starting", engine=name, variant=variant.name)

    def _retire(self, slot: Slot, kill: bool = True) -> None:
        if kill:
            ray.kill(slot.handle, no_restart=True)
        if slot.pg is not None:
            remove_placement_group(slot.pg)
        self.slots.remove(slot)
        self.retired.append(self._stats(slot))

    def _stats(self, slot: Slot) -> EngineStats:
        return EngineStats(slot.name, slot.variant, slot.info, time.monotonic() - slot.created,
                           slot.busy_s, slot.samples, slot.tokens, slot.cost if self.gpu_mode else 0.0)

    def engine_stats(self) -> list[EngineStats]:
        return self.retired + [self._stats(s) for s in self.slots]

    # -- units -------------------------------------------------------------------------------

    def _dispatch(self, slot: Slot) -> None:
        queue = self.queues[slot.variant]
        engines = sum(1 for s in self.slots if s.variant == slot.variant)
        cut = None if queue.failed else queue.cut(engines, self.farm.shard_size)
        if cut is None:
            if not queue.waiting_for_canary:
                self._retire(slot)
            return
        work, samples, slot.is_canary = cut
        self._counter += 1
        unit = WorkUnit(
            id=f"{self.runlog.run_id}-{self._counter:06d}",
            run_id=self.runlog.run_id,
            variant=slot.variant,
            fingerprint=self.plan.fingerprints[slot.variant],
            bench=self.grid.bench(work.bench),
            recipe=work.recipe,
            samples=samples,
            dataset_revision=self.plan.dataset_revisions.get(work.bench),
        )
        slot.unit, slot.work, slot.unit_started = unit, work, time.monotonic()
        slot.ref = slot.handle.run_unit.remote(unit)

    def _unit_failed(self, slot: Slot, error: str, actor_died: bool) -> None:
        unit = slot.unit
        retry, given_up = [], []
        for doc, repeat in unit.samples:
            key = (unit.variant, unit.bench.name, doc.id, repeat)
            self.attempts[key] = self.attempts.get(key, 0) + 1
            (retry if self.attempts[key] <= self.farm.max_retries else given_up).append((doc, repeat))
        self.queues[unit.variant].put_back(unit.bench.name, retry, slot.is_canary)
        self.runlog.event(
            "engine_died" if actor_died else "unit_failed",
            engine=slot.name, variant=unit.variant, bench=unit.bench.name, unit=unit.id,
            samples=len(unit.samples), retrying=len(retry), error=error[-2000:],
        )
        if given_up:
            self._give_up(unit.variant, unit.bench.name, given_up, f"failed {self.farm.max_retries + 1} times: {error[-500:]}")
            if slot.is_canary:
                self._canary_progress(unit.variant, len(given_up))
        slot.unit = slot.ref = slot.work = None

    def _give_up(self, variant: str, bench: str, samples: list[tuple[Doc, int]], reason: str) -> None:
        self.failed_samples += len(samples)
        self.runlog.event("samples_failed", variant=variant, bench=bench,
                          doc_ids=[f"{d.id}#{r}" for d, r in samples], reason=reason)
        if self.progress:
            self.progress.advance(failed=len(samples))

    def _unit_done(self, slot: Slot, table) -> None:
        unit = slot.unit
        self.store.write_shard(table, unit.variant, unit.bench.name, unit.id)
        tokens = sum(table.column("completion_tokens").to_pylist())
        slot.busy_s += time.monotonic() - slot.unit_started
        slot.samples += table.num_rows
        slot.tokens += tokens
        self.generated += table.num_rows
        self.units_done += 1
        slot.unit = slot.ref = slot.work = None
        if self.progress:
            self.progress.advance(samples=table.num_rows, units=1, tokens=tokens)
        if self.on_unit:
            self.on_unit(unit, table)
        if slot.is_canary:
            self._canary_progress(unit.variant, len(unit.samples))

    # -- canary ------------------------------------------------------------------------------

    def _canary_progress(self, variant: str, finished: int) -> None:
        queue = self.queues[variant]
        queue.canary_outstanding -= finished
        if queue.canary_state == "pending" and queue.canary_outstanding <= 0:
            self._judge(variant)

    def _judge(self, variant: str) -> None:
        """Judge a variant's canary samples (stored now, whichever run made them)."""
        queue = self.queues[variant]
        where = None
        for w in queue.groups:
            part = (pc.field("bench") == w.bench) & pc.field("doc_id").isin(w.doc_order[: queue.canary_docs])
            part &= pc.field("recipe_hash") == w.recipe.hash
            where = part if where is None else where | part
        where &= pc.field("variant_fingerprint") == self.plan.fingerprints[variant]
        result = self.canary(variant, self.store.read(filter=where))
        queue.canary_state = "passed" if result.passed else "failed"
        self.canary_results[variant] = result.to_dict()
        self.runlog.event("canary", variant=variant, passed=result.passed, reasons=result.reasons)
        if not result.passed and self.farm.canary.on_fail == "skip":
            skipped = sum(len(samples) for _, samples in queue.drain())
            self.skipped_samples += skipped
            self.runlog.event("variant_skipped", variant=variant, samples=skipped,
                              reason="canary failed: " + "; ".join(result.reasons))
            if self.progress:
                self.progress.advance(skipped=skipped)

    def _engine_failed_to_start(self, slot: Slot, error: str) -> None:
        self._retire(slot)
        failures = self.start_failures[slot.variant] = self.start_failures.get(slot.variant, 0) + 1
        self.runlog.event("engine_start_failed", engine=slot.name, variant=slot.variant, error=error[-2000:])
        if failures > self.farm.max_retries:
            queue = self.queues[slot.variant]
            queue.failed = True
            for bench, samples in queue.drain():
                self._give_up(slot.variant, bench, samples, f"engine failed to start: {error[-500:]}")
            self.runlog.event("variant_failed", variant=slot.variant, reason="engine failed to start")

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        for variant, queue in self.queues.items():
            if queue.canary_state == "pending" and queue.canary_outstanding == 0:
                self._judge(variant)  # its canary samples were stored by an earlier run
        try:
            while True:
                self._start_engines()
                for slot in list(self.slots):
                    if slot.loading is None and slot.unit is None:
                        self._dispatch(slot)
                waiting = {s.loading or s.ref: s for s in self.slots if s.loading is not None or s.ref is not None}
                if not waiting:
                    if any(q.remaining and not q.failed for q in self.queues.values()):
                        raise RuntimeError("work remains but no engine can be placed: check the cluster's GPUs/CPUs")
                    return
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=1.0)
                for ref in ready:
                    self._collect(waiting[ref], ref)
                self._check_start_timeouts()
                if self.progress:
                    self.progress.show(self.slots)
        finally:
            for slot in list(self.slots):
                self._retire(slot)

    def _collect(self, slot: Slot, ref) -> None:
        if slot.loading is not None:
            try:
                slot.info = ray.get(ref)
            except Exception as err:  # the engine could not load: bad path, OOM, CUDA error
                self._engine_failed_to_start(slot, _describe(err))
                return
            slot.loading = None
            self.runlog.event("engine_started", name=slot.name, info=slot.info)
            return
        try:
            table = ray.get(ref)
        except ACTOR_DIED as err:
            self._unit_failed(slot, _describe(err), actor_died=True)
            self._retire(slot, kill=False)
            return
        except ray.exceptions.RayTaskError as err:
            self._unit_failed(slot, _describe(err), actor_died=False)
            return
        self._unit_done(slot, table)

    def _check_start_timeouts(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.loading is not None and now - slot.created > self.farm.engine_start_timeout_s:
                self._engine_failed_to_start(slot, f"engine did not load in {self.farm.engine_start_timeout_s:.0f} s")


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
