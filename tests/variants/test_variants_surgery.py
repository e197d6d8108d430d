"""Expert surgery: a pruned model equals the original with the dropped experts' router logits at
-inf (Gemma 4 fused experts, Qwen3-MoE and Mixtral per-expert tensors); bad input writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from omk_ray.variants.surgery import PROVENANCE_NAME, SurgeryError, prune_checkpoint

DROP = {"0": [1, 4, 6], "1": [0, 3, 7]}
TOKENS = torch.randint(9, 100, (2, 48), generator=torch.Generator().manual_seed(0))


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def logits(model):
    with torch.no_grad():
        return model(TOKENS).logits


def mask_gemma4_router(model, drop_map):
    """Gemma 4: the router's projection output is the logits; set the dropped ones to -inf."""
    for index, layer in enumerate(model.model.layers):
        dropped = drop_map[str(index)]

        def hook(module, args, out, dropped=dropped):
            out = out.clone()
            out[..., dropped] = float("-inf")
            return out

        layer.router.proj.register_forward_hook(hook)


def mask_topk_router(model, drop_map):
    """Qwen3-MoE / Mixtral: softmax over all experts with the dropped logits at -inf, top-k, renormalize."""
    for index, layer in enumerate(model.model.layers):
        router = layer.mlp.gate
        dropped = drop_map[str(index)]

        def forward(hidden_states, router=router, dropped=dropped):
            hidden_states = hidden_states.reshape(-1, router.hidden_dim)
            router_logits = F.linear(hidden_states, router.weight)
            router_logits[:, dropped] = float("-inf")
            probs = torch.softmax(router_logits.float(), dim=-1)
            top_value, top_index = torch.topk(probs, router.top_k, dim=-1)
            if getattr(router, "norm_topk_prob", True):
                top_value /= top_value.sum(dim=-1, keepdim=True)
            return router_logits, top_value.to(router_logits.dtype), top_index

        router.forward = forward


@pytest.mark.parametrize("family", ["gemma4", "qwen3", "mixtral"])
def test_pruned_model_equals_original_with_dropped_router_logits_at_minus_inf(family, request, tmp_path):
    base = request.getfixturevalue(f"tiny_{family}")
    out = prune_checkpoint(base, DROP, tmp_path / "pruned")
    pruned, reference, untouched = load(out), load(base), load(base)
    if family == "gemma4":
        mask_gemma4_router(reference, DROP)
    else:
        mask_topk_router(reference, DROP)
    expected = logits(reference)
    assert torch.allclose(logits(pruned), expected, atol=1e-5, rtol=1e-5)
    # the dropped experts were really in use, so the equality above is not vacuous
    assert (logits(untouched) - expected).abs().max() > 1e-3
    config = json.loads((out / "config.json").read_text())
    assert config.get("num_experts", config.get("num_local_experts")) == 5


def test_output_layout_side_files_and_provenance(tiny_gemma4, tmp_path):
    out = prune_checkpoint(tiny_gemma4, DROP, tmp_path / "p1", {"strategy": "max", "base": {"id": "tiny"}})
    tensors = load_file(out / "model.safetensors")
    source = load_file(tiny_gemma4 / "model.safetensors")
    assert tensors["model.layers.0.experts.gate_up_proj"].shape[0] == 5
    assert torch.equal(tensors["model.layers.1.router.proj.weight"], source["model.layers.1.router.proj.weight"][[1, 2, 4, 5, 6]])
    assert torch.equal(tensors["model.layers.0.router.scale"], source["model.layers.0.router.scale"])
    assert set(tensors) == set(source)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_gemma4 / name).read_bytes()
    record = json.loads((out / PROVENANCE_NAME).read_text())
    assert record["drop_map"] == DROP and record["strategy"] == "max" and record["base"] == {"id": "tiny"}
    assert record["num_experts"] == {"before": 8, "after": 5} and len(record["drop_map_hash"]) == 16
    again = prune_checkpoint(out, {"0": [0], "1": [4]}, tmp_path / "p2")
    chained = json.loads((again / PROVENANCE_NAME).read_text())
    assert chained["base_provenance"]["drop_map"] == DROP
    assert json.loads((again / "config.json").read_text())["num_experts"] == 4


def test_bounded_shards_with_an_index_load_the_same(tiny_qwen3, tmp_path):
    one = prune_checkpoint(tiny_qwen3, DROP, tmp_path / "one")
    many = prune_checkpoint(tiny_qwen3, DROP, tmp_path / "many", max_shard_size="100KB")
    shards = sorted(many.glob("model-*.safetensors"))
    assert len(shards) > 3 and (many / "model.safetensors.index.json").is_file()
    assert all(s.stat().st_size <= 100_000 + 16_384 for s in shards)  # payload bound + header
    assert torch.equal(logits(load(one)), logits(load(many)))
    # a sharded checkpoint is also a valid input
    prune_checkpoint(many, {"0": [0], "1": [0]}, tmp_path / "again")


