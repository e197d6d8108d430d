"""The scheduler: every engine kept fed request by request, scoring on CPU actors, rows written in shards.

- One long-lived engine actor per (variant, slot); a variant's engine is loaded once and serves
  all of its benches and recipes. Slots go to the variants with the most work left; an engine
  whose variant has nothing left to hand out is stopped, and its GPUs go to the next variant.
- Each engine holds about 1.1 x its capacity (vLLM's `max_num_seqs`, the transformers batch, an
  endpoint's concurrency) requests in flight (`farm.max_in_flight`), topped up as requests
  finish, the longest-expected first, so long answers start early and short ones fill the gaps.
- Finished requests stream back (`EngineActor.poll`), go to the scoring actors (CPU, sandbox),
  and their rows are written in atomic shards every `farm.flush_samples` rows or
  `farm.flush_seconds`: the engine never waits for scoring or writing.
- A dead actor is replaced and its in-flight requests retried; an engine that finishes nothing
  for `farm.stall_timeout_s` while it holds requests is treated the same; each sample is tried
  at most `1 + farm.max_retries` times, then written as an error row. Every failure is an event.
- The canary: a variant's canary sample runs first and is judged as soon as its last row is
  scored; engines of other variants go on meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from omk_ray.analysis.canary import CanaryRules
from omk_ray.benches import Doc
from omk_ray.config import FarmSpec, VariantSpec
from omk_ray.engines import Completion, Request, engine_class
from omk_ray.farm import NAMESPACE
from omk_ray.farm.actor import EngineActor, Generated, ScorerActor
from omk_ray.farm.buffer import RowBuffer
from omk_ray.farm.canary import judge_canary
from omk_ray.farm.placement import Needs, needs
from omk_ray.farm.policies import (EngineView, EngineWork, LoadTime, VariantQueue, VariantView, feed_size,
                                   in_flight_target, may_retry, next_engine, patience, reprices_at, stalled,
                                   start_overdue)
from omk_ray.farm.planner import BenchWork, Plan
from omk_ray.engines.identity import EngineIdentity, disagreements
from omk_ray.farm.rows import RowContext, sample_row
from omk_ray.farm.sizes import start_timed_out
from omk_ray.results.store import ResultsStore, RunLog

ACTOR_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
POLL_S = 0.2  # how long an engine's poll waits for its first finished request
FEED_CHUNK = 16  # engines are topped up in rounds of this many requests: the longest spread over them
SCORE_BATCH = 256  # most samples per scoring call (a call takes what is waiting, up to this)
SCORER_QUEUE = 2  # scoring calls in flight per scoring actor


@dataclass(eq=False)
class Sample:
    id: int
    variant: str
    work: BenchWork
    doc: Doc
    repeat: int
    cost: float  # expected completion tokens
    canary: bool = False
    seen: bool = False  # the cost is this doc's own, seen in earlier results (else the bench's guess)

    @property
    def bench(self) -> str:
        return self.work.bench

    @property
    def request(self) -> Request:
        return self.doc.request(self.repeat, self.work.bench)


@dataclass(eq=False)
class Slot:
    name: str
    variant: str
    handle: Any
    cost: float
    pg: PlacementGroup | None = None
    loading: Any = None  # the info() future until the engine has loaded
    info: dict | None = None
    target: int = 1
    inflight: dict[int, Sample] = field(default_factory=dict)
    poll: Any = None
    created: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    busy_s: float = 0.0
    latency_s: float = 0.0  # summed latency of the requests it finished (with `tokens`: seconds per token)
    samples: int = 0
    tokens: int = 0

    @property
    def state(self) -> str:
        if self.loading is not None:
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


class Scheduler:
    def __init__(self, plan: Plan, store: ResultsStore, runlog: RunLog, progress=None, on_shard=None,
                 canary_rules: dict[str, CanaryRules] | None = None):
        self.plan = plan
        self.grid = plan.grid
        self.farm: FarmSpec = plan.grid.farm
        self.store = store
        self.runlog = runlog
        self.progress = progress
        self.canary_rules = canary_rules or {}  # variant -> rules; a variant without rules has no canary
        self.buffer = RowBuffer(store, runlog.run_id, self.farm.flush_samples, self.farm.flush_seconds, on_shard)
        self.samples: dict[int, Sample] = {}
        by_variant: dict[str, list[Sample]] = {}
        for w in plan.work:
            if w.variant not in plan.fingerprints:
                continue
            canary = set(w.canary_ids) if w.variant in self.canary_rules else set()
            for doc, repeat in w.samples:
                s = Sample(len(self.samples), w.variant, w, doc, repeat, w.cost(doc), doc.id in canary,
                           doc.id in w.doc_tokens)
                self.samples[s.id] = s
                by_variant.setdefault(w.variant, []).append(s)
        self.queues = {v: VariantQueue(ss, v in self.canary_rules) for v, ss in by_variant.items()}
        self.canary_results: dict[str, dict] = {}
        self.contexts: dict[tuple[str, str], RowContext] = {}
        self.slots: list[Slot] = []
        self.retired: list[EngineStats] = []
        self.attempts: dict[int, int] = {}
        self.start_failures: dict[str, int] = {}
        self.load_seconds: list[tuple[str, str, float]] = []  # (engine kind, variant, seconds from start to loaded)
        self.scorers: list[Any] = []
        self.scorer_load: dict[int, int] = {}
        self.to_score: dict[tuple[str, str], list[tuple[Sample, Generated, str]]] = {}
        self.scoring: dict[Any, tuple[int, str, list[tuple[Sample, Generated, str]]]] = {}
        self.scoring_attempts: dict[int, int] = {}
        self.suspects: set[int] = set()  # samples of a scoring batch whose actor died: scored one by one
        self.lengths: dict[tuple[str, str], list[int]] = {}  # (variant, bench) -> [tokens, samples] this run
        self.generated = 0
        self.failed_samples = 0
        self.skipped_samples = 0
        self._counter = 0
        self.gpu_mode, self.capacity = self._capacity()

    # -- resources ---------------------------------------------------------------------------

    def _variants(self) -> list[VariantSpec]:
        return [v for v in self.grid.variants if v.name in self.queues]

    def _capacity(self) -> tuple[bool, float]:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        if gpus >= 1:
            return True, gpus
        return False, max(resources.get("CPU", 1), self.farm.cpus_per_engine)

    def _needs(self, variant: VariantSpec) -> Needs:
        return needs(variant, self.gpu_mode, self.farm.cpus_per_engine)

    def _free(self) -> float:
        return self.capacity - sum(s.cost for s in self.slots)

    # -- engines -----------------------------------------------------------------------------

    def _start_engines(self) -> None:
        """Start engines while some variant has requests that no engine of it (loaded or loading) will take
        (`policies.next_engine` decides which, from a snapshot of the queues and engines)."""
        while self.farm.max_engines is None or len(self.slots) < self.farm.max_engines:
            best = next_engine(self._variant_views(), self._engine_views(), self._load_times(), self._work(),
                               self._free(), self.farm.max_retries)
            if best is None:
                return
            self._start(self.grid.variant(best))

    def _variant_views(self) -> list[VariantView]:
        views = []
        for variant in self._variants():
            queue = self.queues[variant.name]
            views.append(VariantView(
                variant.name, variant.engine, self._needs(variant).cost, queue.unsent,
                queue.remaining_tokens, queue.failed,
                self.start_failures.get(variant.name, 0), engine_class(variant.engine).uses_accelerator))
        return views

    def _engine_views(self) -> list[EngineView]:
        return [EngineView(s.variant, self.grid.variant(s.variant).engine, s.loading is not None, s.target,
                           len(s.inflight)) for s in self.slots]

    def _load_times(self) -> list[LoadTime]:
        return [LoadTime(kind, variant, seconds) for kind, variant, seconds in self.load_seconds]

    def _work(self) -> list[EngineWork]:
        return [EngineWork(e.variant, e.tokens, e.busy_s) for e in self.engine_stats()]

    def _start(self, variant: VariantSpec) -> None:
        self._counter += 1
        name = f"omk-{self.runlog.run_id}-{variant.name}-{self._counter}"
        need = self._needs(variant)
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
        slot = Slot(name, variant.name, handle, need.cost, pg=pg)
        slot.loading = handle.info.remote()
        self.slots.append(slot)
        self.runlog.event("engine_starting", engine=name, variant=variant.name)

    def _retire(self, slot: Slot, kill: bool = True) -> None:
        slot.busy(time.monotonic())
        if kill:
            ray.kill(slot.handle, no_restart=True)
        if slot.pg is not None:
            remove_placement_group(slot.pg)
        self.slots.remove(slot)
        self.retired.append(self._stats(slot))

    def _stats(self, slot: Slot) -> EngineStats:
        busy = slot.busy_s + (time.monotonic() - slot.busy_since if slot.busy_since is not None else 0.0)
        return EngineStats(slot.name, slot.variant, slot.info, time.monotonic() - slot.created,
                           busy, slot.samples, slot.tokens, slot.cost if self.gpu_mode else 0.0)

    def engine_stats(self) -> list[EngineStats]:
        return self.retired + [self._stats(s) for s in self.slots]

    def _loaded(self, slot: Slot, info: dict) -> None:
        slot.info, slot.loading = info, None
        self.load_seconds.append((self.grid.variant(slot.variant).engine, slot.variant, time.monotonic() - slot.created))
        slot.target = in_flight_target(self.farm.max_in_flight, info.get("capacity", 1))
        self.runlog.event("engine_started", name=slot.name, info=info, in_flight=slot.target)

    def _engine_failed_to_start(self, slot: Slot, error: str) -> None:
        self._retire(slot)
        failures = self.start_failures[slot.variant] = self.start_failures.get(slot.variant, 0) + 1
        self.runlog.event("engine_start_failed", engine=slot.name, variant=slot.variant, error=error[-2000:])
        if any(s.variant == slot.variant for s in self.slots):
            return  # another engine of the variant serves (or may yet load): no new ones are started for it
        if failures > self.farm.max_retries:
            queue = self.queues[slot.variant]
            queue.failed = True
            self._give_up(queue.drain(), f"engine failed to start: {error[-500:]}")
            self.runlog.event("variant_failed", variant=slot.variant, reason="engine failed to start")

    # -- feeding engines ---------------------------------------------------------------------

    def _feed_all(self) -> None:
        """Top every loaded engine up to its target, a chunk per engine per round, so the longest
        requests of a variant spread over its engines instead of all landing on the first one;
        then one submit per engine and bench. An engine whose variant has nothing left retires."""
        loaded = [s for s in self.slots if s.loading is None]
        taken: dict[int, list[Sample]] = {id(s): [] for s in loaded}
        active = loaded
        while active:
            active = [s for s in active if self._take(s, FEED_CHUNK, taken[id(s)])]
        now = time.monotonic()
        for slot in loaded:
            by_bench: dict[str, list[Sample]] = {}
            for sample in taken[id(slot)]:
                by_bench.setdefault(sample.work.bench, []).append(sample)  # one recipe per (variant, bench)
                slot.inflight[sample.id] = sample
            for group in by_bench.values():
                slot.handle.submit.remote([(s.id, s.request) for s in group], group[0].work.recipe)
            slot.busy(now)
            queue = self.queues[slot.variant]
            if not slot.inflight and not queue.waiting_for_canary and not queue.unsent:
                self._retire(slot)
            elif slot.inflight and slot.poll is None:
                slot.poll = slot.handle.poll.remote(POLL_S)

    def _take(self, slot: Slot, most: int, taken: list[Sample]) -> bool:
        """Up to `most` more requests for the engine (fewer if at target) into `taken`; True if any."""
        loading = sum(1 for s in self.slots if s.variant == slot.variant and s.loading is not None)
        n, stride = feed_size(slot.target, len(slot.inflight), len(taken), most, loading)
        samples = self.queues[slot.variant].take(n, stride=stride)
        taken.extend(samples)
        return bool(samples)

    def _polled(self, slot: Slot, ref) -> None:
        slot.poll = None
        try:
            finished: list[Generated] = ray.get(ref)
        except ACTOR_DIED as err:
            self._engine_lost(slot, "engine_died", _describe(err), kill=False)
            return
        except ray.exceptions.RayTaskError as err:  # poll itself failed: the actor is unusable
            self._engine_lost(slot, "engine_died", _describe(err), kill=True)
            return
        now = time.monotonic()
        if finished:
            slot.last_progress = now
        made_by = slot.info  # the engine's info: its version and identity go on every row
        for g in finished:
            sample = slot.inflight.pop(g.sample, None)
            if sample is None:
                continue
            if g.engine_error:
                self.runlog.event("request_failed", engine=slot.name, variant=sample.variant,
                                  bench=sample.work.bench, doc_id=sample.doc.id, error=g.completion.error)
                self._retry([sample], g.completion.error or "engine error")
                continue
            slot.samples += 1
            slot.tokens += g.completion.completion_tokens
            slot.latency_s += g.completion.latency_s
            self._learn(sample, g.completion.completion_tokens)
            if self.progress:
                self.progress.generated(g.completion.completion_tokens)
            if g.completion.error:
                self._finish(sample, g, made_by, None, g.completion.error, None)
            else:
                self.to_score.setdefault((sample.variant, sample.work.bench), []).append((sample, g, made_by))
        slot.busy(now)

    def _learn(self, sample: Sample, tokens: int) -> None:
        """A bench's mean length so far reprices its guessed samples at 1, 2, 4, 8, ... answers."""
        seen = self.lengths.setdefault((sample.variant, sample.work.bench), [0, 0])
        seen[0] += tokens
        seen[1] += 1
        if reprices_at(seen[1]):
            self.queues[sample.variant].reprice(sample.work.bench, seen[0] / seen[1])

    def _engine_lost(self, slot: Slot, event: str, error: str, kill: bool) -> None:
        lost = list(slot.inflight.values())
        slot.inflight.clear()
        self.runlog.event(event, engine=slot.name, variant=slot.variant, in_flight=len(lost), error=error[-2000:])
        self._retire(slot, kill=kill)
        self._retry(lost, error)

    def _retry(self, samples: list[Sample], error: str) -> None:
        again, given_up = [], []
        for s in samples:
            self.attempts[s.id] = self.attempts.get(s.id, 0) + 1
            (again if may_retry(self.attempts[s.id], self.farm.max_retries) else given_up).append(s)
        by_variant: dict[str, list[Sample]] = {}
        for s in again:
            by_variant.setdefault(s.variant, []).append(s)
        for variant, ss in by_variant.items():
            self.queues[variant].put_back(ss)
        if given_up:
            self._give_up(given_up, f"failed {self.farm.max_retries + 1} times: {error[-500:]}")

    def _give_up(self, samples: list[Sample], reason: str) -> None:
        """Samples that will not be generated in this run: an error row each, and an event."""
        by_cell: dict[tuple[str, str], list[Sample]] = {}
        for s in samples:
            by_cell.setdefault((s.variant, s.work.bench), []).append(s)
        for (variant, bench), ss in by_cell.items():
            self.runlog.event("samples_failed", variant=variant, bench=bench,
                              doc_ids=[f"{s.doc.id}#{s.repeat}" for s in ss], reason=reason)
        for s in samples:
            failed = Generated(s.id, Completion(text="", finish_reason="error", error=reason), _now())
            self._finish(s, failed, None, None, reason, None)

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.loading is not None:
                timeout = self.plan.start_timeout(slot.variant)
                if start_overdue(now - slot.created, timeout):
                    phase = "waiting for its GPUs (placement group not placed)" if slot.pg is not None and \
                        not slot.pg.wait(0) else "loading (download, weights, compile and warm-up are not told apart)"
                    self._engine_failed_to_start(slot, start_timed_out(
                        slot.variant, now - slot.created, timeout, phase, self.plan.checkpoint_bytes.get(slot.variant),
                        configured=self.farm.engine_start_timeout_s is not None))
            elif stalled(now - slot.last_progress, len(slot.inflight), self._patience(slot)):
                self._engine_lost(slot, "engine_stalled",
                                  f"no request finished in {now - slot.last_progress:.0f} s "
                                  f"with {len(slot.inflight)} in flight", kill=True)

    def _patience(self, slot: Slot) -> float:
        longest = max((s.work.recipe.generation_budget for s in slot.inflight.values()), default=0)
        return patience(self.farm.stall_timeout_s, longest, slot.latency_s, slot.tokens)

    # -- scoring and writing -----------------------------------------------------------------

    def _start_scorers(self) -> None:
        cls = ray.remote(ScorerActor).options(num_cpus=self.farm.scorer_cpus, max_restarts=0, namespace=NAMESPACE)
        while len(self.scorers) < self.farm.scorers:
            self.scorer_load[len(self.scorers)] = 0
            self.scorers.append(cls.remote(self.grid.benches))

    def _dispatch_scoring(self) -> None:
        for cell in list(self.to_score):
            items = self.to_score[cell]
            while items:
                scorer = min(self.scorer_load, key=self.scorer_load.get)
                if self.scorer_load[scorer] >= SCORER_QUEUE:
                    return
                size = 1 if items[0][0].id in self.suspects else SCORE_BATCH  # suspects are scored alone
                batch, items[:] = items[:size], items[size:]
                ref = self.scorers[scorer].score.remote(cell[1], [(s.doc, g.completion) for s, g, _ in batch])
                self.scoring[ref] = (scorer, cell[1], batch)
                self.scorer_load[scorer] += 1
            del self.to_score[cell]

    def _scored(self, ref) -> None:
        scorer, bench, batch = self.scoring.pop(ref)
        self.scorer_load[scorer] -= 1
        try:
            scores, scorer_version = ray.get(ref)
        except ACTOR_DIED as err:  # a program took the scoring actor down: a new one, then try again
            self.runlog.event("scorer_died", bench=bench, samples=len(batch), error=_describe(err)[-2000:])
            cls = ray.remote(ScorerActor).options(num_cpus=self.farm.scorer_cpus, max_restarts=0, namespace=NAMESPACE)
            self.scorers[scorer] = cls.remote(self.grid.benches)
            again = []
            if len(batch) > 1:  # which one did it is unknown: each is scored alone from now on
                self.suspects.update(item[0].id for item in batch)
                again = batch
            else:
                tries = self.scoring_attempts[batch[0][0].id] = self.scoring_attempts.get(batch[0][0].id, 0) + 1
                if tries <= self.farm.max_retries:
                    again = batch
                else:
                    self._finish(*batch[0], None, f"scoring failed {tries} times: {_describe(err)[-300:]}", None)
            if again:
                queue = self.to_score.setdefault((again[0][0].variant, bench), [])
                queue[:0] = again
            return
        except ray.exceptions.RayTaskError as err:  # the bench itself cannot score (e.g. cannot be built)
            self.runlog.event("scoring_failed", bench=bench, samples=len(batch), error=_describe(err)[-2000:])
            for item in batch:
                self._finish(*item, None, f"scorer error: {_describe(err)[-500:]}", None)
            return
        for (sample, g, made_by), (score, error) in zip(batch, scores):
            self._finish(sample, g, made_by, score, error, scorer_version)

    def _finish(self, sample: Sample, g: Generated, made_by: dict | None, score, error: str | None,
                scorer_version: str | None) -> None:
        cell = (sample.variant, sample.work.bench)
        ctx = self.contexts.get(cell)
        if ctx is None:
            ctx = self.contexts[cell] = RowContext(
                self.runlog.run_id, sample.variant, self.plan.fingerprints[sample.variant], sample.work.bench,
                sample.work.recipe, self.grid.variant(sample.variant).engine,
                self.plan.dataset_revisions.get(sample.work.bench))
        identity = made_by.get("identity") if made_by else None
        row = sample_row(ctx, sample.doc, sample.repeat, g.completion, score, error, g.started_at,
                         made_by["engine"] if made_by else None, scorer_version,
                         EngineIdentity.model_validate(identity) if identity else None)
        self.buffer.add([row])
        queue = self.queues[sample.variant]
        if error:
            self.failed_samples += 1
        else:
            self.generated += 1
        if self.progress:
            self.progress.advance(samples=0 if error else 1, failed=1 if error else 0)
        if sample.canary and queue.canary_state == "pending":
            queue.canary_outstanding -= 1
            if queue.canary_outstanding <= 0:
                self._judge(sample.variant)

    # -- canary ------------------------------------------------------------------------------

    def _judge(self, variant: str) -> None:
        """Judge a variant's canary sample from the store (this run's rows written first)."""
        queue = self.queues[variant]
        self.buffer.flush()
        result = judge_canary(self.store, self.plan, variant, self.canary_rules[variant])
        queue.canary_state = "passed" if result.passed else "failed"
        self.canary_results[variant] = result.to_dict()
        self.runlog.event("canary", variant=variant, passed=result.passed, reasons=result.reasons)
        if not result.passed and self.farm.canary.on_fail == "skip":
            skipped = len(queue.drain())
            self.skipped_samples += skipped
            self.runlog.event("variant_skipped", variant=variant, samples=skipped,
                              reason="canary failed: " + "; ".join(result.reasons))
            if self.progress:
                self.progress.advance(skipped=skipped)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        for variant, queue in self.queues.items():
            if queue.canary_state == "pending" and queue.canary_outstanding == 0:
                self._judge(variant)  # its canary samples were stored by an earlier run
        self._start_scorers()
        try:
            while True:
                self._feed_all()
                self._start_engines()
                self._dispatch_scoring()
                waiting = {s.loading: s for s in self.slots if s.loading is not None}
                waiting.update({s.poll: s for s in self.slots if s.poll is not None})
                waiting.update(dict.fromkeys(self.scoring))
                if not waiting:
                    if any(q.unsent and not q.failed for q in self.queues.values()):
                        raise RuntimeError("work remains but no engine can be placed: check the cluster's GPUs/CPUs")
                    return
                ready, rest = ray.wait(list(waiting), num_returns=1, timeout=0.5)
                if ready and rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for ref in ready:
                    slot = waiting[ref]
                    if slot is None:
                        self._scored(ref)
                    elif ref == slot.loading:
                        self._collect_load(slot, ref)
                    elif slot in self.slots:
                        self._polled(slot, ref)
                self._check_stalls()
                self.buffer.maybe_flush()
                if self.progress:
                    self.progress.show(self.slots)
        finally:
            self.buffer.flush()
            for slot in list(self.slots):
                self._retire(slot)
            for scorer in self.scorers:
                ray.kill(scorer, no_restart=True)

    def _collect_load(self, slot: Slot, ref) -> None:
        try:
            info = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - the engine could not load: bad path, OOM, CUDA error
            self._engine_failed_to_start(slot, _describe(err))
            return
        differs = self._identity_differs(slot, info)
        if differs:
            self._engine_failed_to_start(slot, differs)
            return
        self._loaded(slot, info)

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


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
