"""Router profiling: teacher-forced CD scores per class, layer and expert, from forward hooks.

Per prompt: optionally generate `generate_tokens` greedily (or take the prompt's own
`response`), then replay the whole sequence once with a hook on every MoE experts module. The
hook sees exactly what the experts see (token rows, the top-k expert ids and routing weights),
recomputes each routed expert's output y, and adds per expert: `wnorm` += |w| * ||y||,
`rnorm` += ||y||, `wsum` += w, `tc` += tokens, `cc` += prompts in which it fired.

A prompt counts for its `class` and, if it has a `subclass`, also for `class/subclass`.
Works on the transformers-5 experts modules (fused `gate_up_proj` [E, 2I, H] and `down_proj`
[E, H, I] parameters: Gemma 4, Qwen3-MoE, Mixtral and most MoE families). `num_workers > 1`
shards the prompts over Ray tasks (one GPU each when the cluster has GPUs) and adds the shards up.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from omk_ray.variants.cdscores import SUBCLASS_SEPARATOR, CDTable, merge_cd

DEFAULT_PROMPTS = "profile_prompts.jsonl"


class ProfileError(ValueError):
    """Prompts or a model the profiler cannot use; the message says which."""


# -- prompts -----------------------------------------------------------------------------------


def default_prompts_path() -> Path:
    return Path(str(resources.files("omk_ray") / "data" / DEFAULT_PROMPTS))


def load_prompts(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Prompts from a JSONL file (one `{"class", "prompt", ["subclass", "response", "id"]}` per line);
    the shipped default set when path is None."""
    path = Path(path) if path else default_prompts_path()
    if not path.is_file():
        raise ProfileError(f"{path}: no such prompts file")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ProfileError(f"{path}:{n}: not valid JSON: {err}") from None
    try:
        check_prompts(prompts)
    except ProfileError as err:
        raise ProfileError(f"{path}: {err}") from None
    return prompts


def check_prompts(prompts: list[dict[str, Any]]) -> None:
    if not prompts:
        raise ProfileError("no prompts to profile")
    for n, p in enumerate(prompts, 1):
        if not isinstance(p, dict):
            raise ProfileError(f"prompt {n}: expected an object, got {p!r:.60}")
        for key in ("class", "prompt"):
            if not isinstance(p.get(key), str) or not p[key].strip():
                raise ProfileError(f"prompt {n}: `{key}` must be a non-empty string")
        for key in ("subclass", "response"):
            if key in p and p[key] is not None and not isinstance(p[key], str):
                raise ProfileError(f"prompt {n}: `{key}` must be a string")
        for key in ("class", "subclass"):
            if SUBCLASS_SEPARATOR in (p.get(key) or ""):
                raise ProfileError(f"prompt {n}: `{key}` may not contain {SUBCLASS_SEPARATOR!r}")


def categories_for(prompt: dict[str, Any]) -> tuple[str, ...]:
    cls, sub = prompt["class"], prompt.get("subclass")
    return (cls, f"{cls}{SUBCLASS_SEPARATOR}{sub}") if sub else (cls,)


# -- hooks -------------------------------------------------------------------------------------


def find_experts_modules(model) -> dict[int, Any]:
    """Layer index -> the fused experts module of that layer."""
    import torch

    found = {}
    for name, module in model.named_modules():
        gate_up = getattr(module, "gate_up_proj", None)
        if isinstance(gate_up, torch.nn.Parameter) and gate_up.dim() == 3 and hasattr(module, "down_proj"):
            m = re.search(r"layers\.(\d+)\.", name)
            if not m:
                raise ProfileError(f"experts module {name} is not inside a numbered layer")
            if getattr(module, "is_transposed", False) or getattr(module, "has_bias", False) or not getattr(module, "has_gate", True):
                raise ProfileError(f"experts module {name}: transposed, biased or gateless experts are not supported")
            found[int(m[1])] = module
    if not found:
        raise ProfileError("no fused MoE experts modules found (needs transformers >= 5 and an MoE model)")
    return dict(sorted(found.items()))