def test_refuses_to_overwrite(tiny_gemma4, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SurgeryError, match="already exists"):
        prune_checkpoint(tiny_gemma4, DROP, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("drop_map, protected, message", [
    ({}, None, "non-empty"),
    ({"0": [1, 2]}, None, r"no entry for MoE layers \['1'\]"),
    ({"0": [1], "1": [1], "5": [1]}, None, r"names layers \['5'\]"),
    ({"0": [1, 1], "1": [2, 3]}, None, "listed twice"),
    ({"0": [8], "1": [2]}, None, r"outside 0\.\.7"),
    ({"0": [1], "1": [2, 3]}, None, "same number of experts"),
    ({"0": [0, 1, 2, 3, 4, 5, 6], "1": [0, 1, 2, 3, 4, 5, 6]}, None, "fewer than the model's top-k"),
    ({"0": ["1"], "1": [2]}, None, "list of integer expert ids"),
    ({"x": [1], "1": [2]}, None, "not a non-negative integer"),
    ({"0": [1, 2], "1": [2, 3]}, {"0": [2, 5]}, r"drops protected experts \[2\]"),
])
def test_bad_drop_maps_are_refused_before_writing_anything(tiny_gemma4, tmp_path, drop_map, protected, message):
    with pytest.raises(ValueError, match=message):
        prune_checkpoint(tiny_gemma4, drop_map, tmp_path / "out", protected=protected)
    assert list(tmp_path.iterdir()) == []


def _broken_copy(src, dst, drop_tensor=None, config_edit=None):
    shutil.copytree(src, dst)
    if drop_tensor:
        tensors = load_file(dst / "model.safetensors")
        del tensors[drop_tensor]
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    if config_edit:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("family, broken, message", [
    ("gemma4", {"drop_tensor": "model.layers.1.experts.down_proj"},
     "layer 1: missing expert tensor model.layers.1.experts.down_proj"),
    ("gemma4", {"drop_tensor": "model.layers.0.router.per_expert_scale"},
     "layer 0: missing router tensor model.layers.0.router.per_expert_scale"),
    ("qwen3", {"drop_tensor": "model.layers.1.mlp.experts.5.up_proj.weight"},
     "layer 1: missing expert tensor model.layers.1.mlp.experts.5.up_proj.weight"),
    ("qwen3", {"drop_tensor": "model.layers.0.mlp.gate.weight"}, "layer 0: missing router tensor model.layers.0.mlp.gate.weight"),
    ("gemma4", {"config_edit": lambda c: c.update(num_experts=9)}, "should be the 9 experts of the config"),
    ("gemma4", {"config_edit": lambda c: c.update(num_hidden_layers=3, layer_types=c["layer_types"] + ["full_attention"])},
     r"missing every MoE tensor of layers \[2\]"),
    ("gemma4", {"config_edit": lambda c: c.update(quantization_config={"quant_method": "x"})}, "is quantized"),
])
def test_broken_checkpoints_are_refused_before_writing_anything(family, broken, message, request, tmp_path):
    base = _broken_copy(request.getfixturevalue(f"tiny_{family}"), tmp_path / "base", **broken)
    out_root = tmp_path / "out"
    out_root.mkdir()
    with pytest.raises(SurgeryError, match=message):
        prune_checkpoint(base, DROP, out_root / "pruned")
    assert list(out_root.iterdir()) == []


def test_missing_shard_and_unreadable_file(tiny_qwen3, tmp_path):
    many = prune_checkpoint(tiny_qwen3, DROP, tmp_path / "many", max_shard_size="100KB")
    next(many.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(SurgeryError, match="lists shard model-00002-of-.*, which is missing"):
        prune_checkpoint(many, {"0": [0], "1": [0]}, tmp_path / "out")
    garbage = tmp_path / "garbage"
    shutil.copytree(tiny_qwen3, garbage)
    (garbage / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(SurgeryError, match="model.safetensors"):
        prune_checkpoint(garbage, DROP, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gemma4_multimodal_layout_with_nested_text_config(tiny_gemma4, tmp_path):
    """The published checkpoint: `model.language_model.layers.N.` prefix, `text_config.num_experts`,
    a vision tower whose numbered layers have no experts, several shards."""
    base = tmp_path / "mm"
    base.mkdir()
    tensors = {k.replace("model.", "model.language_model.", 1): v for k, v in load_file(tiny_gemma4 / "model.safetensors").items()}
    tower = {"model.vision_tower.encoder.layers.0.mlp.fc1.weight": torch.randn(8, 4)}
    save_file(tensors, base / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file(tower, base / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    weight_map = {**{k: "model-00001-of-00002.safetensors" for k in tensors}, **{k: "model-00002-of-00002.safetensors" for k in tower}}
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    text = json.loads((tiny_gemma4 / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({"model_type": "gemma4", "text_config": text, "vision_config": {"num_hidden_layers": 1}}))
    out = prune_checkpoint(base, DROP, tmp_path / "pruned")
    got = load_file(out / "model.safetensors")
    assert got["model.language_model.layers.1.experts.down_proj"].shape == (5, 64, 32)
    assert torch.equal(got["model.vision_tower.encoder.layers.0.mlp.fc1.weight"], tower["model.vision_tower.encoder.layers.0.mlp.fc1.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_experts"] == 5 and config["vision_config"] == {"num_hidden_layers": 1}


def test_one_reading_of_the_text_config_and_the_expert_counts():
    """Surgery, facts, the NVFP4 layout check and the GGUF step read the same numbers from a config."""
    from omk_ray.variants.facts import facts_from
    from omk_ray.variants.families import FAMILIES, moe_dims, num_experts, text_config, top_k

    gemma = {"model_type": "gemma4", "vision_config": {"hidden_size": 1152},
             "text_config": {"num_experts": 128, "top_k_experts": 8, "hidden_size": 2816, "moe_intermediate_size": 704}}
    routed = {"n_routed_experts": 256, "num_experts_per_tok": 8, "hidden_size": 7168, "moe_intermediate_size": 2048}
    assert text_config(gemma) is gemma["text_config"] and text_config(routed) is routed
    assert (num_experts(gemma), top_k(gemma)) == (128, 8) and (num_experts(routed), top_k(routed)) == (256, 8)
    assert moe_dims(gemma, FAMILIES["gemma4"]) == (128, 2816, 704)
    assert moe_dims(routed, FAMILIES["qwen3_moe"]) == (256, 7168, 2048)  # the layout once missed n_routed_experts
    assert num_experts({"num_experts": 8, "text_config": {"num_local_experts": 16}}) is None  # two counts: none
    assert top_k({"top_k_experts": 2, "num_experts_per_tok": 4}) == 4  # the safe bound for a drop map
    facts = facts_from("m", routed, [], None, "test")
    assert (facts.experts_per_layer, facts.top_k) == (256, 8)


def test_star_import_names_what_the_module_has():
    namespace: dict = {}
    exec("from omk_ray.variants.surgery import *", namespace)
    import omk_ray.variants.surgery as surgery

    assert set(surgery.__all__) <= set(namespace) and "prune_checkpoint" in namespace


@pytest.mark.parametrize("family", ["tiny_gemma4", "tiny_qwen3", "tiny_mixtral"])
def test_every_moe_tensor_of_a_family_is_named_by_its_row_of_the_table(family, request):
    """The surgery, the NVFP4 layout and the facts read one table: a saved checkpoint's MoE tensors are
    the row's routers, fused `<block>.*` or per-expert `<block>.N.<projection>` tensors, and its config
    keys are the row's."""
    from omk_ray.variants.checkpoint import read_tensors
    from omk_ray.variants.families import FUSED, LAYER, PER_EXPERT, family_of, num_experts, top_k
    from omk_ray.variants.surgery import find_moe_layers

    model = request.getfixturevalue(family)
    config = json.loads((model / "config.json").read_text())
    row = family_of(config)
    assert row is not None and row.name == {"tiny_gemma4": "gemma4", "tiny_qwen3": "qwen3_moe", "tiny_mixtral": "mixtral"}[family]
    text = config.get("text_config", config)
    assert (text[row.experts_key], text[row.top_k_key]) == (num_experts(config), top_k(config))
    rests = {LAYER.match(name)["rest"] for name in read_tensors(model) if LAYER.match(name)}
    routers = {r for r in rests if r in row.router_tensors}
    fused = {r for r in rests if (m := FUSED.match(r)) and m["block"] == row.block}
    per_expert = {(m["block"], m["param"].removesuffix(".weight")) for r in rests if (m := PER_EXPERT.match(r))}
    assert routers == set(row.router_tensors)
    if row.fused_on_disk:
        assert fused == {f"{row.block}.{row.fused_gate_up}", f"{row.block}.{row.fused_down}"} and not per_expert
    else:
        assert per_expert == {(row.block, p) for p in row.projections} and not fused
    layers = find_moe_layers(read_tensors(model))
    assert layers and all(set(layer.routers) == routers for layer in layers.values())
