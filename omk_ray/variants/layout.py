"""Where the Linear weights of an MoE checkpoint are, under the names vLLM loads quantized ones by.

A quantized checkpoint stores every expert as its own 2-D Linear: vLLM's fused-MoE loader
(`RoutedExperts.load_weights` with `build_expert_params_mapping`) maps
`<layer>.<block>.{i}.<gate|up|down>.<param>` onto its stacked `w13_*` / `w2_*` parameters, and
its NVFP4 MoE method has no parameter for a fused 3-D tensor. The blocks and names per family:

    gemma4     layers.N.experts.{i}.{gate_proj,up_proj,down_proj}            router layers.N.router.proj
    qwen3_moe  layers.N.mlp.experts.{i}.{gate_proj,up_proj,down_proj}        router layers.N.mlp.gate
    mixtral    layers.N.block_sparse_moe.experts.{i}.{w1,w3,w2}              router layers.N.block_sparse_moe.gate

Gemma 4's unquantized checkpoints hold fused 3-D experts (`experts.gate_up_proj` [E, 2I, H], gate
rows first, and `experts.down_proj` [E, H, I]); `find_linears` splits them into those per-expert
Linears, as byte ranges of the fused tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from omk_ray.variants.checkpoint import SourceTensor
from omk_ray.variants.hf_config import num_experts, text_config

# Linear layers that vLLM fuses into one (qkv_proj, gate_up_proj, w13): one global scale each.
FUSED_SETS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3"))
# 2-D weights that are not Linear layers in vLLM (never targeted by a `Linear` config group).
NOT_LINEAR = re.compile(r"(^|\.)(embed_tokens|embed_tokens_per_layer|wte|word_embeddings|lm_head)$")
DEFAULT_IGNORE = (
    "lm_head",
    "re:.*router.*",
    "re:.*mlp\\.gate$",
    "re:.*block_sparse_moe\\.gate$",
    "re:.*shared_expert_gate$",
    "re:.*embed.*",
    "re:.*vision.*",
    "re:.*audio.*",
    "re:.*multi_modal_projector.*",
)
_IN_LAYER = re.compile(r"(^|\.)layers\.\d+\.")
_FUSED_EXPERTS = re.compile(r"^(?P<layer>(?:.*\.)?layers\.\d+\.)(?:(?:mlp|block_sparse_moe)\.)?experts\.(?P<proj>gate_up_proj|down_proj)$")


@dataclass(frozen=True)
class Family:
    name: str
    block: str  # the experts' module path after `layers.N.`
    gate: str
    up: str
    down: str
    router: str
    intermediate_key: str
    fused_on_disk: bool  # transformers stores (and loads) this family's experts as fused 3-D tensors

    @property
    def projections(self) -> tuple[str, str, str]:
        return self.gate, self.up, self.down


FAMILIES = {
    "gemma4": Family("gemma4", "experts", "gate_proj", "up_proj", "down_proj", "router.proj",
                     "moe_intermediate_size", True),
    "qwen3_moe": Family("qwen3_moe", "mlp.experts", "gate_proj", "up_proj", "down_proj", "mlp.gate",
                        "moe_intermediate_size", False),
    "mixtral": Family("mixtral", "block_sparse_moe.experts", "w1", "w3", "w2", "block_sparse_moe.gate",
                      "intermediate_size", False),
}
MODEL_TYPES = {"gemma4": "gemma4", "gemma4_text": "gemma4", "qwen3_moe": "qwen3_moe", "mixtral": "mixtral"}


@dataclass(frozen=True)
class Linear:
    """One Linear weight [rows, cols] to quantize: rows [first_row, first_row + rows) of `source`
    seen as a 2-D tensor (its leading dimensions flattened)."""

    module: str
    source: SourceTensor
    first_row: int
    rows: int
    cols: int


class LayoutError(ValueError):
    """A checkpoint whose Linear layers cannot be named for vLLM; the message names the tensor."""


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


def ignored(module: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """compressed-tensors' own matching: exact names, or `re:` patterns matched from the start."""
    from compressed_tensors.utils.match import match_name

    return any(match_name(module, p) for p in patterns)


def fusion_key(module: str) -> str:
    """Modules that vLLM fuses share a key (and must share a global scale); others are their own."""
    parent, _, leaf = module.rpartition(".")
    for members in FUSED_SETS:
        if leaf in members:
            return f"{parent}.{'+'.join(members)}"
    return module


def find_linears(tensors: dict[str, SourceTensor], family: Family | None,
                 ignore: tuple[str, ...] | list[str]) -> tuple[list[Linear], list[str]]:
    """(Linears of the decoder layers to quantize, 2-D weight modules left as they are and not
    covered by `ignore`, which the config must list as ignored)."""
    linears: list[Linear] = []
    left: list[str] = []
    for name, t in sorted(tensors.items()):
        fused = _FUSED_EXPERTS.match(name)
        if fused and len(t.shape) == 3:
            if ignored(name.rpartition(".")[0], ignore):
                continue
            if family is None:
                raise LayoutError(f"{name}: fused 3-D experts of a model family without a known per-expert "
                                  f"layout (known: {', '.join(FAMILIES)})")
            linears.extend(_split_fused(t, fused["layer"], fused["proj"], family))
            continue
        if not name.endswith(".weight") or len(t.shape) != 2:
            continue
        module = name.removesuffix(".weight")
        if ignored(module, ignore):
            continue
        if _IN_LAYER.search(module) and not NOT_LINEAR.search(module):
            linears.append(Linear(module, t, 0, t.shape[0], t.shape[1]))
        else:
            left.append(module)
    return linears, left


def _split_fused(t: SourceTensor, layer: str, proj: str, family: Family) -> list[Linear]:
    experts, rows, cols = t.shape
    out = []
    for e in range(experts):
        if proj == "down_proj":
            out.append(Linear(expert_module(layer, family, e, family.down), t, e * rows, rows, cols))
        else:
            half = rows // 2
            out.append(Linear(expert_module(layer, family, e, family.gate), t, e * rows, half, cols))
            out.append(Linear(expert_module(layer, family, e, family.up), t, e * rows + half, half, cols))
    return out
