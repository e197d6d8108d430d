"""A bench: documents to ask, and a scorer for the answers (lm-eval's task, made small)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omk_ray.config import BenchSpec, stable_hash
from omk_ray.engines.base import Completion, Request
from omk_ray.engines.scoring import Scoring
from omk_ray.plugins import parse_options


@dataclass
class Doc:
    id: str
    messages: list[dict[str, str]]
    target: str | None = None
    domain: str | None = None
    subdomain: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    scoring: Scoring | None = None  # set: the engine scores these texts instead of answering `messages`

    @property
    def hash(self) -> str:
        """What the document asks and how it is judged (stored on every row as `doc_hash`): a document
        edited under the same id is a new sample, and a resume generates it again."""
        parts = [self.id, self.messages, self.target, self.domain, self.subdomain, self.meta]
        if self.scoring is not None:  # (documents that generate hash as they always did)
            parts.append([list(map(list, self.scoring.pairs)), self.scoring.rolling])
        return stable_hash(parts)

    def request(self, repeat: int, bench: str | None) -> Request:
        """The engine request of one sample of this document."""
        return Request(id=f"{self.id}#{repeat}", messages=self.messages, repeat=repeat, bench=bench,
                       scoring=self.scoring)


@dataclass
class Score:
    score: float
    correct: bool
    extracted: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str | None = None  # why it failed, when the scorer knows (e.g. "test 4: got 7, expected 6")
    isolation: str | None = None  # how the answer's program was confined (code benches: namespaces|rlimits)
    chosen: int | None = None  # multiple choice: the index of the choice picked (highest log-likelihood)


class BenchOptions(BaseModel):
    """The `options:` every bench takes; a bench kind declares its own as a subclass named `Options`,
    checked when the grid is planned (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary_metric: str | None = Field(None, description="the metric `compare` reports: a key of the rows' "
                                       "metric map (lm-eval: \"metric,filter\"); default the row's score")
    canary_min_p10_tokens: float | None = Field(None, ge=0, description="the canary's p10 length floor (tokens)")


class ScorerUnavailable(RuntimeError):
    """The scorer cannot score anything here (e.g. no sandbox can start): no row is worth retrying alone."""


def score_guarded(bench: "Bench", pairs: list[tuple[Doc, "Completion"]]) -> list["Score | Exception"]:
    """Each pair's score, or the exception its scorer raised: one hostile answer fails its row only.

    `score_many` first (code benches run their programs in parallel); if it raises, each row alone.
    A `ScorerUnavailable` is every row's result at once.
    """
    try:
        return list(bench.score_many(pairs))
    except ScorerUnavailable as err:
        return [err] * len(pairs)
    except Exception:  # noqa: BLE001 - find the row that raised
        pass
    out: list[Score | Exception] = []
    for doc, completion in pairs:
        try:
            out.append(bench.score(doc, completion))
        except Exception as err:  # noqa: BLE001 - a scorer choking on one answer fails that row only
            out.append(err)
    return out


class Bench(ABC):
    scorer_version = "1"
    Options: type[BenchOptions] = BenchOptions
    scores_text = False  # its documents are scoring requests (Doc.scoring): only engines with `scores` run it

    def __init__(self, spec: BenchSpec):
        self.spec = spec
        self.options = parse_options(self.Options, spec.options, f"bench {spec.name!r}")

    @abstractmethod
    def load_docs(self) -> list[Doc]:
        """Every document of the bench's data, in a stable order."""

    @abstractmethod
    def score(self, doc: Doc, completion: Completion) -> Score: ...

    def score_many(self, pairs: list[tuple[Doc, Completion]]) -> list[Score]:
        """Score a unit's answers; benches that run programs override this to run them in parallel."""
        return [self.score(doc, completion) for doc, completion in pairs]

    @property
    def dataset_revision(self) -> str | None:
        return self.spec.revision

    def docs(self) -> list[Doc]:
        docs = self.load_docs()
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"bench {self.spec.name!r}: duplicate doc ids in {self.spec.source}")
        subset = self.spec.subset
        if subset is None:
            return docs
        if isinstance(subset, int):
            return docs[:subset]
        by_id = {d.id: d for d in docs}
        missing = [i for i in subset if i not in by_id]
        if missing:
            raise ValueError(f"bench {self.spec.name!r}: subset ids not in the data: {missing[:5]}")
        return [by_id[i] for i in subset]
