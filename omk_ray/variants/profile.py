"""Router profiling: teacher-forced CD scores per class, layer and expert, from forward hooks.

Per prompt: optionally generate `generate_tokens` greedily (or take the prompt's own
`response`), then replay the whole sequence once with a hook on every MoE experts module. The
hook sees exactly what the experts see (token rows, the top-k expert ids and routing weights),
recomputes each routed expert's output y, and adds per expert: `wnorm` += |w| * ||y||,
`rnorm` += ||y||, `wsum` += w, `tc` += tokens, `cc` += prompts in which it fired, and keeps
`amax` = the largest |y_i|. The same hooks (`ExpertRecorder`) record the routing of stored
samples, per sample and segment (`variants/routing.py`).

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

from omk_ray.console import report_count
from omk_ray.variants.cdscores import SUBCLASS_SEPARATOR, CDTable, merge_cd

DEFAULT_PROMPTS = "routing_profile_prompts.jsonl"


class ProfileError(ValueError):
    """Prompts or a model the profiler cannot use; the message says which."""


# -- prompts -----------------------------------------------------------------------------------


def default_prompts_path() -> Path:
    return Path(str(resources.files("omk_ray") / "_data" / DEFAULT_PROMPTS))


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


ROUTED = ("wnorm", "rnorm", "wsum", "tc", "amax")  # what the recorder keeps per owner and expert


class ExpertRecorder:
    """Hooks every experts module. While `recording`, each forward adds the statistics of the
    tokens routed to each expert to `stats[layer]`, a float64 tensor [owners, experts, ROUTED]:
    `wnorm` += |w| ||y||, `rnorm` += ||y||, `wsum` += w, `tc` += 1 per routed token, `amax` =
    max |y_i| (y: the expert's output before the routing weight w). `rows_owner` gives the owner
    of each flattened token row (a prompt, a segment of a sample, ...; -1: not recorded, e.g.
    padding); None: every row belongs to owner 0. `norms=False` records only `tc` and `wsum`,
    without recomputing any expert output (all a routing table needs)."""

    def __init__(self, model, owners: int = 1, norms: bool = True):
        self.modules = find_experts_modules(model)
        counts = {m.gate_up_proj.shape[0] for m in self.modules.values()}
        if len(counts) != 1:
            raise ProfileError(f"layers have different expert counts {sorted(counts)}")
        self.num_experts = counts.pop()
        self.norms = norms
        self.owners = owners
        self.recording = False
        self.rows_owner = None
        self.stats: dict = {}
        self.reset()
        self.handles = [
            module.register_forward_hook(self._hook(layer), with_kwargs=True) for layer, module in self.modules.items()
        ]

    def reset(self, owners: int | None = None) -> None:
        import torch

        self.owners = owners or self.owners
        self.stats = {layer: torch.zeros((self.owners, self.num_experts, len(ROUTED)), dtype=torch.float64)
                      for layer in self.modules}

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def cd_block(self, layer: int) -> np.ndarray:
        """The layer's statistics over every owner in `cdscores.FIELDS` order; `cc` = owners the expert fired for."""
        from omk_ray.variants.cdscores import FIELDS

        s = self.stats[layer].numpy()
        out = np.zeros((self.num_experts, len(FIELDS)))
        for name in ("wnorm", "rnorm", "wsum", "tc"):
            out[:, FIELDS.index(name)] = s[:, :, ROUTED.index(name)].sum(axis=0)
        out[:, FIELDS.index("cc")] = (s[:, :, ROUTED.index("tc")] > 0).sum(axis=0)
        out[:, FIELDS.index("amax")] = s[:, :, ROUTED.index("amax")].max(axis=0)
        return out

    def _hook(self, layer: int):
        wnorm, rnorm, wsum, tc, amax = range(len(ROUTED))

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
            flat = self.stats[layer].view(-1, len(ROUTED))  # row = owner * num_experts + expert
            with torch.no_grad():
                routed = (index >= 0) & (index < self.num_experts)
                rows = (owner[:, None] * self.num_experts + index)[routed].cpu()
                flat[:, tc].index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
                flat[:, wsum].index_add_(0, rows, weights[routed].double().cpu())
                if not self.norms:
                    return
                for e in index[routed].unique().tolist():
                    tok, pos = torch.where(index == e)
                    y = expert_output(module, e, hidden[tok]).float()
                    norms = y.norm(dim=-1).double().cpu()
                    rows = (owner[tok] * self.num_experts + e).cpu()
                    flat[:, wnorm].index_add_(0, rows, weights[tok, pos].double().abs().cpu() * norms)
                    flat[:, rnorm].index_add_(0, rows, norms)
                    flat[:, amax].scatter_reduce_(0, rows, y.abs().amax(dim=-1).double().cpu(), "amax")
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
    check_prompts(prompts)
    parts = run_sharded(_profile_local, prompts, num_workers, worker_options, model_dir, generate_tokens=generate_tokens,
                        **options)
    merged = merge_cd(parts)
    merged["metadata"].update(prompts=len(prompts), prompt_set_hash=_prompts_hash(prompts), workers=len(parts))
    return merged


def run_sharded(fn, items: list, num_workers: int, worker_options: dict | None, *args, **kwargs) -> list:
    """`fn(model_dir, shard, ...)` for `num_workers` interleaved shards of `items`, as Ray tasks (one GPU
    each when the cluster has GPUs): the results, one per non-empty shard. The first of `args` is
    the model folder. Uses the running Ray cluster, or starts a local one and stops it afterwards."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local")
    try:
        worker_options = default_worker_options() if worker_options is None else worker_options
        shards = [items[i::num_workers] for i in range(num_workers) if items[i::num_workers]]
        task = ray.remote(fn).options(**worker_options)
        return ray.get([task.remote(args[0], shard, *args[1:], **kwargs) for shard in shards])
    finally:
        if started:
            ray.shutdown()


def default_worker_options() -> dict:
    """Ray options of one profiling or routing worker: a CPU, and a GPU when the cluster has GPUs."""
    import ray

    return {"num_cpus": 1, **({"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {})}


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
    model, tokenizer, device = load_model(model_dir, dtype, device, revision)
    recorder = ExpertRecorder(model)
    table = CDTable(num_experts=recorder.num_experts, layers=list(recorder.modules))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_ids = _eos_ids(model, tokenizer)

    groups: dict[tuple[str, ...], list[dict]] = {}
    for p in prompts:
        groups.setdefault(categories_for(p), []).append(p)
    profiled = 0
    try:
        for cats, members in groups.items():
            for start in range(0, len(members), batch_size):
                report_count("profiling prompts", profiled, len(prompts))
                batch = members[start : start + batch_size]
                seqs = [_encode(tokenizer, p, chat_template) for p in batch]
                todo = [i for i, p in enumerate(batch) if not p.get("response")]
                if generate_tokens and todo:
                    for i, new in zip(todo, _generate(model, [seqs[i] for i in todo], generate_tokens, pad_id, eos_ids, device)):
                        seqs[i] = seqs[i] + new
                seqs = [s[:max_length] for s in seqs]
                recorder.reset(owners=len(seqs))
                replay(model, recorder, seqs, pad_id, device)
                blocks = {layer: recorder.cd_block(layer) for layer in recorder.modules}
                for cat in cats:
                    for layer, block in blocks.items():
                        table.add(cat, layer, block)
                    table.prompts[cat] = table.prompts.get(cat, 0) + len(batch)
                profiled += len(batch)
        report_count("profiling prompts", profiled, len(prompts))
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


def load_model(model_dir: str, dtype: str = "auto", device: str | None = None, revision: str | None = None):
    """(model in eval mode, tokenizer, device) of a checkpoint; the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, revision=revision, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
    ).to(device)
    model.eval()
    return model, tokenizer, device


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


def replay(model, recorder: ExpertRecorder, seqs: list[list[int]], pad_id: int, device,
           owners: list[list[int]] | None = None) -> None:
    """One teacher-forced forward over right-padded sequences. Each position is recorded for its
    owner (`owners[i][j]` for position j of sequence i; default: the sequence's index); padding
    and owner -1 are not recorded."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    if owners is None:
        owners = [[i] * len(s) for i, s in enumerate(seqs)]
    owner = torch.tensor([o + [-1] * (width - len(o)) for o in owners], device=device)
    recorder.rows_owner = owner.reshape(-1)
    recorder.recording = True
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    finally:
        recorder.recording, recorder.rows_owner = False, None


def _prompts_hash(prompts: list[dict]) -> str:
    from omk_ray.config import stable_hash

    return stable_hash(prompts)
