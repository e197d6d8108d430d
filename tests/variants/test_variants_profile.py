"""Router profiling with forward hooks on real tiny models, locally and sharded over Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omk_ray.variants.profile import (
    ProfileError, expert_output, experts_inputs, find_experts_modules, load_prompts, profile_model,
)

PROMPTS = [
    {"class": "math", "prompt": "What is 12 * 7?"},
    {"class": "math", "prompt": "Solve x + 3 = 10."},
    {"class": "code", "prompt": "def add(a, b): return a + b", "response": "It adds two numbers."},
    {"class": "science", "subclass": "chemistry", "prompt": "What is the formula of water?"},
    {"class": "science", "subclass": "physics", "prompt": "What is F = m a?"},
]
FIELDS = ("wnorm", "rnorm", "wsum", "tc", "cc")


def as_array(cd, category, layer):
    return np.array([[e[f] for f in FIELDS] for e in cd["categories"][category][str(layer)]])


@pytest.mark.parametrize("family", ["gemma4", "qwen3"])
def test_hook_recomputes_exactly_what_the_experts_module_returns(family, request):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"tiny_{family}"), dtype=torch.float32)
    modules = find_experts_modules(model)
    assert sorted(modules) == [0, 1]
    checked = []

    def hook(module, args, kwargs, output):
        hidden, index, weights = experts_inputs(args, kwargs)
        total = torch.zeros_like(output)
        for e in index.unique().tolist():
            tok, pos = torch.where(index == e)
            total.index_add_(0, tok, expert_output(module, e, hidden[tok]) * weights[tok, pos, None])
        checked.append(torch.allclose(total, output, atol=1e-6))

    for m in modules.values():
        m.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(torch.randint(9, 100, (2, 16)))
    assert checked == [True, True]


def test_profile_counts_every_routed_token(tiny_qwen3):
    from transformers import AutoTokenizer

    cd = profile_model(str(tiny_qwen3), PROMPTS, batch_size=8)
    meta = cd["metadata"]
    assert meta["num_experts"] == 8 and meta["moe_layers"] == [0, 1] and meta["top_k"] == 2
    assert set(cd["categories"]) == {"math", "code", "science", "science/chemistry", "science/physics"}
    assert meta["prompts_per_category"] == {"code": 1, "math": 2, "science": 2, "science/chemistry": 1, "science/physics": 1}
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)

    def length(p):
        text = tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"]) + len(p.get("response", ""))

    for category, members in (("math", PROMPTS[:2]), ("code", PROMPTS[2:3]), ("science", PROMPTS[3:])):
        for layer in (0, 1):
            stats = as_array(cd, category, layer)
            assert stats[:, 3].sum() == 2 * sum(length(p) for p in members)  # tc: tokens x top-2
            assert stats[:, 4].max() <= len(members) and (stats[:, 4] > 0).sum() == (stats[:, 3] > 0).sum()
            fired = stats[:, 3] > 0
            assert np.all(stats[fired, 2] / stats[fired, 3] <= 1 + 1e-6)  # normalized top-k weights
            assert np.all(stats[:, 0] <= stats[:, 1] + 1e-6)  # |w| <= 1, so wnorm <= rnorm
    science = as_array(cd, "science", 0)
    parts = as_array(cd, "science/chemistry", 0) + as_array(cd, "science/physics", 0)
    assert np.allclose(science, parts)


def test_batches_and_generation(tiny_gemma4):
    one = profile_model(str(tiny_gemma4), PROMPTS, generate_tokens=4, batch_size=1)
    many = profile_model(str(tiny_gemma4), PROMPTS, generate_tokens=4, batch_size=8)
    plain = profile_model(str(tiny_gemma4), PROMPTS, generate_tokens=0, batch_size=8)
    for category in one["categories"]:
        for layer in (0, 1):
            assert np.allclose(as_array(one, category, layer), as_array(many, category, layer), rtol=1e-5, atol=1e-6)
    generated = as_array(many, "math", 0)[:, 3].sum() - as_array(plain, "math", 0)[:, 3].sum()
    assert 0 < generated <= 2 * 2 * 4  # two prompts, up to 4 tokens each, top-2
    # the prompt with its own response is teacher-forced, not continued
    assert np.array_equal(as_array(many, "code", 1)[:, 3], as_array(plain, "code", 1)[:, 3])


@pytest.mark.slow
def test_ray_sharded_profile_adds_up_to_the_local_one(tiny_qwen3):
    import ray

    local = profile_model(str(tiny_qwen3), PROMPTS)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sharded = profile_model(str(tiny_qwen3), PROMPTS, num_workers=2)
    finally:
        ray.shutdown()
    assert sharded["metadata"]["workers"] == 2 and sharded["metadata"]["prompts"] == len(PROMPTS)
    assert sharded["metadata"]["prompts_per_category"] == local["metadata"]["prompts_per_category"]
    for category in local["categories"]:
        for layer in (0, 1):
            a, b = as_array(local, category, layer), as_array(sharded, category, layer)
            assert np.array_equal(a[:, 3:], b[:, 3:]) and np.allclose(a, b, rtol=1e-5)


def test_default_prompt_set_has_every_class_and_the_science_subdomains():
    prompts = load_prompts()
    assert {p["class"] for p in prompts} == {"math", "logic", "code", "science", "creative"}
    assert {p.get("subclass") for p in prompts if p["class"] == "science"} == {"chemistry", "physics", "biology"}
    assert len({p["id"] for p in prompts}) == len(prompts)


@pytest.mark.parametrize("lines, message", [
    (['{"class": "math", "prompt": "1+1"}', "{oops"], ":2: not valid JSON"),
    (['{"prompt": "1+1"}'], "prompt 1: `class` must be a non-empty string"),
    (['{"class": "a/b", "prompt": "1+1"}'], "may not contain '/'"),
    ([], "no prompts"),
])
def test_bad_prompt_files_name_the_line(tmp_path, lines, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(ProfileError, match=message):
        load_prompts(path)


def test_profile_refuses_a_dense_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from omk_ray.toy.tiny import build_tokenizer

    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=1, num_key_value_heads=1)).save_pretrained(tmp_path)
    build_tokenizer(tmp_path)
    with pytest.raises(ProfileError, match="no fused MoE experts modules"):
        profile_model(str(tmp_path), PROMPTS[:1])
    json.loads((tmp_path / "config.json").read_text())  # untouched
