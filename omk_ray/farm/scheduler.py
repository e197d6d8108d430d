"""The scheduler: one loop over owners that keep their own pending work and report typed events.

- `SampleQueue` (farm/sample_queue.py): the samples not yet handed out, per variant (probing,
  pricing, the canary first), their attempts;
- the engine pool (farm/engine_pool.py): engines started, loaded, fed, polled, stalled, retired;
  it reports `Loaded`, `Finished`, `Lost` and `FailedToStart` (farm/events.py);
- the scoring pool (farm/scoring_pool.py): finished samples scored on CPU actors; it reports `Scored`;
- the canary gate (farm/gate.py): a variant's canary rows, judged in memory as the last one is made;
- the stage tracker (farm/stage_tracker.py, `farm.stages`): every row's score; after each look it
  calls `stages.decide`, and an arm it stops has its queue drained and its engines retired at once
  (their slots go to the others), the stop recorded with its rule and numbers (`stops`, an event);
- the row sink (`RowBuffer`, farm/buffer.py): rows written in atomic shards.

Each round the loop feeds every loaded engine up to its target, starts engines where the work is,
sends waiting samples to scoring, waits for whatever finishes first (`wait`) and acts on the
events. Every decision is a pure function of `farm/policies.py` over a snapshot. The loop holds no
Ray and no clock of its own: the runner hands it Ray-backed owners (`farm/runner.py`), the tests
plain Python ones (tests/farm/test_scheduler.py). Every sample is tried at most `1 +
farm.max_retries` times, then written as an error row; every failure is an event.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from omk_ray.engines import Completion
from omk_ray.engines.identity import EngineIdentity
from omk_ray.farm.actor import Generated
from omk_ray.farm.events import Event, FailedToStart, Finished, Loaded, Lost, Scored, ScorerLost, ScoringFailed
from omk_ray.farm.gate import CanaryGate, Verdict
from omk_ray.farm.planner import Plan
from omk_ray.farm.policies import EngineView, VariantView, feed_size, next_engine
from omk_ray.farm.rows import RowContext, sample_row
from omk_ray.farm.sample_queue import Sample, SampleQueue
from omk_ray.farm.stage_tracker import StageTracker
from omk_ray.farm.stages import Verdict as StageVerdict
from omk_ray.results.run_records import EventKind

FEED_CHUNK = 16  # engines are topped up in rounds of this many requests: the longest spread over them


class Scheduler:
    def __init__(self, plan: Plan, *, engines, scoring, rows, runlog, wait: Callable[[list], list],
                 gate: CanaryGate | None = None, progress=None, stages: StageTracker | None = None):
        self.plan, self.grid, self.farm = plan, plan.grid, plan.grid.farm
        self.engines, self.scoring, self.rows, self.runlog, self.wait = engines, scoring, rows, runlog, wait
        self.gate = gate or CanaryGate({}, {})
        self.progress = progress
        self.stages = stages
        self.queue = SampleQueue(plan, self.gate.variants, self.farm.max_retries, stages.stage_of if stages else None)
        self.stops: dict[str, dict] = {}  # arm -> its stop by `farm.stages` (`RunManifest.stops`)
        self.contexts: dict[tuple[str, str], RowContext] = {}
        self.start_failures: dict[str, int] = {}
        self.canary: dict[str, Verdict] = {}
        self.generated = self.failed_samples = self.skipped_samples = 0

    def run(self) -> None:
        for verdict in self.gate.due():
            self._judged(verdict)  # canary samples all stored by earlier runs
        for stop in self.stages.judge() if self.stages else []:
            self._stopped(stop)  # looks complete in stored rows
        try:
            while True:
                self._feed()
                self._start_engines()
                self.scoring.dispatch()
                waiting = self.engines.waiting() + self.scoring.waiting()
                if not waiting:
                    if self.queue.has_work():
                        raise RuntimeError("work remains but no engine can be placed: check the cluster's GPUs/CPUs")
                    return
                ready = self.wait(waiting)
                for event in [*self.engines.collect(ready), *self.scoring.collect(ready), *self.engines.overdue()]:
                    self._on(event)
                self.rows.maybe_flush()
                if self.progress:
                    self.progress.show(self.engines.slots)
        finally:
            try:
                self.rows.flush()  # may meet the full disk again: the engines and scorers are let go all the same
            finally:
                self.engines.close()
                self.scoring.close()

    # -- deciding ------------------------------------------------------------------------------

    def _start_engines(self) -> None:
        """Start engines while some variant has requests that no engine of it (loaded or loading) will take."""
        while self.farm.max_engines is None or len(self.engines.slots) < self.farm.max_engines:
            first = self.gate.first()
            views = [VariantView(v, self.grid.variant(v).engine, self.engines.cost(v), q.unsent, q.remaining_tokens,
                                 q.failed, self.start_failures.get(v, 0), self.engines.accelerates(v), v in first)
                     for v, q in self.queue.queues.items()]
            engines = [EngineView(s.variant, s.kind, s.loading, s.target, len(s.inflight)) for s in self.engines.slots]
            best = next_engine(views, engines, self.engines.loads, self.engines.work(), self.engines.free(),
                               self.farm.max_retries)
            if best is None:
                return
            slot = self.engines.start(self.grid.variant(best))
            self.runlog.event(EventKind.ENGINE_STARTING, engine=slot.name, variant=best)

    def _feed(self) -> None:
        """Top every loaded engine up to its target, a chunk per engine per round, so the longest requests
        of a variant spread over its engines; an engine whose variant has nothing left retires."""
        loaded = [s for s in self.engines.slots if not s.loading]
        taken: dict[int, list[Sample]] = {id(s): [] for s in loaded}
        active = loaded
        while active:
            active = [s for s in active if self._take(s, taken[id(s)])]
        for slot in loaded:
            queue = self.queue[slot.variant]
            if taken[id(slot)]:
                self.engines.submit(slot, taken[id(slot)])
            elif not slot.inflight and not queue.gated and not queue.unsent:
                self.engines.retire(slot)
            self.engines.keep_polling(slot)

    def _take(self, slot, taken: list[Sample]) -> bool:
        loading = sum(1 for s in self.engines.slots if s.variant == slot.variant and s.loading)
        n, stride = feed_size(slot.target, len(slot.inflight), len(taken), FEED_CHUNK, loading)
        samples = self.queue[slot.variant].take(n, stride=stride)
        taken.extend(samples)
        return bool(samples)

    # -- acting on events ----------------------------------------------------------------------

    def _on(self, event: Event) -> None:
        match event:
            case Loaded():
                self.runlog.event(EventKind.ENGINE_STARTED, name=event.engine, info=event.info, in_flight=event.in_flight)
            case FailedToStart():
                self._failed_to_start(event)
            case Finished():
                self._finished(event)
            case Lost():
                self.runlog.event(event.kind, engine=event.engine, variant=event.variant,
                                  in_flight=len(event.samples), error=event.error[-2000:])
                self._retry(event.samples, event.error)
            case Scored():
                self._finish(event.sample, event.generated, event.made_by, event.score, event.error,
                             event.scorer_version)
            case ScorerLost():
                self.runlog.event(EventKind.SCORER_DIED, bench=event.bench, samples=event.samples, error=event.error)
            case ScoringFailed():
                self.runlog.event(EventKind.SCORING_FAILED, bench=event.bench, samples=event.samples, error=event.error)

    def _failed_to_start(self, event: FailedToStart) -> None:
        failures = self.start_failures[event.variant] = self.start_failures.get(event.variant, 0) + 1
        self.runlog.event(EventKind.ENGINE_START_FAILED, engine=event.engine, variant=event.variant, error=event.error[-2000:])
        if any(s.variant == event.variant for s in self.engines.slots):
            return  # another engine of the variant serves (or may yet load): no new ones are started for it
        if failures > self.farm.max_retries:
            self._give_up(self.queue.fail(event.variant), f"engine failed to start: {event.error[-500:]}")
            self.runlog.event(EventKind.VARIANT_FAILED, variant=event.variant, reason="engine failed to start")

    def _finished(self, event: Finished) -> None:
        for sample, g in event.done:
            if g.engine_error:
                self.runlog.event(EventKind.REQUEST_FAILED, engine=event.engine, variant=sample.variant, bench=sample.bench,
                                  doc_id=sample.doc.id, error=g.completion.error)
                self._retry([sample], g.completion.error or "engine error")
                continue
            self.queue.learn(sample, g.completion.completion_tokens)
            if self.progress:
                self.progress.generated(g.completion.completion_tokens)
            if g.completion.error:
                self._finish(sample, g, event.made_by, None, g.completion.error, None)
            else:
                self.scoring.add(sample, g, event.made_by)

    def _retry(self, samples: list[Sample], error: str) -> None:
        given_up = self.queue.retry(samples)
        if given_up:
            self._give_up(given_up, f"failed {self.farm.max_retries + 1} times: {error[-500:]}")

    def _give_up(self, samples: list[Sample], reason: str) -> None:
        """Samples that will not be generated in this run: an error row each, and an event."""
        by_cell: dict[tuple[str, str], list[Sample]] = {}
        for s in samples:
            by_cell.setdefault((s.variant, s.bench), []).append(s)
        for (variant, bench), ss in by_cell.items():
            self.runlog.event(EventKind.SAMPLES_FAILED, variant=variant, bench=bench,
                              doc_ids=[f"{s.doc.id}#{s.repeat}" for s in ss], reason=reason)
        for s in samples:
            failed = Generated(s.id, Completion(text="", finish_reason="error", error=reason),
                               datetime.now(timezone.utc))
            self._finish(s, failed, None, None, reason, None)

    def _finish(self, sample: Sample, g: Generated, made_by: dict | None, score, error: str | None,
                scorer_version: str | None) -> None:
        row = self._row(sample, g, made_by, score, error, scorer_version)
        self.rows.add([row])
        if error:
            self.failed_samples += 1
        else:
            self.generated += 1
        if self.progress:
            self.progress.advance(samples=0 if error else 1, failed=1 if error else 0)
        if sample.canary:
            for verdict in self.gate.add(row):
                self._judged(verdict)
        if self.stages:
            for stop in self.stages.add(row):
                self._stopped(stop)
            if self.progress:
                self.progress.look = self.stages.look_label()

    def _row(self, sample: Sample, g: Generated, made_by: dict | None, score, error, scorer_version) -> dict:
        cell = (sample.variant, sample.bench)
        ctx = self.contexts.get(cell)
        if ctx is None:
            ctx = self.contexts[cell] = RowContext(
                self.runlog.run_id, sample.variant, self.plan.fingerprints[sample.variant], sample.bench,
                sample.work.recipe, self.grid.variant(sample.variant).engine,
                self.plan.dataset_revisions.get(sample.bench))
        identity = made_by.get("identity") if made_by else None
        return sample_row(ctx, sample.doc, sample.repeat, g.completion, score, error, g.started_at,
                          made_by["engine"] if made_by else None, scorer_version,
                          EngineIdentity.model_validate(identity) if identity else None)

    def _judged(self, verdict: Verdict) -> None:
        """Record a canary verdict; a stopped variant's samples left are skipped, else its queue opens."""
        self.canary[verdict.variant] = verdict
        self.runlog.event(EventKind.CANARY, variant=verdict.variant, passed=verdict.passed, reasons=verdict.reasons)
        if verdict.variant not in self.queue.queues:
            return
        queue = self.queue[verdict.variant]
        queue.open()
        if not verdict.stopped:
            return
        skipped = len(queue.drain())
        self.skipped_samples += skipped
        if self.stages and verdict.variant in self.stages.arms:
            self.stages.arms.remove(verdict.variant)  # stopped already: the stages judge it no more
        self.runlog.event(EventKind.VARIANT_SKIPPED, variant=verdict.variant, samples=skipped,
                          reason="canary failed: " + "; ".join(verdict.reasons))
        if self.progress:
            self.progress.advance(skipped=skipped)

    def _stopped(self, stop: StageVerdict) -> None:
        """An arm stopped by `farm.stages`: recorded with its rule and numbers, its queue drained, its engines
        retired now (requests in flight on them are dropped: skipped, like the queue's)."""
        skipped = len(self.queue.queues[stop.arm].drain()) if stop.arm in self.queue.queues else 0
        for slot in [s for s in self.engines.slots if s.variant == stop.arm]:
            skipped += len(slot.inflight)
            self.engines.retire(slot)
        self.skipped_samples += skipped
        self.stops[stop.arm] = {**stop.to_dict(), "skipped_samples": skipped}
        self.runlog.event(EventKind.STAGE_STOP, variant=stop.arm, samples=skipped, reason=stop.text(),
                          verdict=stop.to_dict())
        if self.progress:
            self.progress.advance(skipped=skipped)
            self.progress.stopped(stop.arm, stop.stage)
