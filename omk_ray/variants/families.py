"""MoE model families as data (as mergekit describes architectures): where a family keeps its
experts and routers, and what its config calls them. The surgery, the quantizers, the layout
checks and the facts read names from this table and from the config readers below; a new family
is a new row.

    family     model_type           experts, after `layers.N.`                   routers (one row per expert)     experts key / top-k key
    gemma4     gemma4, gemma4_text  experts.{gate_up_proj [E, 2I, H],            router.proj.weight,              num_experts / top_k_experts
                                            down_proj [E, H, I]} (fused 3-D)      router.per_expert_scale
    qwen3_moe  qwen3_moe            mlp.experts.{i}.{gate_proj,up_proj,down_proj} mlp.gate.weight                 num_local_experts / num_experts_per_tok
    mixtral    mixtral              block_sparse_moe.experts.{i}.{w1,w3,w2}       block_sparse_moe.gate.weight    num_local_experts / num_experts_per_tok

Any prefix may come before `layers.N.` (Gemma 4's `model.language_model.`). Fused 3-D experts
(`<block>.gate_up_proj`, gate rows first, and `<block>.down_proj`) are what transformers saves for
Gemma 4 and may save for the others; quantized checkpoints hold every expert as its own 2-D Linear
`<block>.{i}.<gate|up|down>`, the names vLLM's fused-MoE loader maps (variants/layout.py).

The config readers (a Hugging Face `config.json` as a dict, read the one way every step reads it):

    text_config(config)   the language model's part: `text_config` of a multimodal config
                          (Gemma 4), else the config itself; the same dict, so edits stick
    num_experts(config)   experts per MoE layer, under any family's key (and DeepSeek-style
                          `n_routed_experts`), anywhere in the config; None when absent, or when
                          two places disagree
    top_k(config)         experts each token is routed to; the largest where a config names it twice
    expected_moe_layers(config)  the decoder layers that have experts (None if the config cannot tell)
    find_keys(obj, keys)  (path, value) of every occurrence, for the steps that rewrite them
    family_of(config)     the family row of a config's model_type, or None
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    block: str  # the experts' module path after `layers.N.`
    gate: str
    up: str
    down: str
    router: str  # the router's Linear module after `layers.N.`
    router_tensors: tuple[str, ...]  # tensors after `layers.N.` whose first dimension is the experts
    experts_key: str
    top_k_key: str
    intermediate_key: str
    fused_on_disk: bool  # transformers stores (and loads) this family's experts as fused 3-D tensors
    fused_gate_up: str = "gate_up_proj"  # fused 3-D tensors after `<block>.`
    fused_down: str = "down_proj"

    @property
    def projections(self) -> tuple[str, str, str]:
        return self.gate, self.up, self.down


FAMILIES = {f.name: f for f in (
    Family("gemma4", ("gemma4", "gemma4_text"), "experts", "gate_proj", "up_proj", "down_proj", "router.proj",
           ("router.proj.weight", "router.per_expert_scale"), "num_experts", "top_k_experts",
           "moe_intermediate_size", fused_on_disk=True),
    Family("qwen3_moe", ("qwen3_moe",), "mlp.experts", "gate_proj", "up_proj", "down_proj", "mlp.gate",
           ("mlp.gate.weight",), "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
           fused_on_disk=False),
    Family("mixtral", ("mixtral",), "block_sparse_moe.experts", "w1", "w3", "w2", "block_sparse_moe.gate",
           ("block_sparse_moe.gate.weight",), "num_local_experts", "num_experts_per_tok", "intermediate_size",
           fused_on_disk=False),
)}
MODEL_TYPES = {t: f.name for f in FAMILIES.values() for t in f.model_types}


def _unique(values) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


# Config keys, over every family; older Qwen3-MoE configs say num_experts, DeepSeek-style ones n_routed_experts.
EXPERT_COUNT_KEYS = _unique([*(f.experts_key for f in FAMILIES.values()), "num_experts", "n_routed_experts"])
TOP_K_KEYS = _unique(f.top_k_key for f in FAMILIES.values())
# Tensor names, over every family (the surgery reads a checkpoint without knowing its family).
BLOCKS = _unique(f.block for f in FAMILIES.values())
ROUTER_TENSORS = _unique(t for f in FAMILIES.values() for t in f.router_tensors)
_BLOCK = "|".join(re.escape(b) for b in sorted(BLOCKS, key=len, reverse=True))
LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.(?P<layer>\d+)\.)(?P<rest>.+)$")  # `rest`: the name after layers.N.
PER_EXPERT = re.compile(rf"^(?P<block>{_BLOCK})\.(?P<expert>\d+)\.(?P<param>.+)$")  # matched against `rest`
FUSED = re.compile(rf"^(?P<block>{_BLOCK})\.(?P<param>[A-Za-z_]+)$")  # matched against `rest`
FUSED_PROJECTION = re.compile(
    rf"^(?P<layer>(?:.*\.)?layers\.\d+\.)(?P<block>{_BLOCK})\.(?P<proj>"
    + "|".join(_unique(p for f in FAMILIES.values() for p in (f.fused_gate_up, f.fused_down))) + ")$")
EXPERT_MODULE = re.compile(rf"(?:^|\.)(?:{_BLOCK})\.\d+\.")  # a per-expert module or tensor, anywhere in a name
IN_EXPERTS = re.compile(rf"(?:^|\.)(?:{_BLOCK})\.")  # any expert tensor, fused or per expert


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


def expert_counts(config: dict[str, Any]) -> set[int]:
    """Every expert count the config states."""
    return {v for _, v in find_keys(config, EXPERT_COUNT_KEYS)}


def num_experts(config: dict[str, Any]) -> int | None:
    counts = expert_counts(config)
    return counts.pop() if len(counts) == 1 else None


def top_k(config: dict[str, Any]) -> int | None:
    return max((v for _, v in find_keys(config, TOP_K_KEYS)), default=None)


def find_keys(obj: Any, keys: tuple[str, ...], path: tuple = (), int_only: bool = True):
    """(path, value) of every occurrence of the keys in nested dicts (integer values only, unless not `int_only`)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and (not int_only or (isinstance(v, int) and not isinstance(v, bool))):
                yield (*path, k), v
            yield from find_keys(v, keys, (*path, k), int_only)


def expected_moe_layers(config: dict[str, Any]) -> set[int] | None:
    """The decoder layers that have experts, by the config's conventions (None if it cannot tell)."""
    text = text_config(config)
    total = text.get("num_hidden_layers")
    if not isinstance(total, int):
        return None
    if text.get("enable_moe_block") is False:
        return set()
    dense = set(text.get("mlp_only_layers") or [])
    step = text.get("decoder_sparse_step") or 1
    first = text.get("first_k_dense_replace") or 0
    return {i for i in range(total) if i not in dense and (i + 1) % step == 0 and i >= first}


def family_of(config: dict[str, Any]) -> Family | None:
    for c in (text_config(config), config):
        name = MODEL_TYPES.get(c.get("model_type", ""))
        if name:
            return FAMILIES[name]
    return None


def moe_dims(config: dict[str, Any], family: Family) -> tuple[int, int, int]:
    """(experts, hidden, expert intermediate size) from the config."""
    text = text_config(config)
    return num_experts(config), text.get("hidden_size"), text.get(family.intermediate_key)


def expert_module(layer_prefix: str, family: Family, expert: int, projection: str) -> str:
    return f"{layer_prefix}{family.block}.{expert}.{projection}"
