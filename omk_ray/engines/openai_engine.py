"""OpenAI-compatible endpoints: llama.cpp's llama-server, `vllm serve`, any gateway that speaks
`/v1/chat/completions`.

The server renders the chat template and tokenizes; this engine sends the recipe's sampler
settings, `chat_template_kwargs: {enable_thinking}` and a token cap of the recipe's generation
budget, and records the server's usage counts, finish_reason and `reasoning_content` (or
`reasoning`; with no reasoning parser on the server, the recipe's markers are split here).

`engine_args.extra`:

    base_url     required, e.g. http://gpu-node-3:8080/v1
    model        served model name (default: the variant's `model`, else the server's first model)
    api_key_env  name of the environment variable that holds the API key (never the key itself)
    concurrency  requests in flight from one engine (default 8); the farm keeps ~1.1x as many queued
    timeout      seconds one attempt may take (default 600)
    retries      further attempts after a 408/429/5xx, a timeout or a connection error (default 6)
    backoff      first retry delay in seconds, doubled per retry up to `backoff_max` (default 1, 30)
    body         JSON fields merged into every request (server-specific settings)
    tokenizer    the served model's tokenizer, a folder or hub id, for scoring (default: the variant's `model`)

A request that still fails after its retries, or gets a 4xx, is never dropped: it comes back
as a Completion with `error` set and finish_reason "error", and becomes a row saying so. Error
texts are scrubbed of the API key and anything shaped like a key (`omk_ray.redact`) before they
reach a row or a log.
`prompt_hash` hashes the request's messages and template arguments (the server's tokens are
not seen here).

Scoring (lm-eval's loglikelihood tasks, engines/scoring.py): the text is tokenized here with the
served model's tokenizer (`tokenizer`, else the variant's `model`, loaded at the first scoring
request) exactly as the vllm and transformers engines do, and each (context, continuation) pair or
rolling window is one `/completions` request of those token ids with `echo: true` and `logprobs: 1`
(engines/openai_scoring.py). The window is `max_model_len` - 2 tokens as on the vllm engine
(`engine_args.max_model_len`, else the `max_model_len` the server lists in /models, else lm-eval's
2048). A server that answers without the prompt's log-probabilities (llama.cpp's) cannot score: every
scoring request then comes back as an error row saying so, without asking the server again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines.base import Completion, Engine, Request, _hash_ids
from omk_ray.engines.openai_scoring import (NoPromptLogprobs, continuation_score, scoring_payload, tokenizer_problems,
                                            tokenizer_source)
from omk_ray.engines.scoring import DEFAULT_MAX_LENGTH, SCORED, TokenScorer, combine
from omk_ray.redact import scrub

log = logging.getLogger("omk_ray.engines.openai")

RETRY_STATUS = {408, 409, 425, 429}


class RequestFailed(RuntimeError):
    """A request that cannot succeed (4xx) or failed on every attempt; the message says why."""


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="e.g. http://gpu-node-3:8080/v1")
    model: str | None = None
    api_key_env: str | None = None
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(600, gt=0)
    retries: int = Field(6, ge=0)
    backoff: float = Field(1.0, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    body: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str | None = Field(None, description="the served model's tokenizer for scoring (default: the variant's model)")


class OpenAIEngine(TokenScorer, Engine):
    kind = "openai"
    uses_accelerator = False  # the server holds the model
    holds_weights = False
    Options = OpenAIOptions
    scores = True  # through /completions with echo + logprobs, where the server gives them (see above)

    def __init__(self, variant: VariantSpec, model_path: str):
        super().__init__(variant, model_path)
        options = self.options
        self.base_url = options.base_url.rstrip("/")
        self.concurrency = options.concurrency
        self.retries = options.retries
        self.backoff = options.backoff
        self.backoff_max = options.backoff_max
        self.body = dict(options.body)
        self.headers = {}
        self._secrets: tuple[str, ...] = ()  # scrubbed from every error text (`redact.scrub`)
        if options.api_key_env:
            if not os.environ.get(options.api_key_env):
                raise ValueError(f"variant {variant.name!r}: environment variable {options.api_key_env} "
                                 "(api_key_env) is not set")
            self.headers["Authorization"] = f"Bearer {os.environ[options.api_key_env]}"
            self._secrets = (os.environ[options.api_key_env],)
        self.timeout = httpx.Timeout(options.timeout, connect=10.0)
        self._client: httpx.AsyncClient | None = None  # made on the loop that uses it
        self._slots: asyncio.Semaphore | None = None
        self._score_error: str | None = None  # set: why this engine cannot score (said in every scoring row)
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout) as client:
            named = options.model or variant.model
            served = self._served_models(client, required=not named) if not (
                named and variant.engine_args.max_model_len) else []
            self.model = named or served[0]["id"]
            self.max_model_len = variant.engine_args.max_model_len or next(
                (int(m["max_model_len"]) for m in served if m.get("id") == self.model and m.get("max_model_len")), None)
            self.server_family, server = self._server_version(client)
            self._version = f"openai {self.model} @ {server}"

    @property
    def capacity(self) -> int:
        return self.concurrency

    @property
    def version(self) -> str:
        return self._version

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:  # no loop running here: the client's sockets close with the process
                pass

    # -- requests ----------------------------------------------------------------------------

    async def generate(self, request: Request, recipe: Recipe) -> Completion:
        payload = self.payload(request, recipe)
        prompt_hash = hashlib.sha256(
            json.dumps([payload.get("messages"), payload.get("prompt"), payload.get("chat_template_kwargs")],
                       sort_keys=True).encode()
        ).hexdigest()[:16]
        start = time.perf_counter()
        try:
            data = await self._post("/chat/completions" if recipe.chat_template else "/completions", payload)
            completion = parse_response(data, recipe)
        except Exception as err:  # never a silent drop: whatever went wrong becomes the row's error
            return Completion(text="", finish_reason="error", prompt_hash=prompt_hash,
                              latency_s=time.perf_counter() - start,
                              error=scrub(f"{type(err).__name__}: {err}", self._secrets))
        completion.prompt_hash = prompt_hash
        completion.latency_s = time.perf_counter() - start
        return completion

    # -- scoring (engines/openai_scoring.py) ----------------------------------------------------

    @classmethod
    def score_problems(cls, variant: VariantSpec) -> list[str]:
        return tokenizer_problems(tokenizer_source(variant))

    @property
    def score_max_length(self) -> int:
        # as on the vllm engine: the prompt holds the last scored token and leaves room for the one generated
        return self.max_model_len - 2 if self.max_model_len else DEFAULT_MAX_LENGTH

    async def score(self, request: Request, recipe: Recipe) -> Completion:
        """Every pair (or rolling window) one echoed completions request, all in flight at once."""
        if not self.scores:  # a subclass whose server cannot score
            return await super().score(request, recipe)
        start = time.perf_counter()
        error = self._score_error or self._load_tokenizer()
        if error:
            return Completion(text="", finish_reason="error", error=error)
        pairs = self.token_pairs(request.scoring)
        tokens = sum(len(self.model_input(c, x)) for c, x in pairs)
        digest = _hash_ids([t for c, x in pairs for t in (*c, -1, *x, -2)])  # as the token engines hash it
        empty = [n for n, (_, x) in enumerate(pairs) if not x]
        if empty:
            return Completion(text="", prompt_tokens=tokens, finish_reason="error", prompt_hash=digest,
                              error=f"pair {empty[0]} has an empty continuation once tokenized")
        results = await asyncio.gather(*(self._score_ids(c, x) for c, x in pairs), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            if isinstance(failed, NoPromptLogprobs):  # the server's nature: no use asking it again
                self._score_error = str(failed)
            text = str(failed) if isinstance(failed, NoPromptLogprobs) else f"{type(failed).__name__}: {failed}"
            return Completion(text="", prompt_tokens=tokens, finish_reason="error", prompt_hash=digest,
                              latency_s=time.perf_counter() - start, error=scrub(text, self._secrets))
        return Completion(text="", prompt_tokens=tokens, prompt_hash=digest, latency_s=time.perf_counter() - start,
                          finish_reason=SCORED, loglikelihoods=combine(request.scoring, list(results)))

    async def _score_ids(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        if len(continuation) > self.score_max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens is longer than the scoring window "
                             f"({self.score_max_length} tokens: max_model_len - 2)")
        prompt = (context + continuation)[-(self.score_max_length + 1):]
        data = await self._post("/completions", scoring_payload(self.model, prompt, self.server_family == "vllm", self.body))
        return continuation_score(data, prompt, continuation, self.base_url)

    def _load_tokenizer(self) -> str | None:
        """Load the served model's tokenizer once; the reason it cannot be had, else None."""
        if self.tokenizer is not None:
            return None
        source = tokenizer_source(self.variant, self.model_path)
        problems = tokenizer_problems(source)
        if not problems:
            try:
                from transformers import AutoTokenizer

                revision = self.variant.revision if source == self.model_path else None
                self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            except Exception as err:  # noqa: BLE001 - whatever it is, the rows say it
                detail = (str(err).strip().splitlines() or [""])[0][:300]
                problems = [f"the openai engine scores text with the served model's tokenizer and could not load "
                            f"one from {source!r} ({type(err).__name__}: {detail}); set engine_args.extra.tokenizer "
                            "to its folder or hub id"]
        if problems:
            self._score_error = f"variant {self.variant.name!r}: {problems[0]}"
        return self._score_error

    # -- generation requests ---------------------------------------------------------------

    def payload(self, request: Request, recipe: Recipe) -> dict[str, Any]:
        messages = list(request.messages)
        if recipe.system_prompt:
            messages = [{"role": "system", "content": recipe.system_prompt}, *messages]
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": recipe.generation_budget,
            "temperature": recipe.temperature,
            "top_p": recipe.top_p,
            "seed": recipe.seed + request.repeat,
        }
        if recipe.chat_template:
            body["messages"] = messages
            body["chat_template_kwargs"] = {"enable_thinking": recipe.enable_thinking}
        else:
            body["prompt"] = "\n\n".join(m["content"] for m in messages)
        if recipe.top_k:
            body["top_k"] = recipe.top_k
        if recipe.min_p:
            body["min_p"] = recipe.min_p
        if recipe.min_tokens:
            body["min_tokens"] = recipe.min_tokens
        if recipe.stop:
            body["stop"] = list(recipe.stop)
        body.update(self.body)
        return body

    async def _post(self, path: str, payload: dict) -> dict:
        if self._client is None:
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                             limits=limits)
            self._slots = asyncio.Semaphore(self.concurrency)
        async with self._slots:
            return await self._with_retries(lambda: self._client.post(path, json=payload), f"POST {path}")

    async def _with_retries(self, send, what: str) -> dict:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            wait = None
            try:
                response = await send()
            except (httpx.TimeoutException, httpx.TransportError) as err:
                error = scrub(f"{type(err).__name__}: {err or 'no detail'}", self._secrets)
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except json.JSONDecodeError:
                        error = scrub(f"HTTP 200 with a body that is not JSON: {response.text[:200]!r}", self._secrets)
                else:
                    # a body may echo the request's key
                    error = scrub(f"HTTP {response.status_code}: {response.text[:500]}", self._secrets)
                    if response.status_code < 500 and response.status_code not in RETRY_STATUS:
                        raise RequestFailed(error)
                    wait = _retry_after(response)
            if attempt == self.retries:
                raise RequestFailed(f"{what} failed {attempt + 1} times; last: {error}")
            pause = wait if wait is not None else min(delay, self.backoff_max) * random.uniform(0.8, 1.2)
            log.warning("%s %s: %s; retry %d/%d in %.1f s",
                        self.base_url, what, error, attempt + 1, self.retries, pause)
            await asyncio.sleep(pause)
            delay *= 2
        raise AssertionError("unreachable")

    # -- server facts (asked once, when the engine starts) -----------------------------------

    def _served_models(self, client: httpx.Client, required: bool) -> list[dict]:
        """/models' entries (vLLM lists each one's `max_model_len`); `required`: the served model's name
        is needed from it, so a failure is an error, else an empty list."""
        try:
            response = client.get("/models", timeout=None if required else 10.0)
            response.raise_for_status()
            models = [m for m in response.json().get("data", []) if isinstance(m, dict) and m.get("id")]
        except (httpx.HTTPError, ValueError, AttributeError) as err:
            if required:
                raise RuntimeError(f"{self.base_url}/models: {type(err).__name__}: {err}") from None
            return []
        if required and not models:
            raise RuntimeError(f"{self.base_url}/models lists no model; set engine_args.extra.model")
        return models

    def _server_version(self, client: httpx.Client) -> tuple[str | None, str]:
        """(server family, what it says it runs): vLLM's /version, llama-server's /props build_info; best effort."""
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        for path, key, label in (("/version", "version", "vllm"), ("/props", "build_info", "llama.cpp")):
            try:
                response = client.get(root + path, timeout=5.0)
                value = response.json().get(key) if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                value = None
            if value:
                return label, f"{label} {value}"
        return None, self.base_url


def parse_response(data: dict, recipe: Recipe) -> Completion:
    """An OpenAI chat (or text) completion response -> a Completion."""
    choice = data["choices"][0]
    message = choice.get("message")
    if message is not None:
        text = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
    else:
        text, reasoning = choice.get("text") or "", None
    if reasoning is None:
        reasoning, text = split_markers(text, recipe.reasoning_markers)
    finish = choice.get("finish_reason") or "stop"
    if finish == "length" and reasoning is not None and not text.strip():
        finish = "length_in_reasoning"
    usage = data.get("usage") or {}
    details = usage.get("completion_tokens_details") or {}
    return Completion(
        text=text,
        reasoning=reasoning,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        reasoning_tokens=int(details.get("reasoning_tokens") or 0),
        finish_reason=finish,
    )


def split_markers(text: str, markers: tuple[str, str]) -> tuple[str | None, str]:
    """(reasoning, answer) of a text whose thought the server left between the markers."""
    start, end = markers
    if not start or start not in text:
        return None, text
    before, _, rest = text.partition(start)
    thought, closed, after = rest.partition(end)
    return thought, (before + after) if closed else before


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(float(value), 300.0) if value else None
    except ValueError:
        return None
