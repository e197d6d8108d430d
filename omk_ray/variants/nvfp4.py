"""NVFP4 weights in compressed-tensors' `nvfp4-pack-quantized` format (and ModelOpt's): the numbers.

Per Linear weight W [N, K] (K a multiple of 16): `weight_packed` [N, K/2] uint8 (two FP4 E2M1
codes per byte, the even column in the low nibble; bit 3 of a code is the sign),
`weight_scale` [N, K/16] FP8 E4M3 (one per group of 16 along K) and `weight_global_scale` [1]
FP32, stored as a divisor: W ~= e2m1 x (weight_scale / weight_global_scale). The global scale is
448 x 6 / amax, so the group scales use FP8's whole range; tensors that vLLM fuses (q/k/v, gate/up)
are given one global scale, computed over all of them.

The scales come from compressed-tensors (`generate_gparam`, `calculate_qparams`, the `NVFP4A16`
preset). The E2M1 rounding and the packing are done here, because compressed-tensors' own
(`NVFP4PackedCompressor.compress`) compiles its rounding with torch.compile on first use (74 s
on this 2-core machine) and packs through an [N, K, 8] float tensor (9 MB/s measured): on CPU
by two numba kernels (one pass each over the weights, `nvfp4_kernels`), elsewhere (CUDA) by
torch operations. Both give compressed-tensors' bytes exactly (a test holds all three equal).

ModelOpt's `modelopt_fp4` serialization holds the same numbers under other names: `weight` (the
packed bytes), `weight_scale` (the same FP8 scales) and `weight_scale_2` (F32 scalar), the
*reciprocal* of `weight_global_scale`, which is what vLLM's kernels multiply by: its
compressed-tensors scheme computes `1.0 / weight_global_scale` in float32 at load, its ModelOpt
scheme takes `weight_scale_2` as is. So `weight_scale_2 = fp32(1 / global_scale)` gives vLLM the
same numbers from either file. The quantizer picks a global scale whose float32 reciprocal
inverts back to itself (`stable_global_scale`, at most a few ulps below compressed-tensors'
`448 x 6 / amax`), so a checkpoint converts between the two formats and back bit for bit.
"""

from __future__ import annotations

import re
from functools import cache

import torch

GROUP_SIZE = 16
FORMAT = "nvfp4-pack-quantized"
SCHEME = "NVFP4A16"
PACKED, SCALE, GLOBAL_SCALE = "weight_packed", "weight_scale", "weight_global_scale"
PARAMS = (PACKED, SCALE, GLOBAL_SCALE)
FORMATS = ("compressed-tensors", "modelopt")
MODELOPT_PACKED, MODELOPT_SCALE_2, MODELOPT_INPUT_SCALE = "weight", "weight_scale_2", "input_scale"
MODELOPT_PARAMS = (MODELOPT_PACKED, SCALE, MODELOPT_SCALE_2)
PARAMS_OF = {"compressed-tensors": PARAMS, "modelopt": MODELOPT_PARAMS}
MODELOPT_ALGO = "W4A16_NVFP4"  # vLLM's weight-only NVFP4 (Marlin on GPUs); "NVFP4" is W4A4
HF_QUANT_CONFIG = "hf_quant_config.json"
CHUNK_ELEMENTS = 1 << 22  # off the CPU, rows are packed in blocks of about this many values

# E2M1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 are codes 0..7. A value on a boundary between two
# codes goes to the even one (round half to even, as compressed-tensors' cast_to_fp4 does).
_ABOVE = (0.25, 1.25, 2.5, 5.0)  # boundaries whose ties round down: code += |x| > b
_AT_OR_ABOVE = (0.75, 1.75, 3.5)  # boundaries whose ties round up: code += |x| >= b


@cache
def weight_args():
    """The QuantizationArgs of compressed-tensors' NVFP4A16 preset."""
    from compressed_tensors.quantization import preset_name_to_scheme

    return preset_name_to_scheme(SCHEME, ["Linear"]).weights


def global_scale(amax: float | torch.Tensor) -> torch.Tensor:
    """[1] float32: the global scale for weights whose largest magnitude is amax."""
    from compressed_tensors.quantization.utils import generate_gparam

    amax = torch.as_tensor(amax, dtype=torch.float32)
    return generate_gparam(-amax, amax)


