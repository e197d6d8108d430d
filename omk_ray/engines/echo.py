"""A stand-in engine with no model, for measuring the farm itself (benchmarks, dry runs).

It answers each request with the last user message. With `engine_args.extra`:
`seconds_per_token` sleeps in proportion to the answer length, and `lengths` (a list of
completion lengths, picked per request id) makes answers long-tailed like real ones.
"""

from __future__ import annotations

import time
import zlib

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines.base import Completion, Engine, Request


class EchoEngine(Engine):
    kind = "echo"
    uses_accelerator = False

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        extra = variant.engine_args.extra
        self.seconds_per_token = float(extra.get("seconds_per_token", 0.0))
        self.lengths = list(extra.get("lengths", []))

    @property
    def version(self) -> str:
        return "echo 1"

    def generate(self, requests: list[Request], recipe: Recipe) -> list[Completion]:
        out = []
        for r in requests:
            text = r.messages[-1]["content"] if r.messages else ""
            n = self.lengths[zlib.crc32(r.id.encode()) % len(self.lengths)] if self.lengths else len(text.split())
            n = min(n, recipe.generation_budget)
            if self.seconds_per_token:
                time.sleep(n * self.seconds_per_token)
            out.append(Completion(text=text, prompt_tokens=len(text.split()), completion_tokens=n,
                                  finish_reason="length" if n >= recipe.generation_budget else "stop"))
        return out
