"""NVFP4 weights in compressed-tensors' `nvfp4-pack-quantized` format: the numbers.

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
"""

from __future__ import annotations

from functools import cache

import torch

GROUP_SIZE = 16
FORMAT = "nvfp4-pack-quantized"
SCHEME = "NVFP4A16"
PACKED, SCALE, GLOBAL_SCALE = "weight_packed", "weight_scale", "weight_global_scale"
PARAMS = (PACKED, SCALE, GLOBAL_SCALE)
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


def is_nvfp4(config: dict) -> bool:
    """Whether a config.json dict declares compressed-tensors NVFP4 packed weights."""
    q = config.get("quantization_config")
    if not isinstance(q, dict) or q.get("quant_method") != "compressed-tensors":
        return False
    groups = q.get("config_groups") or {}
    return q.get("format") == FORMAT or any(
        isinstance(g, dict) and g.get("format") == FORMAT for g in groups.values()
    )
