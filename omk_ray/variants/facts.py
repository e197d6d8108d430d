"""A variant's facts, the model card's first table: read from its checkpoint's headers and provenance.

    checkpoint_facts(model, revision=None, online=False) -> Facts
        parameter counts (total, in experts, active per token) summed over the safetensors
        headers (the tensor table only: no weight is read), experts per MoE layer and top-k from
        config.json, and from `omk_ray_provenance.json` (written by `omk-ray prune`, the grid
        builds and `omk-ray quantize`) the experts dropped per layer and the drop map's recipe.
        `model` is a checkpoint folder, else a Hugging Face hub id: its local cache, or with
        `online` the Hub's headers (range requests, `get_safetensors_metadata`).
        A folder holding a GGUF model file instead of safetensors (a grid's GGUF build, a GGUF
        download) is read with the `gguf` package (`gguf_facts`): the tensor table and the
        metadata (expert count, experts used, file type), never the weights.
    Facts.merged(declared): with the facts a grid variant declares by hand (`facts:`, validated by
        `omk_ray.config.DeclaredFacts`), for a checkpoint not at hand (a GGUF behind an endpoint,
        a model evaluated elsewhere).

Quantized checkpoints count logical parameters: compressed-tensors' packed weights
(`*.weight_packed`) hold 8/bits values per byte of their dtype, and scales, zero points and
global scales are not parameters.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omk_ray.config import DeclaredFacts
from omk_ray.variants.checkpoint import CheckpointError, read_tensors
from omk_ray.variants.families import IN_EXPERTS, find_keys, num_experts, top_k
from omk_ray.variants.surgery import PROVENANCE_NAME

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_QUANT_AUX = ("weight_scale", "weight_global_scale", "input_global_scale", "weight_zero_point", "weight_shape",
              "input_scale", "weight_g_idx")
_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
               "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64}


class FactsError(ValueError):
    """A model whose facts cannot be read; the message names the model and the problem."""


@dataclass
class Facts:
    model: str | None = None
    total_params: float | None = None
    expert_params: float | None = None
    active_params: float | None = None  # per token: everything but the experts a token's router does not pick
    moe_layers: int | None = None
    experts_per_layer: int | None = None
    base_experts: int | None = None  # experts per layer of the checkpoint it was pruned from
    dropped_per_layer: int | None = None
    top_k: int | None = None
    quantization: str | None = None
    drop_map: str | None = None  # the recipe, in words
    recipe: dict[str, Any] = field(default_factory=dict)  # the recipe's fields, as the provenance records them
    source: str = ""  # where these facts come from
    basis: list[str] = field(default_factory=list)  # how they were read: "headers", "gguf", "declared"

    @property
    def capacity_removed(self) -> float | None:
        """Share of each MoE layer's experts that were dropped."""
        if self.dropped_per_layer is None or not self.base_experts:
            return None
        return self.dropped_per_layer / self.base_experts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "capacity_removed": self.capacity_removed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Facts":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def merged(self, declared: "DeclaredFacts | None") -> "Facts":
        """These facts with every field `declared` sets written over them."""
        if declared is None:
            return self
        given = declared.model_dump(exclude_none=True)
        if not given:
            return self
        source = f"{self.source}; declared in the grid" if self.source else "declared in the grid"
        return Facts(**{**asdict(self), **given, "source": source, "basis": [*self.basis, "declared"]})


# -- reading ----------------------------------------------------------------------------------


def checkpoint_facts(model: str, revision: str | None = None, online: bool = False) -> Facts:
    """The facts of a checkpoint folder or hub id (see the module docstring). Raises FactsError."""
    folder = Path(model).expanduser()
    if folder.is_file() and folder.suffix == ".gguf":
        return gguf_facts(folder, None, model)
    if folder.is_dir():
        gguf = _gguf_model(folder)
        if gguf is not None and not any(folder.glob("*.safetensors")):
            return gguf_facts(gguf, _read_json(folder / PROVENANCE_NAME, required=False), model)
        config, provenance = _read_json(folder / "config.json"), _read_json(folder / PROVENANCE_NAME, required=False)
        return facts_from(model, config, _local_tensors(folder), provenance, f"checkpoint {folder.name}")
    cached = _hub_cache(model, revision)
    if cached is not None:
        facts = checkpoint_facts(str(cached))
        facts.model, facts.source = model, f"hub {model} (local cache)"
        return facts
    if not online:
        raise FactsError(f"{model}: not a local folder, and not in the Hugging Face cache")
    return _hub_facts(model, revision)


