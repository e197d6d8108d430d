"""An engine that answers from a results folder instead of a model: rescoring stored outputs with a
new scorer or bench version, and measuring the farm itself with real output lengths.

`engine_args.extra`:

    results           results folder to replay (default: the variant's `model`, so a grid can
                      write `model: results/` and have the path resolved next to the config)
    variant           the stored variant to replay (default: this variant's name)
    recipe_hash       only replay samples made with this recipe hash (default: any)

A request `doc#repeat` of bench B gets the stored sample of B with that doc id and repeat
(lm-eval benches number their docs 0, 1, ...: the same ids in every bench). A request that
names no bench gets the one bench holding that doc id; when several do, the one whose recipe
hash equals the request's recipe. If that still leaves more than one, or none is stored, the
request comes back with an error (finish_reason "error") naming the problem: a replay never
invents an answer.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines.base import Completion, Engine, Request

REPLAYED = ["bench", "doc_id", "repeat", "recipe_hash", "response", "reasoning", "prompt_tokens", "completion_tokens",
            "reasoning_tokens", "finish_reason", "latency_s", "prompt_hash", "error", "error_kind", "engine_version"]


class ReplayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    results: str | None = None
    variant: str | None = None
    recipe_hash: str | None = None


class ReplayEngine(Engine):
    kind = "replay"
    uses_accelerator = False
    holds_weights = False
    Options = ReplayOptions

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        from omk_ray.results.store import ResultsStore

        options = self.options
        self.results = Path(options.results or model_path)
        self.source = options.variant or variant.name
        store = ResultsStore(self.results)
        if not store.shard_paths():
            raise FileNotFoundError(f"variant {variant.name!r}: no stored samples to replay in {self.results}")
        where = pc.field("variant") == self.source
        if options.recipe_hash:
            where &= pc.field("recipe_hash") == options.recipe_hash
        rows = store.read(columns=REPLAYED, filter=where).to_pylist()
        if not rows:
            raise ValueError(f"variant {variant.name!r}: {self.results} holds no samples of variant {self.source!r}"
                             + (f" with recipe {options.recipe_hash}" if options.recipe_hash else ""))
        self.rows: dict[tuple[str, int], list[dict]] = defaultdict(list)  # (doc, repeat) -> one row per bench
        for row in rows:
            self.rows[(row["doc_id"], row["repeat"])].append(row)
        stored_versions = sorted({r["engine_version"] or "?" for r in rows})
        self._version = f"replay {self.source} ({', '.join(stored_versions)})"

    @property
    def version(self) -> str:
        return self._version

    @property
    def capacity(self) -> int:
        return 1024

    async def generate(self, request: Request, recipe: Recipe) -> Completion:
        doc_id = request.id.rsplit("#", 1)[0]
        found = self.rows.get((doc_id, request.repeat), [])
        if request.bench is not None:
            found = [r for r in found if r["bench"] == request.bench]
        if len(found) > 1:
            found = [r for r in found if r["recipe_hash"] == recipe.hash] or found
        if len(found) != 1:
            where = f"variant {self.source!r}{f' on bench {request.bench!r}' if request.bench else ''} in {self.results}"
            reason = (f"no stored sample of doc {doc_id!r} repeat {request.repeat} for {where}" if not found else
                      f"doc {doc_id!r} repeat {request.repeat} is stored in several benches "
                      f"({', '.join(sorted(r['bench'] for r in found))}) of {where}; set extra.recipe_hash to choose")
            return Completion(text="", finish_reason="error", error=reason)
        row = found[0]
        return Completion(
            text=row["response"] or "",
            reasoning=row["reasoning"],
            prompt_tokens=row["prompt_tokens"] or 0,
            completion_tokens=row["completion_tokens"] or 0,
            reasoning_tokens=row["reasoning_tokens"] or 0,
            finish_reason=row["finish_reason"] or "stop",
            latency_s=row["latency_s"] or 0.0,
            prompt_hash=row["prompt_hash"] or "",
            error=row["error"],
            error_kind=row["error_kind"],
        )
