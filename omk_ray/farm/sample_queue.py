"""The samples of a run not yet handed to an engine: one `policies.VariantQueue` per variant
(probing never-seen benches, the longest first, the canary sample first), the attempts of each
sample and the lengths learned in the run (repricing). No Ray, no clock."""

from __future__ import annotations

from dataclasses import dataclass

from omk_ray.benches import Doc
from omk_ray.engines import Request
from omk_ray.farm.planner import BenchWork, Plan
from omk_ray.farm.policies import VariantQueue, may_retry, reprices_at


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
    stage: int = 0  # the first look of `farm.stages` that holds it (farm/stage_tracker.py): stages go out in order

    @property
    def bench(self) -> str:
        return self.work.bench

    @property
    def request(self) -> Request:
        return self.doc.request(self.repeat, self.work.bench)  # carries the doc's scoring requests, if any


class SampleQueue:
    """Every missing sample of the plan, per variant; `gated` variants send their canary sample first
    and hold the rest until `open` (the gate passed them, or only records its verdict)."""

    def __init__(self, plan: Plan, gated: set[str], max_retries: int, stage_of=None):
        self.max_retries = max_retries
        self.samples: list[Sample] = []
        by_variant: dict[str, list[Sample]] = {}
        for w in plan.work:
            if w.variant not in plan.fingerprints:
                continue
            canary = set(w.canary_ids) if w.variant in gated else set()
            for doc, repeat in w.samples:
                s = Sample(len(self.samples), w.variant, w, doc, repeat, w.cost(doc), doc.id in canary,
                           doc.id in w.doc_tokens, stage_of(w.bench, doc.id) if stage_of else 0)
                self.samples.append(s)
                by_variant.setdefault(w.variant, []).append(s)
        order = [v.name for v in plan.grid.variants]
        self.queues = {v: VariantQueue(by_variant[v], v in gated) for v in order if v in by_variant}
        self.attempts: dict[int, int] = {}
        self.lengths: dict[tuple[str, str], list[int]] = {}  # (variant, bench) -> [tokens, answers] this run

    def __getitem__(self, variant: str) -> VariantQueue:
        return self.queues[variant]

    @property
    def variants(self) -> list[str]:
        return list(self.queues)

    def has_work(self) -> bool:
        return any(q.unsent and not q.failed for q in self.queues.values())

    def learn(self, sample: Sample, tokens: int) -> None:
        """A bench's mean length so far reprices its guessed samples at 1, 2, 4, 8, ... answers."""
        seen = self.lengths.setdefault((sample.variant, sample.bench), [0, 0])
        seen[0] += tokens
        seen[1] += 1
        if reprices_at(seen[1]):
            self.queues[sample.variant].reprice(sample.bench, seen[0] / seen[1])

    def retry(self, samples: list[Sample]) -> list[Sample]:
        """Count one more attempt of each; those allowed another go back to their queue, the others are returned."""
        again: dict[str, list[Sample]] = {}
        given_up = []
        for s in samples:
            self.attempts[s.id] = self.attempts.get(s.id, 0) + 1
            if may_retry(self.attempts[s.id], self.max_retries):
                again.setdefault(s.variant, []).append(s)
            else:
                given_up.append(s)
        for variant, ss in again.items():
            self.queues[variant].put_back(ss)
        return given_up

    def fail(self, variant: str) -> list[Sample]:
        """The variant gets no more engines: its samples left, to be given up."""
        queue = self.queues[variant]
        queue.failed = True
        return queue.drain()
