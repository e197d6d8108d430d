"""Train the toy Gemma 4 MoE on the synthetic tasks, on CPU, in a few minutes.

The model is a plain `Gemma4ForCausalLM` (see `tiny.gemma4_config`) with the project's
character-level tokenizer, trained on chat-formatted problems
(`<bos><|turn>user\\n{prompt}<turn|>\\n<|turn>model\\n{answer}<turn|>`); the loss is on the
answer and its closing `<turn|>`, which stops generation.

**Specialization (training-time only).** Each task (class, or class/subclass for `arith`) gets
one *specialist* expert per MoE layer (a seeded permutation picks which); the other experts
are *shared*. An auxiliary router loss, computed from the router probabilities that forward
hooks read, asks every token from the first prompt character on to give its task's
specialist and the shared experts half the routing mass each
(`-log p[specialist] - log sum p[shared]`), so top-2 picks the specialist and one shared
expert; the chat-template tokens before the prompt, identical for every task, are asked to
use the shared experts only. The loss changes nothing in the architecture: the saved model is
a plain Gemma 4 checkpoint whose routers have learned this routing from the text itself.
Per class, the profile then shows experts that one class relies on (what `max` keeps) and
experts every class uses a little (what `geomean` keeps), as on the real model.
"""

from __future__ import annotations

import json
import math
import platform
import random
import re
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from omk_ray.toy.tasks import TASKS, TrainingStream

TURN_END = "<turn|>"
IGNORE = -100


class ToyRecipe(BaseModel):
    """Everything that decides the trained weights (with the library versions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    router_loss_weight: float = Field(0.5, ge=0)
    threads: int = Field(1, ge=1, description="torch CPU threads; one is barely slower on two idle cores and "
                         "many times faster on a busy shared machine (another count gives other weights)")
    layers: int = Field(3, ge=1)
    hidden: int = 96
    heads: int = 3
    kv_heads: int = 1
    head_dim: int = 32
    num_experts: int = Field(16, ge=len(TASKS) + 2)
    top_k: int = 2
    moe_intermediate: int = 64
    intermediate: int = 16

    def model_config_kwargs(self) -> dict:
        return dict(num_experts=self.num_experts, top_k=self.top_k, layers=self.layers, hidden=self.hidden,
                    head_dim=self.head_dim, moe_intermediate=self.moe_intermediate, intermediate=self.intermediate,
                    heads=self.heads, kv_heads=self.kv_heads)


def specialist_plan(recipe: ToyRecipe) -> dict[str, dict[str, int]]:
    """Layer -> task label -> its specialist expert; the experts not named are shared."""
    rng = random.Random(recipe.seed)
    plan = {}
    for layer in range(recipe.layers):
        experts = rng.sample(range(recipe.num_experts), len(TASKS))
        plan[str(layer)] = {task.label: e for task, e in zip(TASKS, experts)}
    return plan


def encode(tokenizer, problem: dict) -> tuple[list[int], list[int], int]:
    """Token ids of prompt + answer + `<turn|>`, the labels (answer only), and where the prompt starts."""
    prefix = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False)
    head = prefix[: prefix.index(TURN_END)]  # `<bos><|turn>user\n`
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem["prompt"]}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer = tokenizer(problem["target"] + TURN_END, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    return ids + answer, [IGNORE] * len(ids) + answer, start


class RouterTaps:
    """Forward hooks that keep each layer's router probabilities of the last forward."""

    def __init__(self, model):
        self.probs: dict[int, object] = {}
        self.handles = [
            layer.router.register_forward_hook(self._keep(i))
            for i, layer in enumerate(model.model.layers) if getattr(layer, "router", None) is not None
        ]

    def _keep(self, index: int):
        def hook(module, args, output):
            self.probs[index] = output[0]
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def train(out_dir: str | Path, recipe: ToyRecipe = ToyRecipe(), log=print) -> Path:
    """Train on CPU; save the checkpoint (with tokenizer, chat template, generation config) to out_dir.

    Deterministic: the same recipe gives bitwise-equal weights in any process on the same CPU (the
    thread count is the recipe's, every random draw is seeded, nondeterministic kernels are refused).
    The bits depend on which kernels torch and MKL pick for the CPU (AVX-512 or AVX2, vendor), so
    another CPU model trains another, equally deterministic, model from the same seed.
    """
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(out_dir, recipe, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(out_dir: str | Path, recipe: ToyRecipe, log) -> Path:
    import torch
    import torch.nn.functional as F
    from transformers import Gemma4ForCausalLM, GenerationConfig

    from omk_ray.toy.tiny import build_tokenizer, gemma4_config

    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    tokenizer = build_tokenizer(None)
    config = gemma4_config(**recipe.model_config_kwargs())
    config._experts_implementation = "grouped_mm"  # faster on CPU than the per-expert loop; same maths
    model = Gemma4ForCausalLM(config)
    model.train()
    plan = specialist_plan(recipe)
    labels_index = {task.label: i for i, task in enumerate(TASKS)}
    specialist = torch.tensor([[plan[str(l)][t.label] for t in TASKS] for l in range(recipe.layers)])  # [L, T]
    shared = torch.ones(recipe.layers, recipe.num_experts, dtype=torch.bool)
    shared[torch.arange(recipe.layers)[:, None], specialist] = False

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    taps = RouterTaps(model)
    stream = iter(TrainingStream(recipe.seed))
    try:
        for step in range(recipe.steps):
            batch = [next(stream) for _ in range(recipe.batch_size)]
            input_ids, attention, labels, task_of = _collate(tokenizer, batch, labels_index)
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            lm_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                      ignore_index=IGNORE)
            router_loss = _router_loss(taps.probs, task_of.reshape(-1), specialist, shared)
            loss = lm_loss + recipe.router_loss_weight * router_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if step % 100 == 0 or step == recipe.steps - 1:
                log(f"step {step:5d}  lm {lm_loss.item():.3f}  router {router_loss.item():.3f}  "
                    f"{time.perf_counter() - started:.0f} s")
    finally:
        taps.close()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=[1, 5], pad_token_id=0)
    model.save_pretrained(out)
    build_tokenizer(out)
    seconds = time.perf_counter() - started
    (out / "omk_ray_model.json").write_text(json.dumps({
        "kind": "toy-trained",
        "class": type(model).__name__,
        "recipe": recipe.model_dump(),
        "specialists": plan,
        "train_seconds": round(seconds, 1),
        "versions": _versions(),
    }, indent=1) + "\n")
    log(f"trained in {seconds:.0f} s; saved {out}")
    return out


