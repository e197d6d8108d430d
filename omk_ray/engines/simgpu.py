"""A FAKE GPU engine: no model, a timing model of how a GPU serves a batch (for farm benchmarks).

It stands in for what cannot exist here, a GPU running vLLM, and is named so everywhere. Decode
is continuous batching: each step takes `step_s + step_s_per_seq x active sequences`, every
active sequence gains one token per step, at most `max_num_seqs` sequences are active, and a
request that arrives waits for the next step. A request's answer length is looked up by its last
message in the `lengths` file, else is the integer that message is (`"1234"` -> 1234 tokens), else
its word count; always capped by the generation budget.
It takes a GPU slot like a real engine, so N fake GPUs hold N of them.

`engine_args.extra`: `step_s` (default 0.015), `step_s_per_seq` (0.00005), `max_num_seqs` (256),
`quantum_s` (0.02: the loop sleeps in steps of about this much simulated time, so arrivals wait at
most that long), `lengths` (a JSON file {last message: answer tokens}), `answers` (a JSON file
{last message: answer text}; default: the message itself), `stall_after` (answer this many
requests, then never again: for stall tests), `load_s` (seconds the fake model takes to load).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from omk_ray.config import Recipe
from omk_ray.engines.base import Completion, Engine, Request
from omk_ray.engines.identity import SIMGPU, EngineIdentity


class SimGpuOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step_s: float = Field(0.015, ge=0)
    step_s_per_seq: float = Field(0.00005, ge=0)
    max_num_seqs: int = Field(256, ge=1)
    quantum_s: float = Field(0.02, gt=0)
    lengths: str | None = None
    answers: str | None = None
    stall_after: int | None = Field(None, ge=0)
    load_s: float = Field(0.0, ge=0)


class _Seq:
    __slots__ = ("left", "done", "tokens")

    def __init__(self, tokens: int, done: asyncio.Future):
        self.left = self.tokens = tokens
        self.done = done


class SimulatedGpuEngine(Engine):
    kind = "simgpu"
    Options = SimGpuOptions
    holds_weights = False

    def __init__(self, variant, model_path: str):
        super().__init__(variant, model_path)
        self.waiting: list[_Seq] = []
        self.active: list[_Seq] = []
        self.answered = 0
        self._loop_task: asyncio.Task | None = None
        self.lengths = json.loads(Path(self.options.lengths).read_text()) if self.options.lengths else {}
        self.answers = json.loads(Path(self.options.answers).read_text()) if self.options.answers else {}
        time.sleep(self.options.load_s)

    @property
    def capacity(self) -> int:
        return self.options.max_num_seqs

    @property
    def version(self) -> str:
        return "simgpu 1 (fake GPU timing model)"

    @classmethod
    def planned_device(cls, gpu: bool) -> str | None:
        return SIMGPU  # a timing model, never a real GPU, wherever it runs

    def identity(self) -> EngineIdentity:
        return EngineIdentity(kind=self.kind, family=self.kind, version="1", device=SIMGPU, device_count=1)

    async def generate(self, request: Request, recipe: Recipe) -> Completion:
        start = time.perf_counter()
        text = request.messages[-1]["content"] if request.messages else ""
        wanted = self.lengths.get(text) or (int(text) if text.strip().isdigit() else len(text.split()))
        n = max(1, min(wanted, recipe.generation_budget))
        seq = _Seq(n, asyncio.get_running_loop().create_future())
        self.waiting.append(seq)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._decode())
        await seq.done
        return Completion(text=self.answers.get(text, text), prompt_tokens=len(text.split()), completion_tokens=n,
                          finish_reason="length" if n >= recipe.generation_budget else "stop",
                          latency_s=time.perf_counter() - start)

    async def _decode(self) -> None:
        """Decode steps on a drift-free clock: a late wake-up shortens the next sleeps until the model's
        time is caught up (the simulator's own delays are not the GPU's)."""
        o = self.options
        clock = time.perf_counter()
        while self.waiting or self.active:
            room = o.max_num_seqs - len(self.active)
            self.active += self.waiting[:room]
            del self.waiting[:room]
            step = o.step_s + o.step_s_per_seq * len(self.active)
            steps = max(1, min(min(s.left for s in self.active), int(o.quantum_s / step) if step else 1 << 30))
            clock += steps * step
            await asyncio.sleep(max(0.0, clock - time.perf_counter()))
            for s in self.active:
                s.left -= steps
            finished = [s for s in self.active if s.left <= 0]
            self.active = [s for s in self.active if s.left > 0]
            for s in finished:
                if o.stall_after is not None and self.answered >= o.stall_after:
                    continue  # a stalled engine: never answers again
                self.answered += 1
                s.done.set_result(None)
