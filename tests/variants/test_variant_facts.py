"""The card's first table: variant facts from safetensors headers and provenance, never the weights."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.samples import bench_rows, grid_config, write_store
from omk_ray.analysis.card import to_card
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.cli import app
from omk_ray.toy.data import shipped
from omk_ray.variants.facts import checkpoint_facts
from omk_ray.variants.artifacts import ensure_variant

runner = CliRunner()
TOY = shipped("model")  # Gemma 4: 3 MoE layers x 16 experts (hidden 96, expert width 64), top-2
EXPERT = 3 * 64 * 96  # gate_up [2I, H] + down [H, I] of one expert
ROUTER_ROW = 96 + 1  # router.proj.weight [E, H] and router.per_expert_scale [E]: one row each per expert


def toy_cd(path: Path) -> Path:
    """CD scores for the toy's 3 layers x 16 experts: math leans on the high ids, code on the low ones."""
    cats = {name: {str(layer): [{"id": e, "wnorm": 0.0, "tc": float(f(e))} for e in range(16)] for layer in range(3)}
            for name, f in (("math", lambda e: 1 + e), ("code", lambda e: 17 - e))}
    path.write_text(json.dumps({"metadata": {"num_layers": 3, "num_experts": 16}, "categories": cats}))
    return path


@pytest.fixture(scope="module")
def pruned_toy(tmp_path_factory) -> Path:
    """A toy arm built as the farm builds one: CD scores -> drop map (max, protect_top 2) -> surgery."""
    root = tmp_path_factory.mktemp("arms")
    return ensure_variant({"base": str(TOY), "scores": str(toy_cd(root / "cd.json")), "strategy": "max", "drop": 6,
                           "protect_top": 2}, root / "artifacts")


def test_the_facts_of_a_pruned_toy_arm(pruned_toy):
    from transformers import AutoModelForCausalLM

    base = checkpoint_facts(str(TOY))
    # every stored tensor counts: transformers' parameters plus Gemma 4's one `layer_scalar` buffer per layer
    assert base.total_params == AutoModelForCausalLM.from_pretrained(TOY).num_parameters() + 3 == 991_827
    assert base.expert_params == 3 * 16 * EXPERT and base.experts_per_layer == 16 and base.top_k == 2
    assert base.moe_layers == 3 and base.dropped_per_layer is None and base.quantization == "none (float32)"

    arm = checkpoint_facts(str(pruned_toy))
    assert arm.total_params == 991_827 - 3 * 6 * (EXPERT + ROUTER_ROW) == 658_305
    assert arm.expert_params == 3 * 10 * EXPERT
    assert arm.active_params == 658_305 - 3 * 10 * EXPERT * (1 - 2 / 10)
    assert (arm.experts_per_layer, arm.base_experts, arm.dropped_per_layer, arm.top_k) == (10, 16, 6, 2)
    assert arm.capacity_removed == 6 / 16
    assert arm.recipe["strategy"] == "max" and arm.recipe["protect_top"] == 2 and arm.recipe["source"] == "CD scores cd.json"
    assert arm.drop_map == "max over mean-normalized classes, protect_top 2, CD scores cd.json"


def test_the_card_facts_of_farm_runs_and_of_declared_variants(pruned_toy, tmp_path):
    """A farm run records each variant's checkpoint in its manifest; a GGUF behind an endpoint declares its facts."""
    rows = bench_rows("toy", "b", [True] * 10) + bench_rows("max", "b", [True] * 8 + [False] * 2)
    rows += bench_rows("v4-q6k", "b", [True] * 9 + [False])
    config = grid_config([{"name": "toy"}, {"name": "max"}, {"name": "v4-q6k", "model": "v4-Q6_K.gguf", "engine": "openai",
                          "facts": {"total_params": "20.8B", "experts_per_layer": 98, "base_experts": 128,
                                    "dropped_per_layer": 30, "top_k": 8, "quantization": "Q6_K",
                                    "drop_map": "multi-class CD-map (max), p16"}}], ["b"])
    store = write_store(tmp_path, rows, [config])
    run = store.runs()[0]
    run.write_manifest({**run.manifest(), "model_paths": {"toy": str(TOY), "max": str(pruned_toy), "v4-q6k": "v4-Q6_K.gguf"}})
    c = compare(tmp_path, CompareOptions(baseline="toy", variants=["max", "v4-q6k"], resamples=200))
    card = to_card(c)
    for line in [
        "|  | toy (baseline) | max | v4-q6k |",
        "| Total params | 992K | 658K | 20.8B |",
        "| Expert params | 885K | 553K | ? |",
        "| Experts per layer | 16 | 10 | 98 |",
        "| Experts dropped | — | 6/layer | 30/layer |",
        "| MoE capacity removed | — | 37.5% | 23.4% |",
        "| Top-k routing | 2 | 2 | 8 |",
        "| Quantization | none (float32) | none (float32) | Q6_K |",
        "| Drop map source | — | max over mean-normalized classes, protect_top 2, CD scores cd.json | "
        "multi-class CD-map (max), p16 |",
    ]:
        assert line in card, line
    facts = {r["variant"]: r for r in c.rows("facts")}
    assert facts["v4-q6k"]["source"].endswith("declared in the grid") and facts["max"]["capacity_removed_pct"] == 37.5