def expert_output(module, expert: int, x):
    """What expert `expert` of a fused experts module returns for rows x, before the routing weight."""
    import torch.nn.functional as F

    gate_up = F.linear(x, module.gate_up_proj[expert])
    if hasattr(module, "_apply_gate"):
        hidden = module._apply_gate(gate_up)
    else:
        gate, up = gate_up.chunk(2, dim=-1)
        hidden = module.act_fn(gate) * up
    return F.linear(hidden, module.down_proj[expert])


def experts_inputs(args: tuple, kwargs: dict):
    names = ("hidden_states", "top_k_index", "top_k_weights")
    values = list(args) + [kwargs[n] for n in names[len(args):]]
    return values[0], values[1], values[2]


class ExpertRecorder:
    """Hooks every experts module. While `recording`, each forward adds to `stats[layer]` [E, 5];
    `rows_owner` gives the prompt index of each flattened token row (-1: padding, not counted)."""

    def __init__(self, model):
        self.modules = find_experts_modules(model)
        counts = {m.gate_up_proj.shape[0] for m in self.modules.values()}
        if len(counts) != 1:
            raise ProfileError(f"layers have different expert counts {sorted(counts)}")
        self.num_experts = counts.pop()
        self.recording = False
        self.rows_owner = None
        self.stats: dict[int, np.ndarray] = {}
        self.reset()
        self.handles = [
            module.register_forward_hook(self._hook(layer), with_kwargs=True) for layer, module in self.modules.items()
        ]

    def reset(self) -> None:
        self.stats = {layer: np.zeros((self.num_experts, 5)) for layer in self.modules}

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, layer: int):
        def hook(module, args, kwargs, output):
            import torch

            if not self.recording:
                return
            hidden, index, weights = experts_inputs(args, kwargs)
            owner = self.rows_owner
            if owner is None:
                owner = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
            if hidden.dim() != 2 or owner.shape[0] != hidden.shape[0]:
                raise ProfileError(f"layer {layer}: experts got hidden states of shape {tuple(hidden.shape)}, "
                                   f"expected [{owner.shape[0]} tokens, hidden]")
            keep = owner >= 0
            hidden, index, weights, owner = hidden[keep], index[keep], weights[keep], owner[keep]
            block = self.stats[layer]
            with torch.no_grad():
                for e in index.unique().tolist():
                    if not 0 <= e < self.num_experts:
                        continue
                    tok, pos = torch.where(index == e)
                    norms = expert_output(module, e, hidden[tok]).float().norm(dim=-1)
                    w = weights[tok, pos].float()
                    block[e] += [
                        float((w.abs() * norms).sum()), float(norms.sum()), float(w.sum()),
                        len(tok), owner[tok].unique().numel(),
                    ]
        return hook


# -- profiling ---------------------------------------------------------------------------------


def profile_model(
    model_dir: str,
    prompts: list[dict],
    generate_tokens: int = 0,
    *,
    num_workers: int = 1,
    batch_size: int = 8,
    max_length: int = 4096,
    dtype: str = "auto",
    device: str | None = None,
    chat_template: bool = True,
    revision: str | None = None,
    worker_options: dict | None = None,
) -> dict:
    """CD scores of `model_dir` on `prompts` (see the module docstring), as the JSON dict."""
    check_prompts(prompts)
    if generate_tokens < 0:
        raise ProfileError(f"generate_tokens must be >= 0, got {generate_tokens}")
    options = dict(batch_size=batch_size, max_length=max_length, dtype=dtype, device=device,
                   chat_template=chat_template, revision=revision)
    if num_workers > 1:
        return profile_model_ray(model_dir, prompts, generate_tokens, num_workers=num_workers,
                                 worker_options=worker_options, **options)
    return _profile_local(model_dir, prompts, generate_tokens, **options)


