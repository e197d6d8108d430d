"""Tiny MoE checkpoints of other layouts than Gemma 4's (whose `tiny_gemma4` is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from omk_ray.toy.tiny import build_tiny_qwen3_moe


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    """Qwen3-MoE, per-expert 2-D tensors: 2 layers, 8 experts, top-2."""
    return build_tiny_qwen3_moe(tmp_path_factory.mktemp("qwen3") / "model", seed=2)


@pytest.fixture(scope="session")
def tiny_mixtral(tmp_path_factory):
    """Mixtral, per-expert `block_sparse_moe.experts.N.w1/w2/w3`: 2 layers, 8 experts, top-2."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from omk_ray.toy.tiny import VOCAB_SIZE, _save

    torch.manual_seed(3)
    config = MixtralConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_local_experts=8,
        num_experts_per_tok=2, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return _save(MixtralForCausalLM(config), tmp_path_factory.mktemp("mixtral") / "model")


@pytest.fixture(scope="session")
def real_width_gemma4(tmp_path_factory):
    """Gemma 4 26B-A4B's widths in 2 layers (hidden 2816, MoE width 704, dense MLP 2112, head_dim
    256 / global 512, `attention_k_eq_v`) with 2 heads and 4 experts, random bf16: ~190 MB."""
    from helpers.real_width import build_real_width_gemma4

    return build_real_width_gemma4(tmp_path_factory.mktemp("real-width") / "model")
