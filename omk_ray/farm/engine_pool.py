"""The engines of a run on Ray: placement, start, load, feed, poll, stalls, retirement.

The pool keeps each engine's requests in flight and its accounting; the scheduler's loop decides
which variant gets a free slot and what to feed (farm/policies.py) and acts on what the pool
reports (farm/events.py): `Loaded`, `Finished`, `Lost` (died or stalled, retired, its requests
handed back) and `FailedToStart` (an error, a start timeout (farm/sizes.py), or an engine whose
identity is not the one the plan keyed its samples by (engines/identity.py)).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from omk_ray.config import VariantSpec
from omk_ray.engines import engine_class
from omk_ray.engines.identity import EngineIdentity, disagreements
from omk_ray.farm import NAMESPACE
from omk_ray.farm.actor import EngineActor, Generated
from omk_ray.farm.events import EngineEvent, FailedToStart, Finished, Loaded, Lost
from omk_ray.farm.placement import needs
from omk_ray.farm.planner import Plan
from omk_ray.farm.policies import EngineWork, LoadTime, in_flight_target, patience, stalled, start_overdue
from omk_ray.farm.sizes import start_timed_out
from omk_ray.results.run_records import EventKind

ACTOR_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
POLL_S = 0.2  # how long an engine's poll waits for its first finished request


@dataclass(eq=False)
class Slot:
    name: str
    variant: str
    kind: str  # the engine kind (`VariantSpec.engine`)
    handle: Any
    cost: float
    created: float
    pg: PlacementGroup | None = None
    load_ref: Any = None  # the info() future until the engine has loaded
    info: dict | None = None
    target: int = 1
    inflight: dict[int, Any] = field(default_factory=dict)  # sample id -> sample
    poll_ref: Any = None
    last_progress: float = 0.0
    busy_since: float | None = None
    busy_s: float = 0.0
    latency_s: float = 0.0  # summed latency of the requests it finished (with `tokens`: seconds per token)
    samples: int = 0
    tokens: int = 0

    @property
    def loading(self) -> bool:
        return self.load_ref is not None

    @property
    def state(self) -> str:
        if self.loading:
            return "loading"
        return f"{len(self.inflight)} in flight" if self.inflight else "idle"

    def busy(self, now: float) -> None:
        if self.inflight and self.busy_since is None:
            self.busy_since = self.last_progress = now
        elif not self.inflight and self.busy_since is not None:
            self.busy_s += now - self.busy_since
            self.busy_since = None


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


def cluster_capacity(resources: dict[str, float], cpus_per_engine: float) -> tuple[bool, float]:
    """(GPU mode, slots) of a cluster's resources (`ray.cluster_resources()`): its GPUs, else its CPUs."""
    gpus = resources.get("GPU", 0)
    if gpus >= 1:
        return True, gpus
    return False, max(resources.get("CPU", 1), cpus_per_engine)


def ray_wait(refs: list) -> list:
    """The refs ready now: the first to finish (waiting up to 0.5 s), and every other one already done."""
    ready, rest = ray.wait(refs, num_returns=1, timeout=0.5)
    if ready and rest:
        ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
    return ready


