"""What a run records about itself, typed: its manifest (`runs/<run_id>/manifest.json`) and its
events (`runs/<run_id>/events.jsonl`).

`RunLog` (results/store.py) writes both through these models (`write_manifest`, `event`) and reads
them back with `RunLog.records()`. The models are tolerant of older folders: keys they do not name
are kept, keys missing are defaulted, event kinds they do not know are kept as strings. A run's
`status` as a reader should show it ("died" for a run that ended without recording its end) is
`RunRecords.status`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EventKind(StrEnum):
    ENGINE_STARTING = "engine_starting"
    ENGINE_STARTED = "engine_started"
    ENGINE_START_FAILED = "engine_start_failed"
    ENGINE_DIED = "engine_died"
    ENGINE_STALLED = "engine_stalled"
    REQUEST_FAILED = "request_failed"
    SAMPLES_FAILED = "samples_failed"  # given up: doc_ids ("doc#repeat") and the reason
    SCORER_DIED = "scorer_died"
    SCORING_FAILED = "scoring_failed"
    VARIANT_FAILED = "variant_failed"
    VARIANT_SKIPPED = "variant_skipped"
    CANARY = "canary"
    STAGE_STOP = "stage_stop"  # an arm stopped by `farm.stages`: its rule and numbers (`stages.Verdict.to_dict`)


# The events `status` lists as failures.
FAILURE_EVENTS = frozenset({EventKind.ENGINE_DIED, EventKind.ENGINE_STALLED, EventKind.REQUEST_FAILED,
                            EventKind.SCORER_DIED, EventKind.SCORING_FAILED, EventKind.ENGINE_START_FAILED})

# As the runner records it; "died" is never written: a reader derives it (`RunRecords.status`).
RecordedStatus = Literal["running", "finished", "finished_with_skips", "finished_with_failures", "failed",
                         "interrupted"]
RunStatus = Literal[RecordedStatus, "died"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class RunEvent(_Record):
    """One line of events.jsonl; the fields beside `event` depend on the kind (extra fields kept)."""

    event: Annotated[EventKind | str, Field(union_mode="left_to_right")]  # a kind of an older version: its string
    time: str | None = None
    variant: str | None = None
    bench: str | None = None
    engine: str | None = None
    error: str | None = None
    reason: str | None = None
    doc_ids: list[str] = Field(default_factory=list)


class RuleRecord(_Record):
    """One canary rule's verdict and the numbers it judged by (`farm.gate.RuleVerdict`)."""

    rule: str
    passed: bool
    reasons: list[str] = Field(default_factory=list)
    numbers: dict[str, Any] = Field(default_factory=dict)


class CanaryRecord(_Record):
    """A variant's canary verdict as the run judged it (`farm.gate.Verdict.record`)."""

    passed: bool = False
    reasons: list[str] = Field(default_factory=list)
    stopped: bool | None = None  # the run skipped the variant's full run (None: a run before this was recorded)
    benches: list[dict[str, Any]] = Field(default_factory=list)  # the structural rule's numbers per bench
    rules: list[RuleRecord] = Field(default_factory=list)


class StopRecord(_Record):
    """An arm stopped by `farm.stages` (farm/stages.py `Verdict.to_dict`): the look, the rule and its numbers."""

    arm: str
    action: str = "stop"
    stage: str = ""
    look: int = -1
    rule: str = ""
    target: str = ""
    n: int = 0
    of: int = 0
    delta_pp: float | None = None
    upper_pp: float | None = None
    threshold_pp: float | None = None
    alpha: float | None = None
    level: float | None = None
    bound: str = ""
    text: str = ""
    skipped_samples: int = 0  # samples of the arm the stop left ungenerated in this run


class OrderRecord(_Record):
    """A bench's representative order as the run read it (farm/order.py): resumed runs read it again."""

    method: str = "stratified-interleave/v1"
    seed: int = 0
    ids: list[str] = Field(default_factory=list)  # the documents, in the order read
    sha256: str = ""  # of the ids joined by newlines


class EngineRecord(_Record):
    """Per-engine accounting (the scheduler's `EngineStats`)."""

    name: str
    variant: str
    info: dict[str, Any] | None = None
    alive_s: float = 0.0
    busy_s: float | None = 0.0
    samples: int = 0
    tokens: int = 0
    gpus: float = 0.0


class RunManifest(_Record):
    """manifest.json: what the run was asked, what it planned, where it ran, how it ended."""

    run_id: str
    status: Annotated[RecordedStatus | str, Field(union_mode="left_to_right")] = "running"
    started_at: str | None = None
    ended_at: str | None = None
    config: dict[str, Any] | None = None  # the grid (`grid_to_dict`); `config.recorded_grid` reads it
    config_path: str | None = None
    variants: list[str] | None = None
    fingerprints: dict[str, str] = Field(default_factory=dict)
    gpu: bool | None = None  # planned for a cluster with GPUs
    engine_identities: dict[str, dict[str, Any]] = Field(default_factory=dict)
    weights: dict[str, Any] = Field(default_factory=dict)  # what each fingerprint hashed
    model_paths: dict[str, str] = Field(default_factory=dict)
    recipe_hashes: dict[str, Any] = Field(default_factory=dict)
    dataset_revisions: dict[str, Any] = Field(default_factory=dict)
    expected_samples: int | None = None
    planned_samples: int | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    host: str | None = None
    pid: int | None = None
    address: str | None = None
    limit_docs: int | None = None
    orders: dict[str, OrderRecord] = Field(default_factory=dict)  # bench -> its representative order (farm/order.py)
    took_over_from: dict[str, Any] | None = None  # a run that died holding the folder
    cluster_resources: dict[str, Any] | None = None
    preflight: dict[str, dict[str, Any]] | None = None
    # written at the end:
    seconds: float | None = None
    generated_samples: int | None = None
    failed_samples: int | None = None
    skipped_samples: int | None = None
    canary: dict[str, CanaryRecord] = Field(default_factory=dict)
    stops: dict[str, StopRecord] = Field(default_factory=dict)  # arm -> its stop by `farm.stages`
    resumed_stopped: list[str] = Field(default_factory=list)  # arms stopped earlier that this run completes
    isolation: dict[str, Any] = Field(default_factory=dict)
    engines: list[EngineRecord] = Field(default_factory=list)
    gpus: list[str] = Field(default_factory=list)
    ended_because: str | None = None  # a run that failed: the error that ended it


class RunRecords(BaseModel):
    """A run's manifest and events, read together."""

    manifest: RunManifest
    events: list[RunEvent] = Field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    def status(self, writing_run_id: str | None) -> RunStatus | str:
        """The recorded status, or "died": a run recorded as running that is not the folder's writer
        now (`writing_run_id`, from the folder lock) was killed before it could record its end."""
        recorded = self.manifest.status
        return "died" if recorded == "running" and writing_run_id != self.run_id else recorded

    def failures(self) -> list[RunEvent]:
        return [e for e in self.events if e.event in FAILURE_EVENTS]

    def given_up(self) -> list[RunEvent]:
        return [e for e in self.events if e.event == EventKind.SAMPLES_FAILED]
