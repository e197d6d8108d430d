"""What the scheduler's owners report to its loop, typed.

The engine pool (farm/engine_pool.py) reports `Loaded`, `Finished`, `Lost` and `FailedToStart`;
the scoring pool (farm/scoring_pool.py) reports `Scored`, and `ScorerLost` / `ScoringFailed` for
the run's event log. Each event carries what the loop needs to act on it (the samples to retry,
the rows' provenance); an owner has already done its own bookkeeping (a lost engine is retired,
its slot is free) when it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omk_ray.results.run_records import EventKind

if TYPE_CHECKING:
    from omk_ray.farm.actor import Generated


@dataclass(frozen=True)
class Loaded:
    """An engine loaded (and its identity matched the plan's): it takes requests from now on."""

    engine: str
    variant: str
    info: dict
    in_flight: int  # requests it keeps in flight


@dataclass(frozen=True)
class FailedToStart:
    """An engine that did not load (an error, a start timeout, another engine identity): its slot is free."""

    engine: str
    variant: str
    error: str


@dataclass(frozen=True)
class Finished:
    """Requests an engine finished since its last poll; `made_by` is the engine's info (version, identity)."""

    engine: str
    variant: str
    made_by: dict | None
    done: list[tuple[Any, Generated]] = field(default_factory=list)  # (sample, what came back)


@dataclass(frozen=True)
class Lost:
    """An engine that died or stalled, retired; `samples` were in flight on it."""

    engine: str
    variant: str
    kind: EventKind  # ENGINE_DIED or ENGINE_STALLED
    error: str
    samples: list = field(default_factory=list)


@dataclass(frozen=True)
class Scored:
    """A sample scored (or failed to be: `error`), ready to become a row."""

    sample: Any
    generated: Generated
    made_by: dict | None
    score: Any
    error: str | None
    scorer_version: str | None


@dataclass(frozen=True)
class ScorerLost:
    """A scoring actor died on a batch (a program took it down); the pool replaced it and scores the batch again."""

    bench: str
    samples: int
    error: str


@dataclass(frozen=True)
class ScoringFailed:
    """A bench could not score a batch at all; its samples come as `Scored` with an error."""

    bench: str
    samples: int
    error: str


EngineEvent = Loaded | FailedToStart | Finished | Lost
ScoringEvent = Scored | ScorerLost | ScoringFailed
Event = EngineEvent | ScoringEvent
