"""NVFP4A16 quantization on a synthetic Gemma-4-shaped checkpoint: speed against a plain copy, peak RSS.

The checkpoint is bench_surgery's: Gemma 4 26B-A4B's MoE widths (hidden 2816, 128 experts,
expert width 704, bf16 random weights), attention and dense MLP, a 32k embedding, but only a
few layers, in a temporary folder. In one run it times `shutil.copytree` of it, then
`quantize_checkpoint` (streaming, compressed-tensors backend) in a child process whose peak RSS
is read from the kernel, then the copy again. Targets: >= 0.5x the copy's speed (bytes of the
source per second), peak RSS <= 2x the largest tensor + 300 MB. `--device cuda` runs the
quantization arithmetic with torch on a GPU (reading and writing stay on the CPU). Everything
is deleted at the end.

    python benchmarks/bench_quantize.py [--layers 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import shutil

from bench_surgery import run_child, synthetic, timed_copy

QUANTIZE = """
import json, re, resource, sys, time
import torch
import omk_ray.variants.check  # imports and compiled kernels are not what grows with the model
from omk_ray.variants import nvfp4
from omk_ray.variants.quantize import quantize_checkpoint
nvfp4.quantize(torch.ones(1, 16, dtype=torch.bfloat16), nvfp4.global_scale(1.0))
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the RSS now
base_rss = hwm()
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, cpu_start = time.perf_counter(), cpu()
quantize_checkpoint(sys.argv[1], sys.argv[2], max_shard_size="2GB", device=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - start, "growth": hwm() - base_rss, "cpu": cpu() - cpu_start}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="MoE layers (about 1.55 GB each)")
    parser.add_argument("--device", default="cpu", help="where the quantization arithmetic runs: cpu or cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no GPU here")

    work, total, largest = synthetic(args.layers, 2.4, "omk-bench-quantize-")  # base, copy, quantized (~0.3x)
    try:
        first = timed_copy(work / "base", work / "copy")
        shutil.rmtree(work / "copy")
        result, peak = run_child(QUANTIZE, str(work / "base"), str(work / "nvfp4"), args.device)
        seconds, growth, cpu = result["seconds"], result["growth"], result["cpu"]
        written = sum(p.stat().st_size for p in (work / "nvfp4").glob("*.safetensors"))
        second = timed_copy(work / "base", work / "copy")
        copy = (first + second) / 2
        print(f"copy {first:.2f} s and {second:.2f} s ({total / copy / 1e9:.2f} GB/s); quantize on {args.device} "
              f"{seconds:.2f} s ({total / seconds / 1e9:.3f} GB/s of bf16 read, {written / 1e9:.2f} GB written)")
        ratio, limit = copy / seconds, 2 * largest + 300e6
        print(f"speed ratio (copy time / quantize time): {ratio:.2f}x (target >= 0.5x: "
              f"{'met' if ratio >= 0.5 else 'NOT met'}); CPU time of the quantization {cpu:.2f} s "
              f"(all threads; the machine may be lending it less than the wall time)")
        print(f"peak RSS of the quantizer: {peak / 1e6:.0f} MB, {growth / 1e6:.0f} MB above its imports "
              f"(target <= 2 x largest tensor + 300 MB = {limit / 1e6:.0f} MB: {'met' if peak <= limit else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
