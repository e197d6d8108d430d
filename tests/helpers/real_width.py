"""A Gemma 4 checkpoint at the real model's widths but only 2 layers, 2 heads and 4 experts.

Gemma 4 26B-A4B's hidden 2816, MoE width 704, dense MLP 2112, head_dim 256 (sliding) and 512
(global), `attention_k_eq_v` on the global layer: the tensor names and shapes vLLM's loaders see on
the real model, in ~190 MB of random bf16 (built from transformers' own module tree on the meta
device, so no initialisation runs).
"""

from __future__ import annotations

from pathlib import Path

HIDDEN, MOE_INTER, INTER, HEAD_DIM, GLOBAL_HEAD_DIM = 2816, 704, 2112, 256, 512


def real_width_config(experts: int = 4):
    from transformers import Gemma4TextConfig

    from omk_ray.toy.tiny import VOCAB_SIZE

    return Gemma4TextConfig(
        vocab_size=VOCAB_SIZE, vocab_size_per_layer_input=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=INTER,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_global_key_value_heads=1,
        head_dim=HEAD_DIM, global_head_dim=GLOBAL_HEAD_DIM, attention_k_eq_v=True,
        layer_types=["sliding_attention", "full_attention"], sliding_window=1024, max_position_embeddings=4096,
        hidden_size_per_layer_input=0, enable_moe_block=True, num_experts=experts, top_k_experts=2,
        moe_intermediate_size=MOE_INTER, final_logit_softcapping=30.0, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def build_real_width_gemma4(out_dir: str | Path, seed: int = 0, experts: int = 4) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma4ForCausalLM, GenerationConfig

    from omk_ray.toy.tiny import build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = real_width_config(experts)
    with torch.device("meta"):
        model = Gemma4ForCausalLM(config)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        state[name] = (torch.randn(t.shape, generator=gen) * 0.02).to(torch.bfloat16)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config.architectures = ["Gemma4ForCausalLM"]
    config.dtype = "bfloat16"
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=2, eos_token_id=[1, 5], pad_token_id=0).save_pretrained(out)
    build_tokenizer(out)
    return out
