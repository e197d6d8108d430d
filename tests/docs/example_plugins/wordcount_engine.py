"""An example engine plug-in (docs/adding-an-engine.md): it counts the words after the prompt's colon.

No model: it stands for any backend. `engine_args.extra: {off_by_one_at: k}` answers one too many
whenever the count is a multiple of k, so a comparison has something to find.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from omk_ray.config import Recipe
from omk_ray.engines import Completion, Engine, Request


class WordCountOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    off_by_one_at: int = Field(0, ge=0, description="answer count + 1 when the count is a multiple of this (0: never)")


class WordCountEngine(Engine):
    kind = "wordcounter"
    uses_accelerator = False  # takes no GPU slot: it runs on `farm.cpus_per_engine` CPUs
    holds_weights = False  # loads no checkpoint: the variant's `model` is only its name
    Options = WordCountOptions  # validates engine_args.extra when the grid is loaded

    @property
    def capacity(self) -> int:
        return 64  # requests worked on at once; the farm keeps about 1.1x this many in flight

    @property
    def version(self) -> str:
        return "wordcounter 1"  # stored on every row (engine_version)

    async def generate(self, request: Request, recipe: Recipe) -> Completion:
        prompt = request.messages[-1]["content"]
        count = len(prompt.partition(":")[2].split())
        if self.options.off_by_one_at and count % self.options.off_by_one_at == 0:
            count += 1  # request.id is the farm's sample key, not the doc id: never parse it
        return Completion(text=str(count), prompt_tokens=len(prompt.split()), completion_tokens=1)
