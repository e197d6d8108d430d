"""Scoring through an OpenAI-compatible `/v1/completions`: the log-probabilities of the prompt's own
tokens, asked with `echo: true` and `logprobs: 1` (as lm-eval's `local-completions` backend does).

The prompt is sent as token ids (tokenized here as lm-eval's `hf` backend does, engines/scoring.py),
with `max_tokens: 1` and temperature 0. The answer's `logprobs` hold, per echoed prompt token,
`token_logprobs` (None for the first) and `top_logprobs` (the top-1 entry, and the token itself);
then the one generated token. A continuation's log-likelihood is the sum of `token_logprobs` over
its positions; it is greedy where at each of them the top-1 entry of `top_logprobs` is the token
itself. vLLM's server is asked to name tokens by id (`return_tokens_as_token_ids`: `token_id:42`),
so the comparison is by id, and the echoed ids are checked against those sent. Another server
names tokens by their text: the comparison is then by text, which cannot tell apart two tokens with
the same text (byte-fallback pieces, say); a top-1 tie counts as greedy for the first entry listed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TOKEN_ID = "token_id:"  # vLLM's name of a token under `return_tokens_as_token_ids`
LOGPROB_SLACK = 1e-4  # a log-probability above this (or NaN, inf, a string) is no log-probability: refused
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class NoPromptLogprobs(RuntimeError):
    """The server answered without log-probabilities of the prompt's tokens: it cannot score text."""


def no_prompt_logprobs(base_url: str, what: str) -> NoPromptLogprobs:
    return NoPromptLogprobs(
        f"{base_url} answered a completions request with echo=true and logprobs without {what}, which "
        "scoring needs (llama.cpp's server, for one, gives none for the prompt): score loglikelihood tasks "
        "on a server that does (e.g. vLLM's) or on the vllm or transformers engine")


def scoring_payload(model: str, prompt: list[int], by_id: bool, body: dict[str, Any]) -> dict[str, Any]:
    """The completions request that echoes `prompt` with its log-probabilities (`body`: the variant's extra fields)."""
    payload = {**body, "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
               "echo": True, "logprobs": 1}
    if by_id:
        payload["return_tokens_as_token_ids"] = True
    return payload


def continuation_score(data: dict, prompt: list[int], continuation: list[int], base_url: str) -> tuple[float, bool]:
    """(summed log-probability, every token the top-1) of the prompt's last `len(continuation)` tokens."""
    choices = data.get("choices") or [{}]
    logprobs = choices[0].get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    if len(values) < len(prompt):  # nothing echoed, or only the generated token's
        raise no_prompt_logprobs(base_url, "log-probabilities of the prompt's tokens")
    tokens = logprobs.get("tokens") or []
    tops = logprobs.get("top_logprobs") or []
    total, greedy = 0.0, True
    if not any(tops[1:len(prompt)]):
        raise no_prompt_logprobs(base_url, "top log-probabilities of the prompt's tokens (is_greedy)")
    for position, token in zip(range(len(prompt) - len(continuation), len(prompt)), continuation):
        value = values[position]
        top = tops[position] if position < len(tops) else None
        if value is None or not top:
            raise RuntimeError(f"{base_url} gave no log-probabilities of prompt token {position} of {len(prompt)}")
        echoed = tokens[position] if position < len(tokens) else None
        if isinstance(echoed, str) and echoed.startswith(TOKEN_ID) and echoed != f"{TOKEN_ID}{token}":
            raise RuntimeError(f"{base_url} echoed token {echoed} at position {position} where token id {token} "
                               "was sent: the server did not read the prompt's token ids as given")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -math.inf < value <= LOGPROB_SLACK:
            raise RuntimeError(f"{base_url} gave {value!r} as the log-probability of prompt token {position}: "
                               "a log-probability is a finite number <= 0")
        best = max(top, key=top.get)
        greedy = greedy and (best == f"{TOKEN_ID}{token}" if best.startswith(TOKEN_ID) else best == echoed)
        total += float(value)
    return total, greedy


def tokenizer_source(variant, model_path: str | None = None) -> str:
    """Where the served model's tokenizer is read: `engine_args.extra.tokenizer`, else the model path
    (the variant's `model`)."""
    return variant.engine_args.extra.get("tokenizer") or model_path or variant.model_ref


def tokenizer_problems(source: str) -> list[str]:
    """What is wrong with a tokenizer source, as far as is known without loading it (`plan` asks)."""
    fix = "set engine_args.extra.tokenizer to the served model's tokenizer (a folder or hub id)"
    if not source:
        return [f"no tokenizer to score text with: {fix}"]
    path = Path(source).expanduser()
    if source.endswith(".gguf") or path.is_file():
        return [f"the openai engine scores text with the served model's tokenizer, and {source} is a file: {fix}"]
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        return [f"the openai engine scores text with the served model's tokenizer, and {source} holds none "
                f"({', '.join(TOKENIZER_FILES)}): {fix}"]
    if not path.exists() and source.startswith(("/", ".", "~")):
        return [f"the openai engine scores text with the served model's tokenizer, and {source} does not exist: {fix}"]
    return []