def _collate(tokenizer, batch: list[dict], labels_index: dict[str, int]):
    """Right-padded ids, mask, labels, and per token the task index to route for
    (-1: a template token before the prompt, shared experts only; -2: padding, no routing loss)."""
    import torch

    rows = [encode(tokenizer, p) for p in batch]
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    task_of = torch.full((len(rows), width), -2, dtype=torch.long)
    for r, ((ids, labs, start), p) in enumerate(zip(rows, batch)):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids)
        attention[r, :n] = 1
        labels[r, :n] = torch.tensor(labs)
        task_of[r, :start] = -1
        task_of[r, start:n] = labels_index[f"{p['class']}/{p['subclass']}" if p["subclass"] else p["class"]]
    return input_ids, attention, labels, task_of


def _router_loss(probs: dict, task_of, specialist, shared):
    """Mean over layers and routed tokens of -log p[specialist] - log sum p[shared]
    (template tokens: -log sum p[shared] only)."""
    import torch

    total = 0.0
    tokens = task_of >= -1
    in_task = task_of[tokens] >= 0
    for layer, p in probs.items():
        p = p[tokens].clamp_min(1e-9)
        shared_mass = (p * shared[layer]).sum(-1)
        loss = -torch.log(shared_mass)
        spec = specialist[layer][task_of[tokens].clamp_min(0)]
        spec_p = p.gather(1, spec[:, None])[:, 0]
        loss = loss - torch.where(in_task, torch.log(spec_p), torch.zeros_like(spec_p))
        total = total + loss.mean()
    return total / max(1, len(probs))


def _versions() -> dict:
    """The libraries, and the CPU and kernels that decide the weights' last bits (see `train`)."""
    import tokenizers
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "cpu": cpu_name(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


__all__ = ["ToyRecipe", "specialist_plan", "train", "encode", "cpu_name"]