class EnginePool:
    def __init__(self, plan: Plan, run_id: str, gpu_mode: bool, capacity: float,
                 clock: Callable[[], float] = time.monotonic):
        self.plan, self.grid, self.farm = plan, plan.grid, plan.grid.farm
        self.run_id = run_id
        self.gpu_mode, self.capacity = gpu_mode, capacity
        self.clock = clock
        self.slots: list[Slot] = []
        self.retired: list[EngineStats] = []
        self.loads: list[LoadTime] = []  # seconds from start to loaded, per engine that loaded
        self._counter = 0

    # -- what the loop reads -------------------------------------------------------------------

    def cost(self, variant: str) -> float:
        return needs(self.grid.variant(variant), self.gpu_mode, self.farm.cpus_per_engine).cost

    def accelerates(self, variant: str) -> bool:
        return engine_class(self.grid.variant(variant).engine).uses_accelerator

    def free(self) -> float:
        return self.capacity - sum(s.cost for s in self.slots)

    def work(self) -> list[EngineWork]:
        return [EngineWork(e.variant, e.tokens, e.busy_s) for e in self.stats()]

    def stats(self) -> list[EngineStats]:
        return self.retired + [self._stats(s) for s in self.slots]

    def waiting(self) -> list:
        return [s.load_ref for s in self.slots if s.loading] + [s.poll_ref for s in self.slots if s.poll_ref]

    # -- what the loop does --------------------------------------------------------------------

    def start(self, variant: VariantSpec) -> Slot:
        self._counter += 1
        name = f"omk-{self.run_id}-{variant.name}-{self._counter}"
        need = needs(variant, self.gpu_mode, self.farm.cpus_per_engine)
        options: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "max_restarts": 0, "max_concurrency": 64}
        pg = None
        if need.bundles:
            # vLLM's Ray executor puts one worker per bundle; STRICT_PACK keeps them on one node.
            pg = placement_group([{"GPU": 1, "CPU": 1}] * need.bundles, strategy="STRICT_PACK")
            options.update(num_cpus=0, num_gpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_capture_child_tasks=True))
        else:
            options.update(num_cpus=need.cpus, num_gpus=need.gpus)
        handle = ray.remote(EngineActor).options(**options).remote(variant, self.plan.model_paths[variant.name])
        now = self.clock()
        slot = Slot(name, variant.name, variant.engine, handle, need.cost, now, pg=pg, last_progress=now)
        slot.load_ref = handle.info.remote()
        self.slots.append(slot)
        return slot

    def submit(self, slot: Slot, samples: list) -> None:
        """Hand `samples` to a loaded engine: one call per bench (one recipe per variant and bench)."""
        by_bench: dict[str, list] = {}
        for sample in samples:
            by_bench.setdefault(sample.bench, []).append(sample)
            slot.inflight[sample.id] = sample
        for group in by_bench.values():
            slot.handle.submit.remote([(s.id, s.request) for s in group], group[0].work.recipe)
        slot.busy(self.clock())
        if slot.inflight and slot.poll_ref is None:
            slot.poll_ref = slot.handle.poll.remote(POLL_S)

    def keep_polling(self, slot: Slot) -> None:
        """Poll an engine that has requests in flight and no poll out (after a feed gave it nothing new)."""
        if slot.inflight and slot.poll_ref is None and not slot.loading:
            slot.poll_ref = slot.handle.poll.remote(POLL_S)

    def retire(self, slot: Slot, kill: bool = True) -> None:
        slot.busy(self.clock())
        if kill:
            ray.kill(slot.handle, no_restart=True)
        if slot.pg is not None:
            remove_placement_group(slot.pg)
        self.slots.remove(slot)
        self.retired.append(self._stats(slot))

    def close(self) -> None:
        for slot in list(self.slots):
            self.retire(slot)

    def collect(self, ready: list) -> list[EngineEvent]:
        """What the ready refs (of `waiting`) say: engines loaded or not, requests finished, engines lost."""
        loads = {s.load_ref: s for s in self.slots if s.loading}
        polls = {s.poll_ref: s for s in self.slots if s.poll_ref is not None}
        events: list[EngineEvent] = []
        for ref in ready:
            if ref in loads:
                events.append(self._loaded(loads[ref], ref))
            elif ref in polls and polls[ref] in self.slots:
                events.append(self._polled(polls[ref], ref))
        return events

    def overdue(self) -> list[EngineEvent]:
        """Engines loading past their start timeout, and loaded ones that stalled: retired, reported."""
        now = self.clock()
        events: list[EngineEvent] = []
        for slot in list(self.slots):
            if slot.loading:
                timeout = self.plan.start_timeout(slot.variant)
                if start_overdue(now - slot.created, timeout):
                    phase = "waiting for its GPUs (placement group not placed)" if slot.pg is not None and \
                        not slot.pg.wait(0) else "loading (download, weights, compile and warm-up are not told apart)"
                    events.append(self._failed(slot, start_timed_out(
                        slot.variant, now - slot.created, timeout, phase, self.plan.checkpoint_bytes.get(slot.variant),
                        configured=self.farm.engine_start_timeout_s is not None)))
            elif stalled(now - slot.last_progress, len(slot.inflight), self._patience(slot)):
                idle = f"no request finished in {now - slot.last_progress:.0f} s with {len(slot.inflight)} in flight"
                events.append(self._lost(slot, EventKind.ENGINE_STALLED, idle, kill=True))
        return events

    # -- inside --------------------------------------------------------------------------------

    def _loaded(self, slot: Slot, ref) -> EngineEvent:
        try:
            info = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - the engine could not load: bad path, OOM, CUDA error
            return self._failed(slot, describe(err))
        differs = self._identity_differs(slot, info)
        if differs:
            return self._failed(slot, differs)
        slot.info, slot.load_ref = info, None
        self.loads.append(LoadTime(slot.kind, slot.variant, self.clock() - slot.created))
        slot.target = in_flight_target(self.farm.max_in_flight, info.get("capacity", 1))
        return Loaded(slot.name, slot.variant, info, slot.target)

    def _failed(self, slot: Slot, error: str) -> FailedToStart:
        self.retire(slot)
        return FailedToStart(slot.name, slot.variant, error)

    def _lost(self, slot: Slot, kind: EventKind, error: str, kill: bool) -> Lost:
        lost = list(slot.inflight.values())
        slot.inflight.clear()
        self.retire(slot, kill=kill)
        return Lost(slot.name, slot.variant, kind, error, lost)

    def _polled(self, slot: Slot, ref) -> EngineEvent:
        slot.poll_ref = None
        try:
            finished: list[Generated] = ray.get(ref)
        except ACTOR_DIED as err:
            return self._lost(slot, EventKind.ENGINE_DIED, describe(err), kill=False)
        except ray.exceptions.RayTaskError as err:  # poll itself failed: the actor is unusable
            return self._lost(slot, EventKind.ENGINE_DIED, describe(err), kill=True)
        now = self.clock()
        if finished:
            slot.last_progress = now
        done = []
        for g in finished:
            sample = slot.inflight.pop(g.sample, None)
            if sample is None:
                continue
            if not g.engine_error:
                slot.samples += 1
                slot.tokens += g.completion.completion_tokens
                slot.latency_s += g.completion.latency_s
            done.append((sample, g))
        slot.busy(now)  # the next poll goes out after the next feed (`submit`, `keep_polling`): refill first
        return Finished(slot.name, slot.variant, slot.info, done)

    def _patience(self, slot: Slot) -> float:
        longest = max((s.work.recipe.generation_budget for s in slot.inflight.values()), default=0)
        return patience(self.farm.stall_timeout_s, longest, slot.latency_s, slot.tokens)

    def _stats(self, slot: Slot) -> EngineStats:
        now = self.clock()
        busy = slot.busy_s + (now - slot.busy_since if slot.busy_since is not None else 0.0)
        return EngineStats(slot.name, slot.variant, slot.info, now - slot.created,
                           busy, slot.samples, slot.tokens, slot.cost if self.gpu_mode else 0.0)

    def _identity_differs(self, slot: Slot, info: dict) -> str | None:
        """Why a loaded engine must not write under its variant's fingerprint (engines/identity.py), or None."""
        planned, loaded = self.plan.identities.get(slot.variant), info.get("identity")
        if planned is None or loaded is None:
            return None
        loaded = EngineIdentity.model_validate(loaded)
        simulated_gpu = info.get("cuda_visible_devices") not in (None, "") and not info.get("gpus")
        differs = disagreements(planned, loaded, simulated_gpu=simulated_gpu)
        if not differs:
            return None
        return (f"engine loaded as {loaded.label} on host {info.get('host')}, but the plan keyed its samples "
                f"as {planned.label}: {', '.join(differs)} (install the planned engine there, or plan where it runs)")


def describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
