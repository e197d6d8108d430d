"""Scoring on CPU actors (they run the code benches' sandboxed programs), never on an engine.

Finished samples wait here per (variant, bench) and go out in batches of up to `SCORE_BATCH`,
`SCORER_QUEUE` calls in flight per actor. A scoring actor that dies on a batch (a program took it
down) is replaced and the batch's samples become suspects, scored one by one from then on, so the
one that did it fails alone: it is tried `1 + farm.max_retries` times, then finished with an error.
Reports `Scored` per sample, and `ScorerLost` / `ScoringFailed` for the run's event log.
"""

from __future__ import annotations

from typing import Any

import ray

from omk_ray.config import BenchSpec, FarmSpec
from omk_ray.farm import NAMESPACE
from omk_ray.farm.actor import ScorerActor
from omk_ray.farm.engine_pool import ACTOR_DIED, describe
from omk_ray.farm.events import Scored, ScorerLost, ScoringEvent, ScoringFailed

SCORE_BATCH = 256  # most samples per scoring call (a call takes what is waiting, up to this)
SCORER_QUEUE = 2  # scoring calls in flight per scoring actor

Item = tuple[Any, Any, dict | None]  # (sample, Generated, the engine's info)


class ScoringPool:
    def __init__(self, benches: list[BenchSpec], farm: FarmSpec):
        self.benches, self.farm = benches, farm
        self.scorers: list[Any] = []
        self.load: dict[int, int] = {}  # scorer -> calls in flight
        self.to_score: dict[tuple[str, str], list[Item]] = {}
        self.scoring: dict[Any, tuple[int, str, list[Item]]] = {}
        self.attempts: dict[int, int] = {}
        self.suspects: set[int] = set()  # samples of a batch whose actor died: scored one by one

    def add(self, sample, generated, made_by: dict | None) -> None:
        self.to_score.setdefault((sample.variant, sample.bench), []).append((sample, generated, made_by))

    def waiting(self) -> list:
        return list(self.scoring)

    def dispatch(self) -> None:
        while len(self.scorers) < self.farm.scorers:
            self.load[len(self.scorers)] = 0
            self.scorers.append(self._scorer())
        for cell in list(self.to_score):
            items = self.to_score[cell]
            while items:
                scorer = min(self.load, key=self.load.get)
                if self.load[scorer] >= SCORER_QUEUE:
                    return
                size = 1 if items[0][0].id in self.suspects else SCORE_BATCH  # suspects are scored alone
                batch, items[:] = items[:size], items[size:]
                ref = self.scorers[scorer].score.remote(cell[1], [(s.doc, g.completion) for s, g, _ in batch])
                self.scoring[ref] = (scorer, cell[1], batch)
                self.load[scorer] += 1
            del self.to_score[cell]

    def collect(self, ready: list) -> list[ScoringEvent]:
        events: list[ScoringEvent] = []
        for ref in ready:
            if ref in self.scoring:
                events.extend(self._scored(ref))
        return events

    def close(self) -> None:
        for scorer in self.scorers:
            ray.kill(scorer, no_restart=True)

    def _scorer(self):
        cls = ray.remote(ScorerActor).options(num_cpus=self.farm.scorer_cpus, max_restarts=0, namespace=NAMESPACE)
        return cls.remote(self.benches)

    def _scored(self, ref) -> list[ScoringEvent]:
        scorer, bench, batch = self.scoring.pop(ref)
        self.load[scorer] -= 1
        try:
            scores, scorer_version = ray.get(ref)
        except ACTOR_DIED as err:  # a program took the scoring actor down: a new one, then try again
            self.scorers[scorer] = self._scorer()
            events: list[ScoringEvent] = [ScorerLost(bench, len(batch), describe(err)[-2000:])]
            again = []
            if len(batch) > 1:  # which one did it is unknown: each is scored alone from now on
                self.suspects.update(item[0].id for item in batch)
                again = batch
            else:
                sample, g, made_by = batch[0]
                tries = self.attempts[sample.id] = self.attempts.get(sample.id, 0) + 1
                if tries <= self.farm.max_retries:
                    again = batch
                else:
                    events.append(Scored(sample, g, made_by, None,
                                         f"scoring failed {tries} times: {describe(err)[-300:]}", None))
            if again:
                self.to_score.setdefault((again[0][0].variant, bench), [])[:0] = again
            return events
        except ray.exceptions.RayTaskError as err:  # the bench itself cannot score (e.g. cannot be built)
            error = f"scorer error: {describe(err)[-500:]}"
            return [ScoringFailed(bench, len(batch), describe(err)[-2000:]),
                    *(Scored(s, g, made_by, None, error, None) for s, g, made_by in batch)]
        return [Scored(s, g, made_by, score, error, scorer_version)
                for (s, g, made_by), (score, error) in zip(batch, scores)]