def stable_global_scale(gscale: torch.Tensor) -> torch.Tensor:
    """[1] float32: `gscale`, or the nearest float32 below it whose float32 reciprocal inverts
    back to it, so that ModelOpt's `weight_scale_2` (the reciprocal) gives it back exactly.
    About one float32 in seven (mantissas above sqrt 2) moves, by one or two ulps."""
    g = gscale.detach().to(torch.float32).reshape(1).clone()
    while not torch.equal(1.0 / (1.0 / g), g):
        g = torch.nextafter(g, torch.zeros_like(g))
    return g


def scale_2_of(gscale: torch.Tensor) -> torch.Tensor:
    """ModelOpt's `weight_scale_2` (float32 scalar) for a compressed-tensors global scale: the
    float32 reciprocal, as vLLM's compressed-tensors scheme computes it at load."""
    return (1.0 / gscale.detach().to(torch.float32)).reshape(())


def global_scale_of(scale_2: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' `weight_global_scale` ([1] float32) for a ModelOpt `weight_scale_2`: a
    float32 whose reciprocal is `scale_2` exactly where one exists (the nearest to 1 / scale_2),
    else 1 / scale_2 rounded."""
    s = scale_2.detach().to(torch.float32).reshape(1)
    g = 1.0 / s
    if torch.equal(1.0 / g, s):
        return g
    up, down = g.clone(), g.clone()
    for _ in range(4):
        up, down = torch.nextafter(up, torch.full_like(up, float("inf"))), torch.nextafter(down, torch.zeros_like(down))
        for candidate in (down, up):
            if torch.equal(1.0 / candidate, s):
                return candidate
    return g


def group_amax(weight: torch.Tensor) -> torch.Tensor:
    """float32 [N, K/16]: the largest magnitude of each group of 16 along K (on the weight's device)."""
    rows, cols = weight.shape
    if cols % GROUP_SIZE:
        raise ValueError(f"NVFP4 needs the input dimension to be a multiple of {GROUP_SIZE}, got {cols}")
    if weight.device.type != "cpu":
        return weight.to(torch.float32).reshape(rows, -1, GROUP_SIZE).abs().amax(dim=-1)
    from omk_ray.variants import nvfp4_kernels

    amax = torch.empty(rows, cols // GROUP_SIZE, dtype=torch.float32)
    nvfp4_kernels.group_absmax(_kernel_input(weight), amax.numpy())
    return amax


def quantize(weight: torch.Tensor, gscale: torch.Tensor,
             amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 [N, K/2], scale float8_e4m3fn [N, K/16]) of a 2-D weight on its device;
    `amax` is its `group_amax` when already known."""
    amax = group_amax(weight) if amax is None else amax
    gscale = gscale.to(weight.device)
    scale = _scales(amax, gscale)
    if weight.device.type == "cpu":
        from omk_ray.variants import nvfp4_kernels

        packed = torch.empty(weight.shape[0], weight.shape[1] // 2, dtype=torch.uint8)
        nvfp4_kernels.pack_e2m1(_kernel_input(weight), (scale / gscale).numpy(), packed.numpy())
    else:  # torch operations, in blocks of rows to bound their temporaries
        step = max(1, CHUNK_ELEMENTS // weight.shape[1])
        packed = torch.cat([_pack_torch(weight[i : i + step], scale[i : i + step], gscale)
                            for i in range(0, weight.shape[0], step)])
    return packed, scale.to(torch.float8_e4m3fn)


def _scales(amax: torch.Tensor, gscale: torch.Tensor) -> torch.Tensor:
    """FP8-representable group scales (float32 values), exactly as compressed-tensors computes them."""
    from compressed_tensors.quantization.utils import calculate_qparams

    scale, _ = calculate_qparams(-amax, amax, weight_args(), global_scale=gscale)
    return scale


def _kernel_input(weight: torch.Tensor):
    """A numpy view the CPU kernels read: bfloat16 as its bits (uint16), float32 as is."""
    import numpy as np

    weight = weight.contiguous()
    if weight.dtype == torch.bfloat16:
        return weight.view(torch.int16).numpy().view(np.uint16)
    return weight.to(torch.float32).numpy()


def _pack_torch(weight: torch.Tensor, scale: torch.Tensor, gscale: torch.Tensor) -> torch.Tensor:
    rows, cols = weight.shape
    groups = weight.to(torch.float32).reshape(rows, cols // GROUP_SIZE, GROUP_SIZE)
    scaled = (groups / (scale / gscale).unsqueeze(-1)).clamp_(-6.0, 6.0)
    codes = encode_e2m1(scaled.reshape(rows, cols))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """uint8 E2M1 codes (sign in bit 3) of float values already scaled into [-6, 6]."""
    magnitude = x.abs()
    codes = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for bound in _ABOVE:
        codes += magnitude > bound
    for bound in _AT_OR_ABOVE:
        codes += magnitude >= bound
    codes |= (x < 0).to(torch.uint8) << 3  # -0.0 stays code 0, as in compressed-tensors
    return codes


def dequantize(packed: torch.Tensor, scale: torch.Tensor, gscale: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [N, K] that an NVFP4 triple stands for (computed in float32, returned in dtype)."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize

    rows, half = packed.shape
    values = unpack_fp4_from_uint8(packed, rows, half * 2, dtype=torch.float32)
    weight = ct_dequantize(values, scale.to(torch.float32), global_scale=gscale.to(torch.float32),
                           dtype=torch.float32)
    return weight.to(dtype)


def quantization_config(ignore: list[str]) -> dict:
    """The `quantization_config` of config.json: one NVFP4A16 group targeting Linear layers."""
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    config = QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme(SCHEME, ["Linear"])},
        format=FORMAT,
        ignore=list(ignore),
        quantization_status="compressed",
    )
    return config.model_dump(mode="json")


def modelopt_config(ignore: list[str], producer_version: str) -> tuple[dict, dict]:
    """(config.json `quantization_config`, hf_quant_config.json) of a weight-only ModelOpt NVFP4
    checkpoint, as vLLM 0.32's `ModelOptNvFp4Config` reads them (either one is enough for it);
    `ignore` in compressed-tensors' pattern syntax, written as ModelOpt's wildcards."""
    exclude = [glob_of(p) for p in ignore]
    producer = {"name": "omk-ray", "version": producer_version}
    config = {
        "quant_method": "modelopt",
        "quant_algo": MODELOPT_ALGO,
        "group_size": GROUP_SIZE,
        "config_groups": {"group_0": {
            "targets": ["Linear"], "input_activations": None,
            "weights": {"num_bits": 4, "type": "float", "group_size": GROUP_SIZE, "dynamic": False},
        }},
        "ignore": exclude,
        "producer": producer,
    }
    hf_quant = {"producer": producer, "quantization": {
        "quant_algo": MODELOPT_ALGO, "kv_cache_quant_algo": None, "group_size": GROUP_SIZE,
        "exclude_modules": exclude,
    }}
    return config, hf_quant


def glob_of(pattern: str) -> str:
    """A compressed-tensors ignore pattern (a name, or `re:` + a regex matched from the start) as a
    ModelOpt wildcard; only the regexes a wildcard can say (`.*`, `\\.`, a final `$`)."""
    if not pattern.startswith("re:"):
        return pattern
    body = pattern[3:]
    anchored = body.endswith("$")
    body = body.removesuffix("$")
    out, i = "", 0
    while i < len(body):
        if body.startswith(".*", i):
            out, i = out + "*", i + 2
        elif body.startswith("\\", i) and i + 1 < len(body) and not body[i + 1].isalnum():
            out, i = out + body[i + 1], i + 2
        elif body[i] in ".^$*+?{}[]|()\\":
            raise ValueError(f"ignore pattern {pattern!r} has no ModelOpt wildcard equivalent")
        else:
            out, i = out + body[i], i + 1
    return out if anchored or out.endswith("*") else out + "*"


def pattern_of(glob: str) -> str:
    """A ModelOpt wildcard as a compressed-tensors ignore pattern (the inverse of `glob_of`)."""
    if not any(c in glob for c in "*?[") :
        return glob
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return "re:" + (body if body.endswith(".*") else body + "$")


def format_of(config: dict) -> str | None:
    """"compressed-tensors" or "modelopt" when a config.json dict declares NVFP4 weights, else None."""
    q = config.get("quantization_config")
    if not isinstance(q, dict):
        return None
    if q.get("quant_method") == "compressed-tensors":
        groups = q.get("config_groups") or {}
        if q.get("format") == FORMAT or any(isinstance(g, dict) and g.get("format") == FORMAT
                                            for g in groups.values()):
            return "compressed-tensors"
    if str(q.get("quant_method", "")).lower().startswith("modelopt") and "FP4" in str(q.get("quant_algo", "")).upper():
        return "modelopt"
    return None


def is_nvfp4(config: dict) -> bool:
    """Whether a config.json dict declares NVFP4 packed weights (either serialization)."""
    return format_of(config) is not None
