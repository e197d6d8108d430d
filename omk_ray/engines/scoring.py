"""Scoring requests: text in, log-likelihoods out, tokenized exactly as lm-eval's `hf` backend does.

A `Scoring` request asks for one of lm-eval's two loglikelihood request types:

- `pairs`: `loglikelihood` — for each (context, continuation), the summed log-probability of the
  continuation's tokens given the context, and whether every one of them is the greedy (argmax)
  token. A multiple-choice question is one request whose pairs are its choices (so an engine sees
  every choice of a question together).
- `rolling`: `loglikelihood_rolling` — a document's summed log-likelihood, scored in windows.

Tokenization (lm-eval 0.4 `TemplateLM.loglikelihood`, `_encode_pair`, `HFLM.tok_encode`,
`loglikelihood_rolling`; the same rules here for every engine that tokenizes locally):

- `encode(text)`: the tokenizer's own `encode` with its default special tokens (a BOS where the
  tokenizer adds one), except that a text already starting with the BOS text gets none added.
- A pair with a context: trailing whitespace of the context moves to the front of the
  continuation; the context is encoded alone, the context + continuation together, and the
  continuation's tokens are those of the whole beyond the context's length (so a token that
  merges across the boundary belongs to the continuation, as in lm-eval).
- A pair with an empty context: the continuation is encoded without special tokens and is
  conditioned on the prefix token (BOS, else EOS), unless it already starts with that token.
- Too long: the input is left-truncated to the last `max_length + 1` tokens (lm-eval's rule).
- Rolling: the document is encoded (`encode`), the first window predicts its first `max_length`
  tokens after the prefix token, each further window predicts the next `max_length` tokens with
  as much preceding text as fits (`lm_eval.utils.get_rolling_token_windows` with context_len 1,
  then `make_disjoint_window`), and the windows' log-likelihoods are summed.

`max_length` is the engine's `max_model_len` where set, else the model config's
`max_position_embeddings`-like limit as lm-eval resolves it (vLLM: its `max_model_len` - 2, since
vLLM reads the last continuation token too, to give its log-probability, and a prompt there must
leave room for one generated token). No chat template is applied: lm-eval's
loglikelihood tasks score plain text (as `lm_eval --model hf` does without `--apply_chat_template`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

DEFAULT_MAX_LENGTH = 2048  # lm-eval's, when the model config names no length
SCORED = "scored"  # the finish_reason of a scoring request's row: nothing was generated (no blank answer)


@dataclass(frozen=True)
class Scoring:
    """What a scoring request asks: `pairs` (context, continuation) or one `rolling` document."""

    pairs: tuple[tuple[str, str], ...] = ()
    rolling: str | None = None

    def __post_init__(self) -> None:
        if (self.rolling is None) == (not self.pairs):
            raise ValueError("a scoring request holds either (context, continuation) pairs or one rolling document")


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (context_len 1): (context tokens, tokens to predict) per window."""
    windows = []
    if not tokens:
        return windows
    first = min(max_length, len(tokens))
    windows.append(([prefix_token] + tokens[: first - 1], tokens[:first]))
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_length)
        end = predicted + n
        inputs = tokens[max(0, end - max_length - 1): end - 1]
        windows.append((inputs, tokens[end - n: end]))
        predicted = end
    # make_disjoint_window: the context is what precedes the first predicted token
    return [(a[: len(a) - (len(b) - 1)], b) for a, b in windows]


class TokenScorer:
    """Tokenization of scoring requests for engines with a local tokenizer (`self.tokenizer`,
    `self.max_model_len`); the engine implements `_score_ids` for one (context, continuation) in tokens."""

    tokenizer = None
    max_model_len: int | None = None

    @property
    def score_max_length(self) -> int:
        if self.max_model_len:
            return int(self.max_model_len)
        return DEFAULT_MAX_LENGTH

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @functools.cached_property
    def prefix_text(self) -> str:
        return self.tokenizer.decode(self.prefix_token_id)

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and text.startswith(self.prefix_text):
            kwargs["add_special_tokens"] = False
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str,
                    contexts: dict[str, list[int]] | None = None) -> tuple[list[int], list[int]]:
        """One pair's (context, continuation) tokens; `contexts` keeps the contexts encoded so far (a
        question's choices share theirs: encoded once, the same tokens)."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            prefix = self.prefix_token_id
            return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation, context = context[-spaces:] + continuation, context[:-spaces]
        whole = self.encode(context + continuation)
        contexts = {} if contexts is None else contexts
        if context not in contexts:
            contexts[context] = self.encode(context)
        ctx = contexts[context]
        return ctx, whole[len(ctx):]

    def token_pairs(self, scoring: Scoring) -> list[tuple[list[int], list[int]]]:
        """The (context, continuation) token pairs to score: one per pair, or the rolling windows."""
        if scoring.rolling is not None:
            return rolling_windows(self.encode(scoring.rolling), self.prefix_token_id, self.score_max_length)
        contexts: dict[str, list[int]] = {}
        return [self.encode_pair(c, x, contexts) for c, x in scoring.pairs]

    def model_input(self, context: list[int], continuation: list[int]) -> list[int]:
        """What the model reads: lm-eval's `(context + continuation)[-(max_length + 1):][:-1]`."""
        return (context + continuation)[-(self.score_max_length + 1):][:-1]

    async def _score_ids(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        raise NotImplementedError(f"{type(self).__name__} cannot score text")


def combine(scoring: Scoring, results: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """Per pair as they are; a rolling document's windows summed into one (log-likelihood, all greedy)."""
    if scoring.rolling is None:
        return results
    return [(sum(r[0] for r in results), all(r[1] for r in results))]
