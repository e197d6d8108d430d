"""Scoring requests tokenized as lm-eval does (engines/scoring.py), and refused where an engine cannot score."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from helpers.lmeval_scoring import TOY
from omk_ray.engines.scoring import Scoring, TokenScorer, combine, rolling_windows


@pytest.mark.parametrize("n", [0, 1, 5, 63, 64, 65, 128, 129, 300])
@pytest.mark.parametrize("max_length", [1, 8, 64])
def test_rolling_windows_are_lmevals(n, max_length):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(10, 10 + n))
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 2, max_length, 1)]
    ours = rolling_windows(tokens, 2, max_length)
    assert ours == theirs
    assert [t for _, cont in ours for t in cont] == tokens  # every token predicted once


def scorer(max_length: int = 64) -> TokenScorer:
    s = TokenScorer()
    s.tokenizer = AutoTokenizer.from_pretrained(TOY)
    s.max_model_len = max_length
    return s


def test_pairs_split_at_lmevals_boundary():
    s = scorer()
    enc = s.tokenizer.encode
    ctx, cont = s.encode_pair("add 1 2 ", "3")  # the context's trailing space moves to the continuation
    assert (ctx, cont) == (enc("add 1 2"), enc(" 3"))
    assert s.encode_pair("", "ab") == ([s.tokenizer.bos_token_id], enc("ab", add_special_tokens=False))
    assert s.encode_pair("", "<bos>ab") == ([s.tokenizer.bos_token_id], enc("ab"))  # already starts with it
    assert s.model_input(list(range(100)), [100, 101]) == list(range(37, 101))  # the last 65, less the last
    windows = s.token_pairs(Scoring(rolling="x" * 130))
    assert [len(c) for _, c in windows] == [64, 64, 2]
    assert combine(Scoring(rolling="x"), [(-1.0, True), (-2.5, False)]) == [(-3.5, False)]


def test_a_scoring_request_is_pairs_or_one_document():
    with pytest.raises(ValueError, match="either"):
        Scoring()
    with pytest.raises(ValueError, match="either"):
        Scoring(pairs=(("a", "b"),), rolling="c")


def test_plan_refuses_a_loglikelihood_bench_on_an_engine_that_cannot_score(tmp_path):
    from helpers import write_grid
    from omk_ray.config import load_grid
    from omk_ray.farm.planner import PlanError, read_benches

    no_tokenizer = tmp_path / "served"
    no_tokenizer.mkdir()
    api = {"base_url": "http://localhost:1/v1"}
    grid = load_grid(write_grid(tmp_path / "grid.yaml",
                                [{"name": "none", "model": "m", "engine": "echo"},
                                 {"name": "api", "model": str(TOY), "engine": "openai", "engine_args": {"extra": api}},
                                 {"name": "named", "model": "served-name", "engine": "openai",
                                  "engine_args": {"extra": {**api, "tokenizer": str(TOY)}}},
                                 {"name": "bare", "model": str(no_tokenizer), "engine": "openai",
                                  "engine_args": {"extra": api}},
                                 {"name": "hf", "model": str(TOY), "engine": "transformers"}],
                                [{"name": "mc", "kind": "lmeval", "options": {"task": "toy_mc"}}]))
    with pytest.raises(PlanError) as err:
        read_benches(grid)
    text = str(err.value)
    assert "variant 'none' on bench 'mc': the bench scores text (a loglikelihood task) and engine 'echo' cannot" in text
    # openai scores (completions with echo + logprobs) with the served model's tokenizer, read locally
    assert (f"variant 'bare' (to score bench 'mc'): the openai engine scores text with the served model's tokenizer, "
            f"and {no_tokenizer} holds none") in text
    assert "'api'" not in text and "'named'" not in text and "'hf'" not in text
    from omk_ray.engines.llamacpp_engine import LlamaCppEngine

    assert not LlamaCppEngine.scores and "returns log-probabilities of generated tokens only" in LlamaCppEngine.score_refusal
