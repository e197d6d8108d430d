"""One interface for every inference engine: chat requests in, completions out.

Engines that generate token ids locally (vLLM, transformers) share `TokenEngine`: the prompt
is rendered once by the model's own chat template, so every engine sees the same prompt
tokens, and the reasoning split, the thinking budget and the stop handling behave the same
whichever engine runs. A subclass only implements `_generate_ids`.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from omk_ray.config import Recipe, VariantSpec


@dataclass
class Request:
    id: str
    messages: list[dict[str, str]]
    repeat: int = 0


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
    thinking_budget_hit: bool = False
    token_ids: list[int] = field(default_factory=list, repr=False)


class Engine(ABC):
    """An engine holds one variant's weights and answers batches of requests."""

    kind: str = ""
    uses_accelerator: bool = True  # False for engines that hold no model (HTTP clients, replay, echo)

    def __init__(self, variant: VariantSpec, model_path: str):
        self.variant = variant
        self.model_path = model_path

    @abstractmethod
    def generate(self, requests: list[Request], recipe: Recipe) -> list[Completion]: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    def close(self) -> None:
        pass


@dataclass
class GenParams:
    """Sampler settings of one engine call, after the recipe has been resolved per request."""

    max_tokens: list[int]
    seeds: list[int]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    min_tokens: int
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class RawOutput:
    token_ids: list[int]
    finish_reason: str  # "stop" or "length"


class TokenEngine(Engine):
    """Shared logic of engines that run a local tokenizer and generate token ids."""

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=variant.revision)
        self.max_model_len = variant.engine_args.max_model_len

    @abstractmethod
    def _generate_ids(self, prompts: list[list[int]], params: GenParams) -> list[RawOutput]: ...

    # -- prompts -----------------------------------------------------------------------------

    def render(self, request: Request, recipe: Recipe) -> list[int]:
        return render_prompt(self.tokenizer, request.messages, recipe)

    def _marker_id(self, marker: str) -> int | None:
        return marker_id(self.tokenizer, marker)

    # -- generation --------------------------------------------------------------------------

    def generate(self, requests: list[Request], recipe: Recipe) -> list[Completion]:
        start = time.perf_counter()
        prompts = [self.render(r, recipe) for r in requests]
        results: list[Completion | None] = [None] * len(requests)
        runnable: list[int] = []
        budgets: list[int] = []
        for i, ids in enumerate(prompts):
            room = recipe.generation_budget
            if self.max_model_len is not None:
                room = min(room, self.max_model_len - len(ids))
            if room < 1:
                results[i] = Completion(
                    text="",
                    prompt_tokens=len(ids),
                    finish_reason="error",
                    prompt_hash=_hash_ids(ids),
                    error=f"prompt of {len(ids)} tokens leaves no room in max_model_len={self.max_model_len}",
                )
            else:
                runnable.append(i)
                budgets.append(room)
        if runnable:
            outputs = self._generate_with_budget(
                [prompts[i] for i in runnable], budgets, [requests[i] for i in runnable], recipe
            )
            elapsed = time.perf_counter() - start
            for i, (ids, finish, budget_hit) in zip(runnable, outputs):
                results[i] = self._completion(prompts[i], ids, finish, budget_hit, recipe, elapsed)
        return results  # type: ignore[return-value]

    def _params(self, recipe: Recipe, max_tokens: list[int], requests: list[Request], **extra) -> GenParams:
        return GenParams(
            max_tokens=max_tokens,
            seeds=[recipe.seed + r.repeat for r in requests],
            temperature=recipe.temperature,
            top_p=recipe.top_p,
            top_k=recipe.top_k,
            min_p=recipe.min_p,
            min_tokens=recipe.min_tokens,
            stop=recipe.stop,
            **extra,
        )

    def _generate_with_budget(
        self, prompts: list[list[int]], budgets: list[int], requests: list[Request], recipe: Recipe
    ) -> list[tuple[list[int], str, bool]]:
        """Think up to the budget, close the thought if still open, then answer."""
        start_id, end_id = (self._marker_id(m) for m in recipe.reasoning_markers)
        if not (recipe.enable_thinking and recipe.thinking_budget and start_id is not None and end_id is not None):
            outs = self._generate_ids(prompts, self._params(recipe, budgets, requests))
            return [(o.token_ids, o.finish_reason, False) for o in outs]

        # The model spends one extra token opening the thought unless the template already did.
        think_caps = [
            min(recipe.thinking_budget + (0 if self._prompt_opens_thought(p, start_id, end_id) else 1), b)
            for p, b in zip(prompts, budgets)
        ]
        first = self._generate_ids(prompts, self._params(recipe, think_caps, requests, stop_token_ids=(end_id,)))
        results: list[tuple[list[int], str, bool] | None] = [None] * len(prompts)
        again: list[int] = []
        for i, out in enumerate(first):
            ids = list(out.token_ids)
            opened = start_id in ids or self._prompt_opens_thought(prompts[i], start_id, end_id)
            closed = end_id in ids
            if out.finish_reason == "stop" and not closed:
                results[i] = (ids, "stop", False)  # answered (or ended) without a thought
                continue
            budget_hit = opened and not closed
            if budget_hit:
                ids.append(end_id)
            results[i] = (ids, "", budget_hit)
            if len(ids) < budgets[i]:
                again.append(i)
            else:
                results[i] = (ids, "length_in_reasoning" if budget_hit else "length", budget_hit)
        if again:
            second = self._generate_ids(
                [prompts[i] + results[i][0] for i in again],
                self._params(recipe, [budgets[i] - len(results[i][0]) for i in again], [requests[i] for i in again]),
            )
            for i, out in zip(again, second):
                ids, _, budget_hit = results[i]
                results[i] = (ids + list(out.token_ids), out.finish_reason, budget_hit)
        return results  # type: ignore[return-value]

    @staticmethod
    def _prompt_opens_thought(prompt: list[int], start_id: int, end_id: int) -> bool:
        """Some templates open the thought themselves: the prompt ends inside it."""
        if start_id not in prompt:
            return False
        last_start = len(prompt) - 1 - prompt[::-1].index(start_id)
        return end_id not in prompt[last_start:]

    def _completion(
        self, prompt: list[int], ids: list[int], finish: str, budget_hit: bool, recipe: Recipe, elapsed: float
    ) -> Completion:
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
            latency_s=elapsed,
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
        if end_id in ids and self._prompt_opens_thought(prompt, start_id, end_id):
            e = ids.index(end_id)
            return ids[:e], ids[e + 1 :]
        return None, ids


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
