"""What the code benches share: options, the sandbox, data fetching, and scoring by running programs."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field

from omk_ray.benches import sources
from omk_ray.benches.base import Bench, BenchOptions, Doc, Score, ScorerUnavailable
from omk_ray.benches.sandbox import Program, Limits, Outcome, Sandbox
from omk_ray.benches.sandbox.memory import bounded_memory_mb, cgroups_here, host_memory_mb
from omk_ray.config import BenchSpec
from omk_ray.engines.base import Completion


class CodeOptions(BenchOptions):
    """Options every code bench takes."""

    timeout_s: float = Field(10.0, gt=0, description="wall and CPU seconds per program")
    memory_mb: int = Field(
        2048, ge=64,
        description="memory for the whole program where the node allows a cgroup, else per process (RLIMIT_AS; "
        "processes x memory_mb in all). Left unset, lowered so that `workers` programs at once fit in half the "
        "host's memory. Every row records the bound (metrics sandbox_memory_limit_mb, sandbox_memory_cgroup)",
    )
    workers: int = Field(2, ge=1, description="programs run at once by score_many")
    isolation: Literal["namespaces", "rlimits", "auto"] = Field(
        "auto",
        description="auto: the strongest level the node allows (namespaces, else rlimits with a warning, said up "
        "front by `omk-ray preflight` and `omk-ray plan`); namespaces: refuse to run code where they are "
        "unavailable; rlimits: resource limits only. Every row records the level used",
    )


class CodeBench(Bench):
    """A bench whose answers are programs, scored by running them in the sandbox."""

    Options: type[CodeOptions] = CodeOptions

    def __init__(self, spec: BenchSpec):
        super().__init__(spec)
        self._revision: str | None = spec.revision

    @functools.cached_property
    def sandbox(self) -> Sandbox:
        o = self.options
        limits = Limits(wall_s=o.timeout_s, cpu_s=o.timeout_s, memory_mb=o.memory_mb)
        if "memory_mb" not in o.model_fields_set:  # the default: never more than the host can hold
            whole = cgroups_here()
            memory = bounded_memory_mb(o.memory_mb, o.workers, limits.processes, host_memory_mb(), whole)
            limits = limits.but(memory_mb=memory)
        return Sandbox(limits, workers=o.workers, isolation=o.isolation)

    @property
    def dataset_revision(self) -> str | None:
        return self._revision

    # -- data ----------------------------------------------------------------------------------

    def hub_split(self) -> sources.HubSplit | None:
        """The hub dataset split the bench reads from the data cache; None when it reads a local file."""
        return None

    def records(self, cache: Path | None = None) -> sources.Records:
        raise NotImplementedError

    def fetch_data(self, cache: Path) -> list[str]:
        """Download what the bench needs into `cache` (`omk-ray fetch-data`); one line per thing done."""
        ref = self.hub_split()
        if ref is None:
            return [f"local data: {len(self.records(cache).rows)} rows"]
        meta = sources.fetch_split(ref, cache, token=os.environ.get("HF_TOKEN"))
        state = "cached" if meta.get("cached") else "fetched"
        return [f"{ref.label}@{meta['revision']}: {meta['rows']} rows ({state})"]

    # -- scoring -------------------------------------------------------------------------------

    def program(self, doc: Doc, response: str) -> tuple[Program, str]:
        """The program to run for this answer, and the code extracted from the answer."""
        raise NotImplementedError

    def score(self, doc: Doc, completion: Completion) -> Score:
        return self.score_many([(doc, completion)])[0]

    def score_many(self, pairs: Sequence[tuple[Doc, Completion]]) -> list[Score]:
        """Score many answers, `options.workers` programs at a time.

        A sandbox that cannot start is the farm's failure, not the answer's: it raises
        (the samples are stored as errors, never as wrong answers).
        """
        jobs = [self.program(doc, completion.text) for doc, completion in pairs]
        outcomes = self.sandbox.run_many(job for job, _ in jobs)
        for outcome in outcomes:
            if outcome.setup_failed:
                raise SandboxUnavailable(
                    f"bench {self.spec.name!r}: the code sandbox cannot run here ({outcome.reason}); "
                    f"with isolation {self.options.isolation!r} nothing is run unconfined. Set the bench option "
                    "`isolation: auto` (the default) or `isolation: rlimits` to run programs with resource limits only"
                )
        return [to_score(outcome, code) for outcome, (_, code) in zip(outcomes, jobs)]


class SandboxUnavailable(ScorerUnavailable):
    """The sandbox could not start a program at the isolation level asked for."""


def isolation_used(store, run_id: str) -> dict[str, list[str]]:
    """bench -> the sandbox levels that ran its programs in this run (for the run's manifest)."""
    import pyarrow.compute as pc

    rows = store.read(columns=["bench", "isolation"], filter=(pc.field("run_id") == run_id) & pc.field("isolation").is_valid())
    found: dict[str, set[str]] = {}
    for bench, level in zip(rows["bench"].to_pylist(), rows["isolation"].to_pylist()):
        found.setdefault(bench, set()).add(level)
    return {bench: sorted(levels) for bench, levels in sorted(found.items())}


def rlimits_notes(store, variants: list[str], benches: list[str]) -> list[str]:
    """A card's notes: per code bench, the variants some of whose programs ran with resource limits only
    (`isolation: auto` where namespaces were refused): verdicts alike, but no file or network isolation."""
    import pyarrow.compute as pc

    rows = store.read(columns=["variant", "bench", "isolation"],
                      filter=(pc.field("isolation") == "rlimits") & pc.field("variant").isin(variants)
                      & pc.field("bench").isin(benches))
    found: dict[str, set[str]] = {}
    for variant, bench in zip(rows["variant"].to_pylist(), rows["bench"].to_pylist()):
        found.setdefault(bench, set()).add(variant)
    return [f"{bench}: programs of {', '.join(sorted(names))} ran with resource limits only (sandbox `rlimits`: "
            "Linux namespaces were not available on the node), without file or network isolation; the verdicts "
            "do not depend on it" for bench, names in sorted(found.items())]


MEMORY_LIMIT_KEY = "sandbox_memory_limit_mb"  # bookkeeping ("sandbox_" keys are never scores)
MEMORY_CGROUP_KEY = "sandbox_memory_cgroup"


def to_score(outcome: Outcome, extracted: str) -> Score:
    metrics = {"pass@1": float(outcome.passed)}
    if not outcome.passed:
        metrics[f"sandbox_{outcome.status}"] = 1.0
    if outcome.memory_limit_mb:  # the bound the whole program ran under, and whether a cgroup enforced it
        metrics[MEMORY_LIMIT_KEY] = float(outcome.memory_limit_mb)
        metrics[MEMORY_CGROUP_KEY] = float(outcome.memory_bound == "cgroup")
    if outcome.tests_total:
        metrics["tests_passed"] = float(outcome.tests_passed or 0)
        metrics["tests_total"] = float(outcome.tests_total)
    return Score(score=float(outcome.passed), correct=outcome.passed, extracted=extracted, metrics=metrics,
                 detail=None if outcome.passed else (outcome.reason or outcome.status), isolation=outcome.isolation)