def facts_from(model: str, config: dict, tensors: list[tuple[str, str, tuple[int, ...]]], provenance: dict | None,
               source: str) -> Facts:
    """Facts from a config, the tensor table (name, dtype, shape) and the provenance record."""
    bits = _quant_bits(config)
    total = expert = 0
    layers: set[int] = set()
    for name, dtype, shape in tensors:
        n = _logical(name, dtype, shape, bits)
        total += n
        if IN_EXPERTS.search(name):
            expert += n
            if m := _LAYER.search(name):
                layers.add(int(m[1]))
    experts, k = num_experts(config), top_k(config)
    active = None
    if experts and k and tensors:
        active = total - expert * (1 - k / experts)
    facts = Facts(model=model, total_params=float(total) if tensors else None,
                  expert_params=float(expert) if tensors else None, active_params=active, moe_layers=len(layers) or None,
                  experts_per_layer=experts, top_k=k, quantization=_quantization(config), source=source,
                  basis=["headers"] if tensors else [])
    _add_provenance(facts, provenance or {})
    return facts


def _gguf_model(folder: Path) -> Path | None:
    """The one model .gguf of a folder (an importance matrix is not a model), else None."""
    found = sorted(p for p in folder.glob("*.gguf") if p.name != "imatrix.gguf")
    return found[0] if len(found) == 1 else None


def _gguf_module():
    """The `gguf` package: installed, else the one of the pinned llama.cpp build (omk-ray llama.cpp tools)."""
    try:
        import gguf
    except ImportError:
        from omk_ray.variants.gguf import GGUFError, import_gguf

        try:
            gguf = import_gguf()
        except (GGUFError, OSError, ImportError, RuntimeError, ValueError) as err:
            raise FactsError(f"no `gguf` package to read GGUF files with (pip install gguf): {err}") from None
    return gguf


def gguf_facts(path: Path, provenance: dict | None, model: str | None = None) -> Facts:
    """Facts of a GGUF file from its metadata and tensor table (with `gguf`): parameters summed over the
    tensors' element counts (experts: the `*_exps.weight` tensors), experts per layer and experts used
    from `<arch>.expert_count` / `<arch>.expert_used_count`, the quantization from `general.file_type`."""
    gguf = _gguf_module()
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise FactsError(f"{path.name}: not a readable GGUF file ({err})") from None
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = meta.get("general.architecture")
    experts, k = meta.get(f"{arch}.expert_count"), meta.get(f"{arch}.expert_used_count")
    total = expert = 0
    layers: set[int] = set()
    for t in reader.tensors:
        n = int(t.n_elements)
        total += n
        if "_exps." in t.name and t.name.endswith(".weight"):
            expert += n
            if m := re.match(r"blk\.(\d+)\.", t.name):
                layers.add(int(m[1]))
    active = total - expert * (1 - k / experts) if experts and k else None
    file_type = meta.get("general.file_type")
    try:
        quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        quant = f"file type {file_type}"
    facts = Facts(model=model or path.name, total_params=float(total), expert_params=float(expert) if layers else None,
                  active_params=active, moe_layers=len(layers) or None,
                  experts_per_layer=int(experts) if experts else None, top_k=int(k) if k else None,
                  quantization=f"GGUF {quant}" if quant else "GGUF", source=f"GGUF {path.name}", basis=["gguf"])
    _add_provenance(facts, provenance or {})
    return facts


def _local_tensors(folder: Path) -> list[tuple[str, str, tuple[int, ...]]]:
    try:
        return [(t.name, t.dtype, t.shape) for t in read_tensors(folder).values()]
    except CheckpointError as err:
        raise FactsError(str(err)) from None


