"""From a generated completion to a stored row: scoring (on CPU, never on the engine) and the row itself.

`score_all` is what the scoring actors run; `sample_row` is the farm's row, built by the one row
constructor (`results.schema.make_row`); `generate_rows` puts both behind an engine in-process (tests, scripts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from omk_ray.benches import Bench, Doc, Score, score_guarded
from omk_ray.config import Recipe
from omk_ray.engines.base import Completion, Engine
from omk_ray.engines.identity import ROW_COLUMNS as IDENTITY_COLUMNS
from omk_ray.engines.identity import EngineIdentity
from omk_ray.redact import scrub
from omk_ray.results.schema import make_row, rows_to_table


@dataclass(frozen=True)
class RowContext:
    """What every row of one (variant, bench) shares."""

    run_id: str
    variant: str
    fingerprint: str
    bench: str
    recipe: Recipe
    engine: str
    dataset_revision: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe_hash", self.recipe.hash)  # hashed once, stored on every row
        object.__setattr__(self, "cohort", self.recipe.cohort)


def score_all(bench: Bench, pairs: list[tuple[Doc, Completion]]) -> list[tuple[Score | None, str | None]]:
    """(score, error) per pair; a scorer choking on one completion fails that sample only (`score_guarded`)."""
    todo = [i for i, (_, c) in enumerate(pairs) if c.error is None]
    out: list[tuple[Score | None, str | None]] = [(None, c.error) for _, c in pairs]
    for i, score in zip(todo, score_guarded(bench, [pairs[i] for i in todo]), strict=True):
        out[i] = (None, f"scorer error: {type(score).__name__}: {score}") if isinstance(score, Exception) else (score, None)
    return out


def sample_row(ctx: RowContext, doc: Doc, repeat: int, completion: Completion, score: Score | None,
               error: str | None, started_at: datetime, engine_version: str | None, scorer_version: str | None,
               identity: EngineIdentity | None = None) -> dict:
    """One sample's row; `identity`: the engine's that made it (None: no engine answered, e.g. given up)."""
    metrics = dict(score.metrics) if score else {}
    if completion.thinking_budget_hit:
        metrics["thinking_budget_hit"] = 1.0
    return make_row(
        run_id=ctx.run_id,
        cohort=ctx.cohort,
        variant=ctx.variant,
        variant_fingerprint=ctx.fingerprint,
        bench=ctx.bench,
        doc_id=doc.id,
        repeat=repeat,
        prompt_hash=completion.prompt_hash,
        doc_hash=doc.hash,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        reasoning_tokens=completion.reasoning_tokens,
        finish_reason=completion.finish_reason,
        response=completion.text,
        reasoning=completion.reasoning,
        extracted_answer=score.extracted if score else None,
        target=doc.target,
        score=score.score if score else None,
        correct=score.correct if score else None,
        metrics=metrics,
        domain=doc.domain,
        subdomain=doc.subdomain,
        latency_s=completion.latency_s,
        engine=ctx.engine,
        engine_version=engine_version,
        **(identity.columns() if identity else dict.fromkeys(IDENTITY_COLUMNS)),
        recipe_hash=ctx.recipe_hash,
        scorer_version=scorer_version,
        score_detail=score.detail if score else None,
        isolation=score.isolation if score else None,
        dataset_revision=ctx.dataset_revision,
        started_at=started_at,
        error=scrub(error),  # no engine's error text may store a secret
        error_kind=completion.error_kind if error else None,
        choice_logprobs=[lp for lp, _ in completion.loglikelihoods] if completion.loglikelihoods else None,
        choice_greedy=[g for _, g in completion.loglikelihoods] if completion.loglikelihoods else None,
        chosen=score.chosen if score else None,
    )


def generate_rows(engine: Engine, bench: Bench, ctx: RowContext, samples: list[tuple[Doc, int]]) -> pa.Table:
    """The farm's generate -> score -> row path for a few samples, in this process."""
    started = datetime.now(timezone.utc)
    requests = [doc.request(r, ctx.bench) for doc, r in samples]
    completions = engine.generate_batch(requests, ctx.recipe)
    identity = engine.identity()
    scores = score_all(bench, [(doc, c) for (doc, _), c in zip(samples, completions)])
    return rows_to_table([
        sample_row(ctx, doc, r, c, score, error, started, engine.version, bench.scorer_version, identity)
        for (doc, r), c, (score, error) in zip(samples, completions, scores)
    ])
