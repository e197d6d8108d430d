"""Expert surgery: remove the experts a drop map names from a checkpoint, tensor by tensor.

Layouts handled, by the tensor names of every family in variants/families.py (any prefix before
`layers.N.`, e.g. Gemma 4's `model.language_model.`):

* fused 3-D experts `<block>.<param>` (Gemma 4's `experts.gate_up_proj` [E, 2I, H] and
  `experts.down_proj` [E, H, I]; transformers-5 saves of other families), sliced on dim 0;
* per-expert tensors `<block>.N.<param>`, renumbered 0..kept-1: Qwen3-MoE
  `mlp.experts.N.{gate,up,down}_proj.weight`, Mixtral `block_sparse_moe.experts.N.w{1,2,3}.weight`;
* the families' router tensors, sliced on dim 0: `router.proj.weight` and `router.per_expert_scale`
  (Gemma 4; its `router.scale` [H] is not per expert), `mlp.gate.weight`, `block_sparse_moe.gate.weight`.

Everything else is copied byte for byte. The config's expert count (any family's key, at any
depth: `families.EXPERT_COUNT_KEYS`) is updated; tokenizer, chat template,
generation config and the other small files are copied; `omk_ray_provenance.json` records what
was done. The whole plan is validated before a byte is written; the output is written to a
temporary folder beside `out_dir` and renamed into place at the end; an existing `out_dir` is
never overwritten.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omk_ray.files import not_utf8
from omk_ray.variants.checkpoint import (
    PROVENANCE_NAME, CheckpointError, OutTensor, SourceTensor, parse_size, publish, read_tensors, rows, whole,
    write_model,
)
from omk_ray.variants.dropmap import DropMapError, drop_map_hash, validate_drop_map
from omk_ray.variants.families import (
    BLOCKS, EXPERT_COUNT_KEYS, FUSED, LAYER, PER_EXPERT, ROUTER_TENSORS, expected_moe_layers, expert_counts, find_keys,
    num_experts, top_k,
)  # fmt: skip

SURGERY_VERSION = "1"
DEFAULT_MAX_SHARD = "5GB"


class SurgeryError(ValueError):
    """A checkpoint the surgery cannot handle; the message names the tensor or file."""


@dataclass
class MoELayer:
    index: int
    prefix: str
    routers: dict[str, SourceTensor] = field(default_factory=dict)  # name after the prefix -> tensor
    fused: dict[str, SourceTensor] = field(default_factory=dict)
    per_expert: dict[int, dict[tuple[str, str], SourceTensor]] = field(default_factory=dict)  # id -> (block, param)


@dataclass
class PrunePlan:
    num_experts: int
    kept: int
    drop_map: dict[str, list[int]]
    config: dict[str, Any]
    tensors: list[OutTensor]


def prune_checkpoint(
    model_dir: str | Path,
    drop_map: dict,
    out_dir: str | Path,
    provenance: dict | None = None,
    *,
    protected: dict[str, list[int]] | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
) -> Path:
    """Write a copy of `model_dir` without the experts `drop_map` names; returns `out_dir`.

    `provenance` (base id and revision, strategy and parameters, fingerprint, ...) is stored in
    `omk_ray_provenance.json` next to what the surgery records itself. `protected` experts
    (layer -> ids) must not be in the drop map.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists():
        raise SurgeryError(f"{out_dir} already exists; refusing to overwrite it")
    plan = plan_prune(model_dir, drop_map, protected)
    max_bytes = parse_size(max_shard_size)
    if max_bytes < 1:
        raise SurgeryError(f"max_shard_size must be positive, got {max_shard_size!r}")
    record = {
        **(provenance or {}),
        "tool": "omk-ray prune",
        "omk_ray_version": _version(),
        "surgery_version": SURGERY_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_path": str(model_dir.resolve()),
        "num_experts": {"before": plan.num_experts, "after": plan.kept},
        "drop_map_hash": drop_map_hash(plan.drop_map),
        "drop_map": plan.drop_map,
    }
    if protected:
        record["protected"] = protected
    with publish(out_dir, SurgeryError) as tmp:
        write_model(tmp, model_dir, plan.tensors, plan.config, record, max_bytes)
    return out_dir


def plan_prune(model_dir: Path, drop_map: dict, protected: dict[str, list[int]] | None = None) -> PrunePlan:
    """Everything the surgery will write, checked against the checkpoint; writes nothing."""
    config = load_config(model_dir)
    experts = num_experts(config)
    if experts is None:
        raise SurgeryError(f"{model_dir}/config.json: expected one expert count under {EXPERT_COUNT_KEYS}, found "
                           f"{sorted(expert_counts(config)) or 'none'}")
    try:
        tensors = read_tensors(model_dir)
    except CheckpointError as err:
        raise SurgeryError(str(err)) from None
    layers = find_moe_layers(tensors)
    check_layers(layers, experts, expected_moe_layers(config), model_dir)
    clean = validate_drop_map(drop_map, num_experts=experts, layers=sorted(layers), protected=protected,
                              top_k=top_k(config))
    n_drop = len(next(iter(clean.values())))

    out: list[OutTensor] = []
    moe_names: set[str] = set()
    for index, layer in layers.items():
        keep = [e for e in range(experts) if e not in set(clean[str(index)])]
        for t in [*layer.routers.values(), *layer.fused.values()]:
            out.append(rows(t, keep))
            moe_names.add(t.name)
        for new_id, old_id in enumerate(keep if layer.per_expert else []):
            for (block, param), t in layer.per_expert[old_id].items():
                out.append(whole(t, f"{layer.prefix}{block}.{new_id}.{param}"))
        moe_names.update(t.name for params in layer.per_expert.values() for t in params.values())
    out.extend(whole(t) for name, t in tensors.items() if name not in moe_names)
    out.sort(key=lambda t: (str(t.pieces[0].file), t.pieces[0].offset) if t.pieces else ("", 0))

    new_config = json.loads(json.dumps(config))
    for path, _ in find_keys(config, EXPERT_COUNT_KEYS):
        _set(new_config, path, experts - n_drop)
    return PrunePlan(experts, experts - n_drop, clean, new_config, out)


