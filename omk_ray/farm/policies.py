"""The scheduler's decisions as pure functions over plain data: no Ray, no clock.

`farm/scheduler.py` measures (times, tokens, engines and their state), builds the snapshots below
and acts on what these return; tests/farm/test_policies.py decides the same cases from numbers.

- `next_engine`: which variant a free slot goes to (the most work left per engine), and whether a
  further engine of a variant that has some pays for its load (`sibling_pays`);
- `room`, `in_flight_target`, `feed_size`: how many requests to keep in flight, and how to hand
  them out while sibling engines still load;
- `patience`, `stalled`, `start_overdue`: when an engine counts as stalled or failed to start;
- `VariantQueue` (with `round_robin` and `reprices_at`): a variant's samples in the order they go
  out, probing never-seen benches first and repricing them from the lengths that come back.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

IN_FLIGHT_FACTOR = 1.1
PROBE = 4  # samples per never-seen bench handed out first, to learn the bench's lengths


# -- engines -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineView:
    """An engine (loaded or loading) as the decisions see it."""

    variant: str
    kind: str  # its engine kind (`VariantSpec.engine`)
    loading: bool
    target: int  # requests it keeps in flight once loaded
    in_flight: int


@dataclass(frozen=True)
class LoadTime:
    """Seconds an engine took from its start to loaded."""

    kind: str
    variant: str
    seconds: float


@dataclass(frozen=True)
class EngineWork:
    """What an engine (live or retired) has done: tokens answered over its busy seconds."""

    variant: str
    tokens: int
    busy_s: float


@dataclass(frozen=True)
class VariantView:
    """A variant that still has samples, as `next_engine` sees it."""

    name: str
    kind: str
    cost: float  # the slots one of its engines takes (`placement.Needs.cost`)
    unsent: int  # samples not handed to an engine yet
    remaining_tokens: float  # their expected completion tokens
    failed: bool
    start_failures: int
    uses_accelerator: bool  # else a client of a server or a replay: one actor per variant is enough
    first: bool = False  # others wait on its canary (the baseline of a baseline-relative canary rule)


def room(mine: Sequence[EngineView], engines: Sequence[EngineView]) -> int:
    """Requests `mine` (one variant's engines) can still take; a loading one counts as the target of a
    loaded engine of the same kind among `engines` (else 1: at the start every free slot is worth an engine)."""
    kind = mine[0].kind if mine else None
    known = next((e.target for e in engines if not e.loading and e.kind == kind), 1)
    return sum(known if e.loading else max(0, e.target - e.in_flight) for e in mine)


def sibling_pays(variant: str, kind: str, remaining_tokens: float, engines: int, loads: Sequence[LoadTime],
                 work: Sequence[EngineWork]) -> bool:
    """A further engine for a variant that has `engines` pays only when they would take longer to finish
    the work left (at their measured tokens per second) than a new one takes to load (measured on the
    variant's engines, else on those of its engine kind).
    Before any engine has loaded every free slot is worth an engine (the first wave); after, a variant
    not measured yet waits for its first engine's load and first answers."""
    seconds = [t.seconds for t in loads if t.variant == variant] or [t.seconds for t in loads if t.kind == kind]
    mine = [w for w in work if w.tokens and w.variant == variant]
    busy = sum(w.busy_s for w in mine)
    if not seconds or busy <= 0:
        return not loads
    tokens_per_s = sum(w.tokens for w in mine) / busy
    return remaining_tokens / (tokens_per_s * engines) > statistics.median(seconds)


def next_engine(variants: Sequence[VariantView], engines: Sequence[EngineView], loads: Sequence[LoadTime],
                work: Sequence[EngineWork], free: float, max_retries: int) -> str | None:
    """The variant whose engine takes the next free slot, or None: among those with requests that no
    engine of theirs (loaded or loading) will take, the most expected tokens left per engine, that fits;
    a variant marked `first` before any other."""
    best, best_rank = None, (False, 0.0)
    for v in variants:
        mine = [e for e in engines if e.variant == v.name]
        if v.failed or v.unsent <= room(mine, engines):
            continue
        if v.start_failures > max_retries:
            continue  # its engines keep failing to start: the ones it has will do
        if mine and not v.uses_accelerator:
            continue
        if mine and not sibling_pays(v.name, v.kind, v.remaining_tokens, len(mine), loads, work):
            continue
        rank = (v.first, max(v.remaining_tokens, 1.0) / (len(mine) + 1))
        if rank > best_rank and v.cost <= free + 1e-9:
            best, best_rank = v.name, rank
    return best


def in_flight_target(max_in_flight: int | None, capacity: float) -> int:
    """Requests a loaded engine keeps in flight: `farm.max_in_flight`, else about 1.1 x its capacity."""
    return max_in_flight or max(1, math.ceil(IN_FLIGHT_FACTOR * capacity))


def feed_size(target: int, in_flight: int, taken: int, most: int, siblings_loading: int) -> tuple[int, int]:
    """(how many requests, stride) to take from the queue for an engine this round. With siblings still
    loading it takes its whole room at once, every (1 + loading)-th request: the ones between wait for the
    siblings, so the longest requests do not all land on the first engine up."""
    free = target - in_flight - taken
    if siblings_loading:
        return free, 1 + siblings_loading
    return min(most, free), 1


def patience(stall_timeout_s: float, longest_budget: int, latency_s: float, tokens: int) -> float:
    """How long an engine may finish nothing: `farm.stall_timeout_s`, or three times what its longest
    request in flight (`longest_budget` tokens) would take at the seconds per token the engine has shown
    (`latency_s` over `tokens`), if that is longer: a 16k-token answer may legitimately outlast the
    timeout, and an engine reports no progress before a request finishes."""
    per_token = latency_s / tokens if tokens else 0.0
    return max(stall_timeout_s, 3 * longest_budget * per_token)


def stalled(idle_s: float, in_flight: int, patience_s: float) -> bool:
    """A loaded engine that holds requests and finished none for longer than its patience."""
    return bool(in_flight) and idle_s > patience_s


def start_overdue(age_s: float, timeout_s: float) -> bool:
    """A loading engine started longer ago than its variant's start timeout."""
    return age_s > timeout_s


def may_retry(attempts: int, max_retries: int) -> bool:
    """A sample tried `attempts` times goes back to its queue; else it becomes an error row."""
    return attempts <= max_retries


# -- a variant's queue ---------------------------------------------------------------------------


class Queued(Protocol):
    """What the queue reads of a sample (`sample_queue.Sample`; plain dataclasses in tests)."""

    cost: float  # expected completion tokens
    canary: bool
    seen: bool  # the cost is the doc's own, seen in earlier results (else the bench's guess)

    @property
    def bench(self) -> str: ...


S = TypeVar("S", bound=Queued)


def round_robin(samples: Sequence[S], per_bench: int) -> list[S]:
    """Up to `per_bench` samples of every bench whose costs are guesses, interleaved bench by bench."""
    by_bench: dict[str, list[S]] = {}
    for s in samples:
        if not s.seen and len(by_bench.setdefault(s.bench, [])) < per_bench:
            by_bench[s.bench].append(s)
    rounds = [[b[i] for b in by_bench.values() if i < len(b)] for i in range(per_bench)]
    return [s for r in rounds for s in r]


def reprices_at(answers: int) -> bool:
    """A bench's mean length so far reprices its guessed samples at 1, 2, 4, 8, ... answers."""
    return answers & (answers - 1) == 0


def _stage_then_longest(s) -> tuple[int, float]:
    """Samples of an earlier stage first (`farm.stages`: a sample's `stage`, 0 without stages), then the longest."""
    return getattr(s, "stage", 0), -s.cost


class VariantQueue(Generic[S]):
    """A variant's samples not yet handed to an engine, longest-expected first; the canary sample first
    and alone while the queue is `gated` (farm/gate.py judges it; the scheduler `open`s or drains the queue).

    A bench whose docs were never seen has only a guess for a cost (its budget), so the first
    `PROBE` samples of every such bench go out first, round-robin over the benches: the lengths
    they come back with reprice the rest of their bench (`reprice`) before most of it is handed out.
    """

    def __init__(self, samples: list[S], canary: bool):
        self.canary = deque(sorted((s for s in samples if s.canary), key=lambda s: -s.cost))
        rest = [s for s in samples if not s.canary]
        probes = [] if self.canary else round_robin(rest, PROBE)
        chosen = set(map(id, probes))
        self.pending = deque([*probes, *sorted((s for s in rest if id(s) not in chosen), key=_stage_then_longest)])
        self.gated = canary  # only the canary sample goes out until the gate opens the queue (`open`)
        self.failed = False

    def reprice(self, bench: str, tokens: float) -> None:
        """Samples of `bench` whose cost was a guess now expect `tokens`; the queue is sorted again."""
        for s in (*self.canary, *self.pending):
            if s.bench == bench and not s.seen:
                s.cost = tokens
        self.pending = deque(sorted(self.pending, key=_stage_then_longest))

    @property
    def unsent(self) -> int:
        return len(self.canary) + len(self.pending)

    @property
    def remaining_tokens(self) -> float:
        return sum(s.cost for s in (*self.canary, *self.pending))

    def open(self) -> None:
        """The canary's verdict is in and the variant goes on: the rest of its samples go out."""
        self.gated = False
        self.pending.extendleft(reversed(sorted(self.canary, key=lambda s: -s.cost)))
        self.canary.clear()

    def take(self, n: int, stride: int = 1) -> list[S]:
        """The next `n` samples; with `stride` k, every k-th of them: the ones between are left for the
        variant's engines still loading, so the longest requests do not all go to the first engine up."""
        if self.failed:
            return []
        source = self.canary if self.gated else self.pending
        if stride == 1 or source is self.canary:
            taken = [source.popleft() for _ in range(min(n, len(source)))]
        else:
            picked = list(source)[: n * stride : stride]
            chosen = set(map(id, picked))
            source_left = [s for s in source if id(s) not in chosen]
            source.clear()
            source.extend(source_left)
            taken = picked
        return taken

    def put_back(self, samples: list[S]) -> None:
        for s in sorted(samples, key=lambda s: s.cost):
            (self.canary if s.canary and self.gated else self.pending).appendleft(s)

    def drain(self) -> list[S]:
        out = [*self.canary, *self.pending]
        self.canary.clear()
        self.pending.clear()
        return out