def _hub_cache(model: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model with its config and weights, if any."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a repo id, not cached: no local copy
        return None
    return path if (path / "config.json").is_file() and any(path.glob("*.safetensors")) else None


def _hub_facts(model: str, revision: str | None) -> Facts:
    """Facts over the network: config.json and the provenance file, and the headers (not the weights)."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        config = json.loads(Path(hf_hub_download(model, "config.json", revision=revision)).read_text())
        meta = HfApi().get_safetensors_metadata(model, revision=revision)
    except Exception as err:  # noqa: BLE001 - offline, gated, no such repo, no safetensors
        raise FactsError(f"{model}: cannot read its config and safetensors headers from the Hub: {err}") from None
    try:
        provenance = json.loads(Path(hf_hub_download(model, PROVENANCE_NAME, revision=revision)).read_text())
    except Exception:  # noqa: BLE001 - most models have no provenance file
        provenance = None
    tensors = [(name, info.dtype, tuple(info.shape))
               for f in meta.files_metadata.values() for name, info in f.tensors.items()]
    return facts_from(model, config, tensors, provenance, f"hub {model}" + (f"@{revision}" if revision else ""))


def _read_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise FactsError(f"{path.parent}: no {path.name} (is this a Hugging Face checkpoint folder?)")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FactsError(f"{path}: not valid JSON: {err}") from None


# -- counting -----------------------------------------------------------------------------------


def _logical(name: str, dtype: str, shape: tuple[int, ...], bits: int) -> int:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in _QUANT_AUX:
        return 0
    n = math.prod(shape)
    if leaf == "weight_packed":
        return n * _DTYPE_BITS.get(dtype, 8) // bits
    return n


def _quant_bits(config: dict) -> int:
    quant = next((v for _, v in find_keys(config, ("quantization_config",), int_only=False)), None) or {}
    for group in (quant.get("config_groups") or {}).values():
        bits = ((group or {}).get("weights") or {}).get("num_bits")
        if isinstance(bits, int) and bits > 0:
            return bits
    return 4


def _quantization(config: dict) -> str:
    quant = next((v for _, v in find_keys(config, ("quantization_config",), int_only=False)), None)
    if isinstance(quant, dict):
        parts = [quant.get("quant_method"), quant.get("format") or quant.get("quant_algo")]
        return " ".join(str(p) for p in parts if p) or "quantized"
    dtype = next((v for _, v in find_keys(config, ("torch_dtype", "dtype"), int_only=False) if v), None)
    return f"none ({dtype})" if dtype else "none"


# -- provenance -------------------------------------------------------------------------------


def _add_provenance(facts: Facts, record: dict) -> None:
    """Walk the provenance chain (quantize -> prune -> ...): the prune's expert counts and recipe,
    the quantizer's scheme."""
    chain = []
    while isinstance(record, dict) and record:
        chain.append(record)
        record = record.get("base_provenance")
    for r in chain:
        if r.get("scheme") and facts.quantization and not facts.quantization.startswith("none") \
                and str(r["scheme"]).lower() not in facts.quantization.lower():
            facts.quantization = f"{r['scheme']} ({facts.quantization})"
        counts = r.get("num_experts")
        if isinstance(counts, dict) and facts.dropped_per_layer is None:
            facts.base_experts = counts.get("before")
            if counts.get("before") is not None and counts.get("after") is not None:
                facts.dropped_per_layer = counts["before"] - counts["after"]
            facts.recipe = _recipe(r)
            facts.drop_map = describe_recipe(facts.recipe)


def _recipe(record: dict) -> dict[str, Any]:
    """The drop map's recipe from a prune record: a grid build's `build` block, or the plan parameters
    `omk-ray prune --summary` recorded as `strategy`."""
    build = record.get("build") or {}
    plan = record.get("strategy") if isinstance(record.get("strategy"), dict) else {}
    recipe: dict[str, Any] = {}
    for key in ("strategy", "normalize", "alpha", "protect_top", "protect_per_class", "weights", "params",
                "split_classes"):
        value = build.get(key, plan.get(key))
        if value not in (None, {}, []):
            recipe[key] = value
    classes = build.get("classes") or plan.get("classes")
    if classes:
        recipe["classes"] = list(classes)  # the plan records {name: merged classes}: its names
    for key, what in (("scores", "CD scores"), ("profile_prompts", "profiled on"), ("drop_map", "drop map")):
        value = build.get(key)
        if value == "default":
            recipe["source"] = f"{what} the shipped prompts"
        elif isinstance(value, str):
            recipe["source"] = f"{what} {Path(value).name}"
        elif isinstance(value, dict):
            recipe["source"] = "a drop map given inline"
    if record.get("drop_map_hash"):
        recipe["drop_map_hash"] = record["drop_map_hash"]
    return recipe


def describe_recipe(recipe: dict[str, Any]) -> str:
    """The recipe in the card's words, e.g. "max over mean-normalized classes, protect_top 16, CD scores cd.json"."""
    strategy = recipe.get("strategy")
    if strategy is None:
        parts = []
    elif strategy == "pooled":
        parts = ["pooled over classes"]
    else:
        parts = [f"{strategy} over {recipe.get('normalize', 'mean')}-normalized classes"
                 + (f" ({', '.join(recipe['classes'])})" if recipe.get("classes") else "")]
    split = recipe.get("split_classes")
    if split:
        parts.append(f"{', '.join(split)} split into subclasses")
    for key in ("protect_top", "protect_per_class"):
        if recipe.get(key):
            parts.append(f"{key} {recipe[key]}")
    if recipe.get("weights"):
        parts.append("weights " + ", ".join(f"{k}={v:g}" for k, v in recipe["weights"].items()))
    if recipe.get("params"):
        parts.append(", ".join(f"{k}={v:g}" for k, v in recipe["params"].items()))
    if recipe.get("source"):
        parts.append(recipe["source"])
    return ", ".join(parts) or "unrecorded"