def find_moe_layers(tensors: dict[str, SourceTensor]) -> dict[int, MoELayer]:
    layers: dict[int, MoELayer] = {}
    for name, t in tensors.items():
        m = LAYER.match(name)
        if not m:
            continue
        prefix, rest, index = m["prefix"], m["rest"], int(m["layer"])
        expert = PER_EXPERT.match(rest)
        kind = "router" if rest in ROUTER_TENSORS else "fused" if FUSED.match(rest) else "expert" if expert else None
        if kind is None:
            continue
        layer = layers.setdefault(index, MoELayer(index, prefix))
        if layer.prefix != prefix:
            raise SurgeryError(f"MoE tensors of layer {index} appear under two prefixes: {layer.prefix!r} and {prefix!r}")
        if kind == "router":
            layer.routers[rest] = t
        elif kind == "fused":
            layer.fused[rest] = t
        else:
            layer.per_expert.setdefault(int(expert["expert"]), {})[(expert["block"], expert["param"])] = t
    return dict(sorted(layers.items()))


def check_layers(layers: dict[int, MoELayer], num_experts: int, expected: set[int] | None, model_dir: Path) -> None:
    """Every MoE layer complete and alike: same router and expert tensors, expert dim = num_experts."""
    if not layers:
        raise SurgeryError(f"{model_dir}: no MoE expert tensors found (layouts known: fused or per-expert tensors "
                           f"under {', '.join(BLOCKS)})")
    if expected is not None and expected != set(layers):
        missing, extra = sorted(expected - set(layers)), sorted(set(layers) - expected)
        raise SurgeryError(
            f"{model_dir}: the config expects MoE layers {sorted(expected)}, the weights have them for "
            f"{sorted(layers)}" + (f"; missing every MoE tensor of layers {missing}" if missing else "")
            + (f"; unexpected MoE tensors in layers {extra}" if extra else "")
        )
    router_names = set().union(*(layer.routers for layer in layers.values()))
    fused_names = set().union(*(layer.fused for layer in layers.values()))
    expert_params = set().union(*(p for layer in layers.values() for p in layer.per_expert.values()))
    if fused_names and expert_params:
        raise SurgeryError(f"{model_dir}: mixes fused and per-expert tensors; cannot tell the layout")
    for index, layer in layers.items():
        where = f"{model_dir}: layer {index}"
        for kind, want, have in (("router", router_names, layer.routers), ("expert", fused_names, layer.fused)):
            for name in sorted(want - set(have)):
                raise SurgeryError(f"{where}: missing {kind} tensor {layer.prefix}{name}")
        if not layer.routers:
            raise SurgeryError(f"{where}: has experts but no router tensor (one of {ROUTER_TENSORS})")
        if not layer.fused and not layer.per_expert:
            raise SurgeryError(f"{where}: has a router but no expert tensors")
        for t in [*layer.routers.values(), *layer.fused.values()]:
            if not t.shape or t.shape[0] != num_experts:
                raise SurgeryError(f"{where}: {t.name} has shape {list(t.shape)}; its first dimension should be "
                                   f"the {num_experts} experts of the config")
        if expert_params:
            extra = sorted(e for e in layer.per_expert if e >= num_experts)
            if extra:
                raise SurgeryError(f"{where}: has experts {extra}, but the config says {num_experts} experts")
            for e in range(num_experts):
                for block, param in sorted(expert_params - set(layer.per_expert.get(e, {}))):
                    raise SurgeryError(f"{where}: missing expert tensor {layer.prefix}{block}.{e}.{param}")


def load_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise SurgeryError(f"{model_dir}: no such checkpoint folder")
    if not path.is_file():
        raise SurgeryError(f"{model_dir}: no config.json (is this a Hugging Face checkpoint folder?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SurgeryError(not_utf8(path, err)) from None
    except json.JSONDecodeError as err:
        raise SurgeryError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise SurgeryError(f"{path}: not a model config (a JSON object)")
    if list(find_keys(config, ("quantization_config",), int_only=False)):
        raise SurgeryError(f"{path}: the checkpoint is quantized; prune the unquantized model, then quantize")
    return config


def _set(obj: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _version() -> str:
    from omk_ray import __version__

    return __version__


__all__ = ["SurgeryError", "DropMapError", "plan_prune", "prune_checkpoint", "PROVENANCE_NAME"]
