"""Expert surgery on a synthetic Gemma-4-shaped checkpoint: speed against a plain copy, peak RSS.

Builds a >= 2 GB checkpoint with Gemma 4 26B-A4B's MoE shapes (hidden 2816, 128 experts,
moe_intermediate 704, bf16) but only a few layers, in a temporary folder under /tmp, then
times `shutil.copytree` of it and `prune_checkpoint` (30 experts dropped per layer, in a child
process whose peak RSS is read from the kernel). Targets: >= 0.8x copy speed, peak RSS under
2x the largest tensor + 300 MB. Everything is deleted at the end.

    python benchmarks/bench_surgery.py [--layers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN, EXPERTS, MOE_INTER, INTER, VOCAB, HEAD_DIM, HEADS, KV_HEADS = 2816, 128, 704, 2112, 32768, 256, 16, 8
DROP = 30

SURGERY = """
import json, sys, time
from omk_ray.variants.surgery import prune_checkpoint
base, out, drop_map = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
start = time.perf_counter()
prune_checkpoint(base, drop_map, out, max_shard_size="2GB")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def layer_tensors(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.language_model.layers.{i}."
    return {
        p + "experts.gate_up_proj": (EXPERTS, 2 * MOE_INTER, HIDDEN),
        p + "experts.down_proj": (EXPERTS, HIDDEN, MOE_INTER),
        p + "router.proj.weight": (EXPERTS, HIDDEN),
        p + "router.per_expert_scale": (EXPERTS,),
        p + "router.scale": (HIDDEN,),
        p + "mlp.gate_proj.weight": (INTER, HIDDEN),
        p + "mlp.up_proj.weight": (INTER, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, INTER),
        p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
        p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
        **{p + f"{norm}.weight": (HIDDEN,) for norm in (
            "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
            "post_feedforward_layernorm_1", "post_feedforward_layernorm_2", "pre_feedforward_layernorm_2")},
    }


def write_random_shard(path: Path, tensors: dict[str, tuple[int, ...]], rng: np.random.Generator) -> None:
    """bf16 tensors of random finite values (random sign and mantissa, magnitudes 2^-10 .. 2^-3)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors.items():
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name, shape in tensors.items():
            left = int(np.prod(shape))
            while left:
                n = min(left, 32 << 20)
                bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
                exponent = ((bits >> 7) & 0x7) + 117
                f.write(((bits & 0x807F) | (exponent << 7).astype(np.uint16)).tobytes())
                left -= n


def build_checkpoint(folder: Path, layers: int) -> tuple[int, int]:
    """(total bytes, largest tensor bytes) of the synthetic checkpoint written to folder."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    shards = [{"model.language_model.embed_tokens.weight": (VOCAB, HIDDEN),
               "model.language_model.norm.weight": (HIDDEN,)}] + [layer_tensors(i) for i in range(layers)]
    weight_map, total, largest = {}, 0, 0
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_random_shard(folder / name, tensors, rng)
        for key, shape in tensors.items():
            weight_map[key] = name
            size = int(np.prod(shape)) * 2
            total, largest = total + size, max(largest, size)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
              "text_config": {"model_type": "gemma4_text", "hidden_size": HIDDEN, "num_hidden_layers": layers,
                              "num_experts": EXPERTS, "top_k_experts": 8, "moe_intermediate_size": MOE_INTER,
                              "enable_moe_block": True}}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return total, largest


def timed_copy(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    shutil.copytree(src, dst)
    return time.perf_counter() - start


def run_child(script: str, *args: str) -> tuple[dict, int]:
    """(the JSON the script prints last, peak RSS bytes of its process, read from the kernel)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss * 1024


def synthetic(layers: int, copies: float, prefix: str) -> tuple[Path, int, int]:
    """(temporary folder holding the synthetic checkpoint as base/, total bytes, largest tensor
    bytes); refuses to start without room for `copies` times the checkpoint."""
    need = int((layers * 1.55 + 0.2) * 1e9 * copies)
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < need + (2 << 30):
        raise SystemExit(f"need {need / 1e9:.1f} GB free under {tempfile.gettempdir()}, have {free / 1e9:.1f} GB")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    t0 = time.perf_counter()
    total, largest = build_checkpoint(work / "base", layers)
    print(f"synthetic checkpoint: {total / 1e9:.2f} GB, {layers} MoE layers x {EXPERTS} experts, "
          f"largest tensor {largest / 1e9:.2f} GB (built in {time.perf_counter() - t0:.0f} s)")
    return work, total, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="MoE layers (about 1.5 GB each)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (the machine may be busy)")
    args = parser.parse_args()

    work, total, largest = synthetic(args.layers, 3, "omk-bench-surgery-")  # base, copy, pruned
    try:
        rng = np.random.default_rng(1)
        drop_map = {str(i): sorted(rng.choice(EXPERTS, DROP, replace=False).tolist()) for i in range(args.layers)}
        copies, surgeries, peaks, written = [], [], [], 0
        for r in range(args.repeats):
            copies.append(timed_copy(work / "base", work / f"copy{r}"))
            shutil.rmtree(work / f"copy{r}")
            result, peak = run_child(SURGERY, str(work / "base"), str(work / f"pruned{r}"), json.dumps(drop_map))
            seconds = result["seconds"]
            written = sum(p.stat().st_size for p in (work / f"pruned{r}").glob("*.safetensors"))
            shutil.rmtree(work / f"pruned{r}")
            surgeries.append(seconds)
            peaks.append(peak)
            print(f"run {r + 1}: copy {copies[-1]:.2f} s ({total / copies[-1] / 1e9:.2f} GB/s), "
                  f"surgery {seconds:.2f} s ({written / 1e9:.2f} GB written), peak RSS {peak / 1e6:.0f} MB")
        ratio = min(copies) / min(surgeries)
        byte_ratio = (written / min(surgeries)) / (total / min(copies))
        peak, limit = max(peaks), 2 * largest + 300e6
        print(f"copy-speed ratio (copy time / surgery time, best of {args.repeats}): {ratio:.2f}x "
              f"(target >= 0.8x: {'met' if ratio >= 0.8 else 'NOT met'})")
        print(f"per byte written: surgery {written / min(surgeries) / 1e9:.2f} GB/s vs copy "
              f"{total / min(copies) / 1e9:.2f} GB/s = {byte_ratio:.2f}x")
        print(f"peak RSS of the surgery: {peak / 1e6:.0f} MB (target < 2 x largest tensor + 300 MB = "
              f"{limit / 1e6:.0f} MB: {'met' if peak < limit else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