def test_import_reads_the_facts_of_the_model_given(pruned_toy, tmp_path):
    from helpers.bench_data import small_gsm8k_log

    log = small_gsm8k_log(tmp_path / "log", docs=5)
    root = tmp_path / "results"
    for variant, model in (("toy", TOY), ("max", pruned_toy)):
        done = runner.invoke(app, ["import", "lm-eval", str(log), "--variant", variant, "--results", str(root),
                                   "--model", str(model)])
        assert done.exit_code == 0, done.output
    recorded = json.loads((root / "variants" / "max.json").read_text())["facts"]
    assert recorded["dropped_per_layer"] == 6 and recorded["total_params"] == 658_305
    card = runner.invoke(app, ["compare", str(root), "--baseline", "toy", "--format", "card", "--out", str(tmp_path / "r"),
                               "--no-html", "--resamples", "200"])
    assert card.exit_code == 0, card.output
    assert "| Total params | 992K | 658K |" in card.output and "| Experts dropped | — | 6/layer |" in card.output

    bad = runner.invoke(app, ["import", "lm-eval", str(log), "--variant", "x", "--results", str(tmp_path / "bad"),
                              "--model", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "cannot read its facts from --model" in bad.output
    assert not (tmp_path / "bad" / "samples").exists()  # refused before anything was written


def write_header_only(folder: Path, config: dict, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors checkpoint with these tensors whose data is a hole (a sparse file): headers are real,
    nothing is written for the weights. Returns the data size in bytes."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    sizes = {"BF16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    return offset


# google/gemma-4-26B-A4B-it's config.json (text and vision towers; no audio).
GEMMA4_TEXT = dict(
    model_type="gemma4_text", vocab_size=262144, num_hidden_layers=30, hidden_size=2816, intermediate_size=2112,
    moe_intermediate_size=704, num_experts=128, top_k_experts=8, num_attention_heads=16, num_key_value_heads=8,
    head_dim=256, global_head_dim=512, num_global_key_value_heads=2, sliding_window=1024, attention_k_eq_v=True,
    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, enable_moe_block=True,
    hidden_size_per_layer_input=0, num_kv_shared_layers=0, use_double_wide_mlp=False, final_logit_softcapping=30.0,
    max_position_embeddings=262144, use_bidirectional_attention="vision",
    layer_types=["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(30)],
    rope_parameters={"full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1e6, "rope_type": "proportional"},
                     "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
)
GEMMA4_VISION = dict(
    model_type="gemma4_vision", num_hidden_layers=27, hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
    num_key_value_heads=16, head_dim=72, global_head_dim=72, patch_size=16, position_embedding_size=10240,
    pooling_kernel_size=3, default_output_length=280, hidden_activation="gelu_pytorch_tanh", standardize=True,
)


@pytest.mark.slow
def test_gemma4_26b_a4b_shaped_headers(tmp_path):
    """Gemma 4 26B-A4B's real tensor table (transformers' own architecture on the meta device: no memory)
    as header-only checkpoints, and its 98-expert prune planned by the surgery itself.

    The card's first table says 26B and 20.8B. The headers give 25.8B (25.2B text + 0.57B vision:
    Google's "25.2B total, 3.8B active" counts the text model) and, with 30 experts dropped from each
    of the 30 MoE layers, 25.8B - 30 x 30 x 5.95M = 20.45B: the card's 20.8B is not what its own
    numbers give."""
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    from omk_ray.variants.surgery import plan_prune

    config = Gemma4Config(text_config=GEMMA4_TEXT, vision_config=GEMMA4_VISION, audio_config=None,
                          tie_word_embeddings=True)
    with torch.device("meta"):
        model = Gemma4ForConditionalGeneration(config)
    tensors = {name: ("BF16", list(t.shape)) for name, t in model.state_dict().items() if name != "lm_head.weight"}
    raw = {**config.to_dict(), "dtype": "bfloat16"}
    size = write_header_only(tmp_path / "128e", raw, tensors)
    # the published checkpoint's model.safetensors.index.json: total_size 51611872412, total_parameters
    # 25805933872 (its parameters without the 2,334 buffer values: 30 layer_scalar, vision std_bias/std_scale)
    assert size == 51_611_872_412

    drop = {str(layer): list(range(98, 128)) for layer in range(30)}
    plan = plan_prune(tmp_path / "128e", drop)
    write_header_only(tmp_path / "98e", plan.config, {t.name: (t.dtype, list(t.shape)) for t in plan.tensors})

    base, pruned = checkpoint_facts(str(tmp_path / "128e")), checkpoint_facts(str(tmp_path / "98e"))
    expert = 3 * 704 * 2816
    assert base.total_params == 25_805_933_872 + 30 + 2 * 1152 and base.expert_params == 30 * 128 * expert
    assert base.active_params == 25_805_936_206 - 30 * 128 * expert * (1 - 8 / 128)
    assert (base.experts_per_layer, base.top_k, base.moe_layers, base.quantization) == (128, 8, 30, "none (bfloat16)")
    assert pruned.total_params == 25_805_936_206 - 30 * 30 * (expert + 2816 + 1) == 20_450_748_106
    assert pruned.experts_per_layer == 98 and pruned.top_k == 8

    rows = bench_rows("128e", "b", [True] * 4) + bench_rows("98e", "b", [True] * 3 + [False])
    store = write_store(tmp_path / "results", rows, [grid_config([{"name": "128e"}, {"name": "98e"}], ["b"])])
    run = store.runs()[0]
    run.write_manifest({**run.manifest(), "model_paths": {"128e": str(tmp_path / "128e"), "98e": str(tmp_path / "98e")}})
    card = to_card(compare(tmp_path / "results", CompareOptions(baseline="128e", resamples=200)))
    for line in ["| Total params | 25.8B | 20.5B |", "| Expert params | 22.8B | 17.5B |",
                 "| Active params per token | 4.4B | 4.39B |", "| Experts per layer | 128 | 98 |",
                 "| Experts dropped | — | 30/layer |", "| MoE capacity removed | — | 23.4% |",
                 "| Top-k routing | 8 | 8 |"]:
        assert line in card, line


def test_quantized_weights_count_as_their_logical_values():
    """compressed-tensors NVFP4: 4-bit values packed two per uint8, FP8 scales per 16, a global scale."""
    from omk_ray.variants.facts import facts_from

    config = {"num_experts": 4, "top_k_experts": 2, "quantization_config": {
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
        "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": 16}}}}}
    tensors = [("model.layers.0.mlp.experts.0.down_proj.weight_packed", "U8", (64, 32)),  # 64 x 64 values
               ("model.layers.0.mlp.experts.0.down_proj.weight_scale", "F8_E4M3", (64, 4)),
               ("model.layers.0.mlp.experts.0.down_proj.weight_global_scale", "F32", (1,)),
               ("model.layers.0.mlp.gate.weight", "BF16", (4, 64))]
    provenance = {"tool": "omk-ray quantize", "scheme": "NVFP4A16", "base_provenance": {
        "tool": "omk-ray prune", "num_experts": {"before": 6, "after": 4}, "strategy": {
            "strategy": "pooled", "normalize": "none", "protect_top": 1, "classes": {"math": ["math"]}}}}
    facts = facts_from("m", config, tensors, provenance, "test")
    assert facts.total_params == 64 * 64 + 4 * 64 and facts.expert_params == 64 * 64
    assert facts.quantization == "NVFP4A16 (compressed-tensors nvfp4-pack-quantized)"
    assert (facts.base_experts, facts.dropped_per_layer) == (6, 2)
    assert facts.drop_map == "pooled over classes, protect_top 1"  # `omk-ray prune --summary` records the plan


def test_declared_facts_are_validated_at_the_edge(tmp_path):
    from omk_ray.config import ConfigError, parse_grid

    grid = {"variants": [{"name": "v", "model": "m", "facts": {"total_params": "20.8B", "top_k": 8}}],
            "benches": [{"name": "b", "source": "/x.jsonl"}]}
    assert parse_grid(grid).variants[0].facts.total_params == 20.8e9
    grid["variants"][0]["facts"] = {"total_param": "20.8B"}
    with pytest.raises(ConfigError, match="variants.0.facts.total_param: Extra inputs are not permitted"):
        parse_grid(grid, "grid.yaml")
    grid["variants"][0]["facts"] = {"total_params": "many"}
    with pytest.raises(ConfigError, match="variants.0.facts.total_params"):
        parse_grid(grid, "grid.yaml")


def test_the_facts_footnote_names_each_source(pruned_toy, tmp_path):
    rows = bench_rows("toy", "b", [True] * 10) + bench_rows("max", "b", [True] * 8 + [False] * 2)
    rows += bench_rows("v4-q6k", "b", [True] * 9 + [False])
    config = grid_config([{"name": "toy"}, {"name": "max"}, {"name": "v4-q6k", "model": "v4-Q6_K.gguf", "engine": "openai",
                          "facts": {"total_params": "20.8B", "experts_per_layer": 98, "top_k": 8}}], ["b"])
    store = write_store(tmp_path, rows, [config])
    run = store.runs()[0]
    run.write_manifest({**run.manifest(), "model_paths": {"toy": str(TOY), "max": str(pruned_toy), "v4-q6k": "v4-Q6_K.gguf"}})
    card = to_card(compare(tmp_path, CompareOptions(baseline="toy", resamples=200)))
    assert ("Parameters of toy, max: summed over the safetensors headers (no weight is read); of v4-q6k: declared in "
            "the grid (`facts:`), not read from a checkpoint; active = everything but the experts a token's router "
            "does not pick. ? = not recorded.") in card
    assert "Facts not read" not in card


def tiny_gguf(path: Path) -> dict:
    """A GGUF of 2 MoE layers x 4 experts (2 used), Q8_0 by its file type; tensors written as float32 zeros."""
    import numpy as np

    from omk_ray.variants.facts import FactsError, _gguf_module

    try:
        gguf = _gguf_module()
    except FactsError as err:
        pytest.skip(str(err))  # neither `gguf` nor the pinned llama.cpp build (make llamacpp) is here
    shapes = {"token_embd.weight": (32, 16), "output_norm.weight": (16,)}
    for layer in range(2):
        shapes.update({f"blk.{layer}.attn_q.weight": (16, 16), f"blk.{layer}.ffn_gate_inp.weight": (4, 16),
                       f"blk.{layer}.ffn_gate_exps.weight": (4, 8, 16), f"blk.{layer}.ffn_up_exps.weight": (4, 8, 16),
                       f"blk.{layer}.ffn_down_exps.weight": (4, 16, 8)})
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_expert_count(4)
    writer.add_expert_used_count(2)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    for name, shape in shapes.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return shapes


def test_gguf_facts_come_from_the_gguf_file(tmp_path):
    folder = tmp_path / "v4-gguf"
    folder.mkdir()
    shapes = tiny_gguf(folder / "model-Q8_0.gguf")
    (folder / "imatrix.gguf").write_bytes(b"not a model")  # an importance matrix beside it is not the model
    total = sum(math.prod(s) for s in shapes.values())
    expert = 2 * 3 * 4 * 8 * 16
    facts = checkpoint_facts(str(folder))
    assert (facts.total_params, facts.expert_params, facts.moe_layers) == (total, expert, 2)
    assert (facts.experts_per_layer, facts.top_k, facts.quantization) == (4, 2, "GGUF Q8_0")
    assert facts.active_params == total - expert * (1 - 2 / 4) and facts.basis == ["gguf"]
    assert facts.source == "GGUF model-Q8_0.gguf"

    # `import --model` takes the GGUF folder; the card shows its facts and says where they come from
    from helpers.bench_data import small_gsm8k_log

    log = small_gsm8k_log(tmp_path / "log", docs=5)
    root = tmp_path / "results"
    for variant, model in (("toy", TOY), ("v4-gguf", folder)):
        done = runner.invoke(app, ["import", "lm-eval", str(log), "--variant", variant, "--results", str(root),
                                   "--model", str(model)])
        assert done.exit_code == 0, done.output
    card = to_card(compare(root, CompareOptions(baseline="toy", resamples=200)))
    assert f"| Total params | 992K | {total / 1e3:.3g}K |" in card
    assert "| Experts per layer | 16 | 4 |" in card and "| Quantization | none (float32) | GGUF Q8_0 |" in card
    assert ("Parameters of toy: summed over the safetensors headers (no weight is read); of v4-gguf: read from the "
            "GGUF file's tensor table and metadata with `gguf` (no weight is read);") in card
