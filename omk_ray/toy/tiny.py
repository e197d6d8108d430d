"""Tiny MoE checkpoints built on the spot (no download): for tests, the demo and toy training.

Every model here uses one character-level tokenizer whose special tokens follow Gemma 4's
chat format (`<|turn>` ... `<turn|>` turns, `<|channel>` ... `<channel|>` thoughts), so the
engines' reasoning split and thinking budget work on it exactly as on the real model.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>"]
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " \n"
VOCAB_SIZE = 128  # len(SPECIAL_TOKENS) + len(CHARACTERS) = 105, rounded up

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if enable_thinking is defined and enable_thinking %}<|turn>system\n<|think|><turn|>\n{% endif %}"
    "{% for message in messages %}"
    "<|turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] }}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)


def build_tokenizer(out_dir: str | Path):
    """A character-level fast tokenizer with Gemma-4-style special tokens, saved to out_dir."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        tok.save_pretrained(out_dir)
    return tok


def gemma4_config(
    num_experts: int = 8, top_k: int = 2, layers: int = 2, hidden: int = 64, head_dim: int = 32,
    moe_intermediate: int = 32, intermediate: int = 64, heads: int = 2, kv_heads: int = 1,
):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        global_head_dim=head_dim,
        max_position_embeddings=1024,
        sliding_window=512,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        vocab_size_per_layer_input=VOCAB_SIZE,
        hidden_size_per_layer_input=0,
        enable_moe_block=True,
        num_experts=num_experts,
        top_k_experts=top_k,
        moe_intermediate_size=moe_intermediate,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
    )


def build_tiny_gemma4(out_dir: str | Path, seed: int = 0, dtype: str = "float32", **config_kwargs) -> Path:
    """A random tiny Gemma 4 MoE (fused 3-D experts), saved as a normal HF checkpoint."""
    import torch
    from transformers import Gemma4ForCausalLM

    torch.manual_seed(seed)
    model = Gemma4ForCausalLM(gemma4_config(**config_kwargs)).to(getattr(torch, dtype))
    return _save(model, out_dir)


def build_tiny_qwen3_moe(out_dir: str | Path, seed: int = 0, num_experts: int = 8, top_k: int = 2,
                         layers: int = 2, hidden: int = 64) -> Path:
    """A random tiny Qwen3-MoE (per-expert 2-D tensors), for the surgery's second layout."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    config = Qwen3MoeConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2, moe_intermediate_size=32,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        num_experts=num_experts, num_experts_per_tok=top_k, norm_topk_prob=True, decoder_sparse_step=1,
        max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False,
    )
    return _save(Qwen3MoeForCausalLM(config), out_dir)


def _save(model, out_dir: str | Path) -> Path:
    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=[1, 5], pad_token_id=0)
    model.save_pretrained(out)
    build_tokenizer(out)
    (out / "omk_ray_model.json").write_text(json.dumps({"kind": "tiny-random", "class": type(model).__name__}))
    return out
