"""Where the Linear weights of an MoE checkpoint are, under the names vLLM loads quantized ones by.

A quantized checkpoint stores every expert as its own 2-D Linear: vLLM's fused-MoE loader
(`RoutedExperts.load_weights` with `build_expert_params_mapping`) maps
`<layer>.<block>.{i}.<gate|up|down>.<param>` onto its stacked `w13_*` / `w2_*` parameters, and
its NVFP4 MoE method has no parameter for a fused 3-D tensor. The blocks, projections and routers
of each family are rows of variants/families.py.

Gemma 4's unquantized checkpoints hold fused 3-D experts (`experts.gate_up_proj` [E, 2I, H], gate
rows first, and `experts.down_proj` [E, H, I]); `find_linears` splits them into those per-expert
Linears, as byte ranges of the fused tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from omk_ray.variants.checkpoint import SourceTensor
from omk_ray.variants.families import FAMILIES, FUSED_PROJECTION, Family, expert_module

# Linear layers that vLLM fuses into one (qkv_proj, gate_up_proj, w13): one global scale each.
FUSED_SETS = (("q_proj", "k_proj", "v_proj"), *dict.fromkeys((f.gate, f.up) for f in FAMILIES.values()))
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
        fused = FUSED_PROJECTION.match(name)
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
        if proj == family.fused_down:
            out.append(Linear(expert_module(layer, family, e, family.down), t, e * rows, rows, cols))
        else:
            half = rows // 2
            out.append(Linear(expert_module(layer, family, e, family.gate), t, e * rows, half, cols))
            out.append(Linear(expert_module(layer, family, e, family.up), t, e * rows + half, half, cols))
    return out
