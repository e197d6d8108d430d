"""Load an NVFP4A16 checkpoint into transformers by dequantizing it: the W4A16 arithmetic on any device.

transformers cannot run NVFP4 weights (compressed-tensors' or ModelOpt's) on CPU, and does not load per-expert
quantized tensors into Gemma 4's fused experts. So every quantized module becomes its weight
again (e2m1 x scale / global_scale, in float32, then the requested dtype; a ModelOpt
`weight_scale_2` is turned into the global scale whose reciprocal it is), the experts a family
stores fused are stacked back (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj`
[E, H, I]), and the model is built from that state dict with the config's `quantization_config`
removed; other families go through transformers' own per-expert conversion. Memory: the
dequantized model, once, plus the packed checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omk_ray.variants import nvfp4
from omk_ray.variants.families import family_of

_FUSABLE = re.compile(r"^(?P<prefix>.+\.)(?P<expert>\d+)\.(?P<proj>[A-Za-z0-9_]+)$")


def checkpoint_config(model_path: str, revision: str | None = None) -> dict[str, Any]:
    """config.json of a folder or hub id, as a dict."""
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(model_path, revision=revision)[0]


def is_nvfp4_checkpoint(model_path: str, revision: str | None = None) -> bool:
    return nvfp4.is_nvfp4(checkpoint_config(model_path, revision))


def load_dequantized(model_path: str, *, revision: str | None = None, dtype: Any = "auto", **kwargs):
    """An `AutoModelForCausalLM` of an NVFP4 checkpoint with dequantized weights (kwargs go to
    `from_pretrained`, e.g. device_map); dtype "auto" is the config's dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = _local_folder(model_path, revision)
    raw = json.loads((folder / "config.json").read_text())
    if dtype == "auto":
        dtype = getattr(torch, raw.get("dtype") or raw.get("torch_dtype") or "float32")
    state = dequantized_state_dict(folder, dtype)
    config = AutoConfig.from_pretrained(folder)
    del config.quantization_config
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    model = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype, **kwargs)
    if (folder / "generation_config.json").is_file():  # a state dict load does not read it (stop tokens)
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def dequantized_state_dict(folder: str | Path, dtype) -> dict:
    """name -> tensor of an NVFP4 checkpoint, in the layout of its unquantized original."""
    from safetensors import safe_open

    from omk_ray.variants.checkpoint import read_tensors

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    files: dict[Path, list[str]] = {}
    for name, t in read_tensors(folder).items():
        files.setdefault(t.file, []).append(name)
    state = {}
    for file, names in files.items():
        with safe_open(file, framework="pt") as f:
            for name in names:
                state[name] = f.get_tensor(name)
    for module, (packed, scale, gscale) in pop_triples(state, nvfp4.format_of(config)).items():
        state[f"{module}.weight"] = nvfp4.dequantize(packed, scale, gscale, dtype)
    family = family_of(config)
    if family is not None and family.fused_on_disk:
        fuse_experts(state, family)
    return state


def pop_triples(state: dict, nvfp4_format: str | None) -> dict[str, tuple]:
    """module -> (packed, scale, global scale) of every quantized module, taken out of `state`; a
    ModelOpt module's `weight_scale_2` becomes its global scale, its `input_scale` (if any) goes."""
    triples = {}
    if nvfp4_format == "modelopt":
        for name in [n for n in state if n.endswith(f".{nvfp4.MODELOPT_SCALE_2}")]:
            module = name.removesuffix(f".{nvfp4.MODELOPT_SCALE_2}")
            state.pop(f"{module}.{nvfp4.MODELOPT_INPUT_SCALE}", None)
            triples[module] = (state.pop(f"{module}.{nvfp4.MODELOPT_PACKED}"), state.pop(f"{module}.{nvfp4.SCALE}"),
                               nvfp4.global_scale_of(state.pop(name)))
        return triples
    for name in [n for n in state if n.endswith(f".{nvfp4.PACKED}")]:
        module = name.removesuffix(f".{nvfp4.PACKED}")
        triples[module] = tuple(state.pop(f"{module}.{p}") for p in nvfp4.PARAMS)
    return triples


def fuse_experts(state: dict, family) -> None:
    """Per-expert `<layer><block>.{i}.<proj>.weight` back into the fused 3-D tensors, in place."""
    import torch

    blocks: dict[str, dict[int, dict[str, Any]]] = {}
    for name in list(state):
        if not name.endswith(".weight"):
            continue
        m = _FUSABLE.match(name.removesuffix(".weight"))
        if m and m["prefix"].endswith(f".{family.block}.") and m["proj"] in family.projections:
            blocks.setdefault(m["prefix"], {}).setdefault(int(m["expert"]), {})[m["proj"]] = state.pop(name)
    for prefix, experts in blocks.items():
        order = [experts[e] for e in range(len(experts))]
        state[f"{prefix}{family.fused_gate_up}"] = torch.stack([torch.cat([p[family.gate], p[family.up]]) for p in order])
        state[f"{prefix}{family.fused_down}"] = torch.stack([p[family.down] for p in order])


def _local_folder(model_path: str, revision: str | None) -> Path:
    path = Path(model_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=model_path, revision=revision))