def profile_model_ray(
    model_dir: str,
    prompts: list[dict],
    generate_tokens: int = 0,
    *,
    num_workers: int = 2,
    worker_options: dict | None = None,
    **options,
) -> dict:
    """`profile_model` with the prompts sharded over `num_workers` Ray tasks, then added up.
    Uses the running Ray cluster (or starts a local one and stops it afterwards)."""
    import ray

    check_prompts(prompts)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local")
    try:
        if worker_options is None:
            worker_options = {"num_cpus": 1}
            if ray.cluster_resources().get("GPU", 0) >= 1:
                worker_options["num_gpus"] = 1
        shards = [prompts[i::num_workers] for i in range(num_workers) if prompts[i::num_workers]]
        task = ray.remote(_profile_local).options(**worker_options)
        parts = ray.get([task.remote(model_dir, shard, generate_tokens, **options) for shard in shards])
    finally:
        if started:
            ray.shutdown()
    merged = merge_cd(parts)
    merged["metadata"].update(prompts=len(prompts), prompt_set_hash=_prompts_hash(prompts), workers=len(shards))
    return merged


def _profile_local(
    model_dir: str,
    prompts: list[dict],
    generate_tokens: int = 0,
    *,
    batch_size: int = 8,
    max_length: int = 4096,
    dtype: str = "auto",
    device: str | None = None,
    chat_template: bool = True,
    revision: str | None = None,
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, revision=revision, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
    ).to(device)
    model.eval()
    recorder = ExpertRecorder(model)
    table = CDTable(num_experts=recorder.num_experts, layers=list(recorder.modules))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_ids = _eos_ids(model, tokenizer)

    groups: dict[tuple[str, ...], list[dict]] = {}
    for p in prompts:
        groups.setdefault(categories_for(p), []).append(p)
    try:
        for cats, members in groups.items():
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                seqs = [_encode(tokenizer, p, chat_template) for p in batch]
                todo = [i for i, p in enumerate(batch) if not p.get("response")]
                if generate_tokens and todo:
                    for i, new in zip(todo, _generate(model, [seqs[i] for i in todo], generate_tokens, pad_id, eos_ids, device)):
                        seqs[i] = seqs[i] + new
                seqs = [s[:max_length] for s in seqs]
                recorder.reset()
                _replay(model, recorder, seqs, pad_id, device)
                for cat in cats:
                    for layer, stats in recorder.stats.items():
                        table.block(cat, layer)[:] += stats
                    table.prompts[cat] = table.prompts.get(cat, 0) + len(batch)
    finally:
        recorder.close()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    from omk_ray import __version__

    return table.to_json({
        "num_layers": getattr(config, "num_hidden_layers", len(table.layers)),
        "top_k": getattr(config, "top_k_experts", None) or getattr(config, "num_experts_per_tok", None),
        "model": str(model_dir),
        "revision": revision,
        "generate_tokens": generate_tokens,
        "prompts": len(prompts),
        "prompt_set_hash": _prompts_hash(prompts),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "tool": f"omk-ray {__version__} profile",
    })


def _encode(tokenizer, prompt: dict, chat_template: bool) -> list[int]:
    if chat_template and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt["prompt"])["input_ids"]
    if prompt.get("response"):
        ids = ids + tokenizer(prompt["response"], add_special_tokens=False)["input_ids"]
    return list(ids)


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos = eos if isinstance(eos, list) else [eos]
    return [e for e in {*eos, tokenizer.eos_token_id} if e is not None]


def _generate(model, seqs: list[list[int]], max_new: int, pad_id: int, eos_ids: list[int], device) -> list[list[int]]:
    """Greedy continuations (left-padded batch), each cut after its first end-of-sequence token."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             temperature=None, top_p=None, top_k=None, eos_token_id=eos_ids, pad_token_id=pad_id)
    result = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        result.append(row[:end])
    return result


def _replay(model, recorder: ExpertRecorder, seqs: list[list[int]], pad_id: int, device) -> None:
    """One teacher-forced forward over right-padded sequences; padding rows are not recorded."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    owner = torch.arange(len(seqs), device=device)[:, None].expand(-1, width)
    recorder.rows_owner = torch.where(mask.bool(), owner, -1).reshape(-1)
    recorder.recording = True
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    finally:
        recorder.recording, recorder.rows_owner = False, None


def _prompts_hash(prompts: list[dict]) -> str:
    from omk_ray.config import stable_hash

    return stable_hash(prompts)
