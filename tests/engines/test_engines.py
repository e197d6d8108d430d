"""Both real engines on a tiny random Gemma 4 MoE: same greedy tokens, same thinking-budget behaviour."""

from __future__ import annotations

import pytest

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines import Request, engine_class

pytestmark = [pytest.mark.vllm, pytest.mark.slow]  # every test here shares one vLLM engine (~25 s to start)
PROMPTS = ["copy 1234", "reverse abc", "what is 2+2?", "sort: d c b a", "hello"]
# A template that opens the thought itself, as Gemma 4's does when thinking is on.
THINKING_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}<turn|>\n{% endfor %}"
    "<|turn>model\n{% if enable_thinking %}<|channel>{% endif %}"
)


def make_engine(kind: str, model) -> object:
    extra = {"enforce_eager": True} if kind == "vllm" else {}
    variant = VariantSpec(name=f"tiny-{kind}", model=str(model), engine=kind,
                          engine_args={"dtype": "float32", "max_model_len": 256, "extra": extra})
    return engine_class(kind)(variant, str(model))


@pytest.fixture(scope="module")
def engines(tiny_gemma4):
    built = {kind: make_engine(kind, tiny_gemma4) for kind in ("transformers", "vllm")}
    yield built
    for engine in built.values():
        engine.close()


def requests() -> list[Request]:
    return [Request(id=str(i), messages=[{"role": "user", "content": p}]) for i, p in enumerate(PROMPTS)]


def test_greedy_tokens_equal_across_engines(engines):
    recipe = Recipe(max_gen_toks=24, temperature=0)
    hf = engines["transformers"].generate_batch(requests(), recipe)
    vl = engines["vllm"].generate_batch(requests(), recipe)
    assert [c.token_ids for c in hf] == [c.token_ids for c in vl]
    assert [c.text for c in hf] == [c.text for c in vl]
    for c in hf + vl:
        assert c.prompt_tokens > 10 and 1 <= c.completion_tokens <= 24
        assert c.finish_reason in ("stop", "length")
        assert c.prompt_hash and c.error is None
    assert [c.prompt_hash for c in hf] == [c.prompt_hash for c in vl]


@pytest.mark.parametrize("kind", ["transformers", "vllm"])
def test_thinking_budget_caps_reasoning(engines, kind):
    engine = engines[kind]
    original = engine.tokenizer.chat_template
    engine.tokenizer.chat_template = THINKING_TEMPLATE
    try:
        budget = 5
        recipe = Recipe(max_gen_toks=20, enable_thinking=True, thinking_budget=budget)
        out = engine.generate_batch(requests(), recipe)
    finally:
        engine.tokenizer.chat_template = original
    for c in out:
        assert c.reasoning is not None
        assert c.reasoning_tokens <= budget
        # the thought was cut at the budget or closed by the model; either way an answer phase followed
        assert c.completion_tokens <= recipe.generation_budget
    assert any(c.thinking_budget_hit for c in out)  # a random model does not close its thoughts by itself


def test_thinking_budget_same_tokens_on_both_engines(engines):
    recipe = Recipe(max_gen_toks=16, enable_thinking=True, thinking_budget=4)
    results = {}
    for kind, engine in engines.items():
        original = engine.tokenizer.chat_template
        engine.tokenizer.chat_template = THINKING_TEMPLATE
        try:
            results[kind] = [c.token_ids for c in engine.generate_batch(requests(), recipe)]
        finally:
            engine.tokenizer.chat_template = original
    assert results["transformers"] == results["vllm"]


def test_prompt_too_long_is_an_error_row_not_a_crash(engines):
    recipe = Recipe(max_gen_toks=8)
    long = Request(id="long", messages=[{"role": "user", "content": "x" * 400}])
    out = engines["transformers"].generate_batch([long, *requests()[:1]], recipe)
    assert out[0].finish_reason == "error" and "max_model_len" in out[0].error
    assert out[1].error is None and out[1].completion_tokens >= 1


def test_stop_strings_cut_the_answer(engines):
    free = engines["transformers"].generate_batch(requests()[:3], Recipe(max_gen_toks=24))
    # stop at the second character each answer produced: the text must end before it
    stops = tuple({c.text[1] for c in free if len(c.text) > 2})
    if not stops:
        pytest.skip("random model produced no text long enough to place a stop string")
    for kind in ("transformers", "vllm"):
        cut = engines[kind].generate_batch(requests()[:3], Recipe(max_gen_toks=24, stop=stops))
        for c in cut:
            assert not any(s in c.text for s in stops)
