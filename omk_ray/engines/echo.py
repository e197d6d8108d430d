"""A stand-in engine with no model, for measuring the farm itself (overhead benchmarks, dry runs).

It answers each request at once with its last user message; completion tokens = its word count.
"""

from __future__ import annotations

from omk_ray.config import Recipe
from omk_ray.engines.base import Completion, Engine, Request


class EchoEngine(Engine):
    kind = "echo"
    uses_accelerator = False
    holds_weights = False

    @property
    def capacity(self) -> int:
        return 1024

    @property
    def version(self) -> str:
        return "echo 2"

    async def generate(self, request: Request, recipe: Recipe) -> Completion:
        text = request.messages[-1]["content"] if request.messages else ""
        n = min(len(text.split()), recipe.generation_budget)
        return Completion(text=text, prompt_tokens=len(text.split()), completion_tokens=n,
                          finish_reason="length" if n >= recipe.generation_budget else "stop")
