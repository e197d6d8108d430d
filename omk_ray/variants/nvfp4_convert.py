"""`omk-ray convert-nvfp4 SRC DST --to modelopt|compressed-tensors`: one NVFP4A16 checkpoint in
the other serialization, streamed like the quantizer's output (packed bytes and FP8 scales copied as
byte ranges, only the 4-byte global scales computed).

compressed-tensors -> ModelOpt: `weight_packed` -> `weight`, `weight_scale` kept,
`weight_global_scale` [1] -> `weight_scale_2` [] = fp32(1 / global scale) (compressed-tensors'
own `ModelOptNvfp4Converter` documents the same mapping, the other way); config.json gets ModelOpt's
`quantization_config` and the folder an `hf_quant_config.json`; ignore patterns become wildcards.
ModelOpt -> compressed-tensors: the inverse (`nvfp4.global_scale_of`: a global scale whose reciprocal
is `weight_scale_2` exactly, so vLLM multiplies by the same number); a legacy `input_scale` is
dropped (vLLM drops it for W4A16 too). The source must pass `check_variant`, and so must the result
before it is renamed into place. Global scales written by omk-ray's quantizer convert both ways bit
for bit; others that have no exact reciprocal are counted in the provenance (`inexact_global_scales`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omk_ray.variants import nvfp4
from omk_ray.variants.checkpoint import (
    Computed, OutTensor, SourceTensor, parse_size, publish, read_bytes, read_tensors, whole, write_model,
)
from omk_ray.variants.quantize import QUANT_VERSION, nvfp4_configs, write_side_config
from omk_ray.variants.surgery import DEFAULT_MAX_SHARD


class ConvertError(ValueError):
    """A checkpoint that cannot be converted; the message says why."""


def convert_nvfp4(src: str | Path, dst: str | Path, to: str, *,
                  max_shard_size: int | str = DEFAULT_MAX_SHARD) -> Path:
    """Write `src` (an NVFP4A16 checkpoint) to `dst` in the serialization `to`; returns `dst`."""
    from omk_ray.variants.check import NAMES, check_variant

    src, dst = Path(src), Path(dst)
    if to not in nvfp4.FORMATS:
        raise ConvertError(f"unknown NVFP4 format {to!r}; choose one of {', '.join(nvfp4.FORMATS)}")
    report = check_variant(src)
    if not report.ok:
        raise ConvertError(f"{src} fails the layout check, nothing converted:\n  " + "\n  ".join(report.problems))
    if not report.quantized:
        raise ConvertError(f"{src} is not quantized")
    if report.format == to:
        raise ConvertError(f"{src} is already {to}")
    config = json.loads((src / "config.json").read_text())
    quant = config.pop("quantization_config")
    if to == "modelopt":
        ignore = list(quant.get("ignore") or [])
        try:
            [nvfp4.glob_of(p) for p in ignore]
        except ValueError as err:
            raise ConvertError(str(err)) from None
    else:
        ignore = [nvfp4.pattern_of(p) for p in quant.get("ignore") or []]
    new_config, side_files = nvfp4_configs(config, ignore, to)
    tensors, inexact = _renamed(read_tensors(src), NAMES[report.format], NAMES[to])
    record = {"tool": "omk-ray convert-nvfp4", "quant_version": QUANT_VERSION, "from": report.format, "to": to,
              "inexact_global_scales": inexact, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "base_path": str(src.resolve())}
    with publish(dst, ConvertError) as tmp:
        write_model(tmp, src, tensors, new_config, record, parse_size(max_shard_size))
        (tmp / nvfp4.HF_QUANT_CONFIG).unlink(missing_ok=True)  # a ModelOpt source's, copied as a side file
        write_side_config(tmp, side_files)
        result = check_variant(tmp)
        if not result.ok:
            raise ConvertError("the converted checkpoint fails the layout check (nothing was kept):\n  "
                               + "\n  ".join(result.problems))
    return dst


def _renamed(tensors: dict[str, SourceTensor], src, dst) -> tuple[list[OutTensor], int]:
    """The output tensors in the source's order (quantized modules renamed, global scales turned
    into the other convention) and how many global scales had no exact reciprocal."""
    import torch

    modules = {n.removesuffix(f".{src.global_scale}") for n in tensors if n.endswith(f".{src.global_scale}")}
    out, inexact = [], 0
    for t in sorted(tensors.values(), key=lambda t: (str(t.file), t.offset)):
        module, _, param = t.name.rpartition(".")
        if module not in modules:
            out.append(whole(t))
        elif param == src.packed:
            out.append(whole(t, f"{module}.{dst.packed}"))
        elif param == nvfp4.SCALE:
            out.append(whole(t))
        elif param == src.global_scale:
            value = torch.frombuffer(bytearray(read_bytes(t, 0, 4)), dtype=torch.float32)
            if dst.format == "modelopt":
                new = nvfp4.scale_2_of(value)
                exact = torch.equal(nvfp4.global_scale_of(new), value)
            else:
                new = nvfp4.global_scale_of(value)
                exact = torch.equal(nvfp4.scale_2_of(new), value.reshape(()))
            inexact += not exact
            data = new.contiguous().numpy().tobytes()
            out.append(OutTensor(f"{module}.{dst.global_scale}", "F32", tuple(new.shape),
                                 [Computed(4, lambda data=data: data)]))
        # anything else of a quantized module (a legacy ModelOpt input_scale) is dropped
    return out, inexact


__all__ = ["ConvertError", "convert_nvfp4"]
