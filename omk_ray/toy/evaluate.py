"""Held-out accuracy of a toy checkpoint per class and subclass, through a real engine.

Exact match after strip, as the `jsonl` bench scores it; greedy, at most `MAX_NEW_TOKENS`.
"""

from __future__ import annotations

from collections import defaultdict

from omk_ray.config import Recipe, VariantSpec
from omk_ray.engines.base import Engine, Request
from omk_ray.toy.tasks import MAX_ANSWER_CHARS

MAX_NEW_TOKENS = MAX_ANSWER_CHARS + 2  # the answer, `<turn|>`, one spare
RECIPE = Recipe(max_gen_toks=MAX_NEW_TOKENS, temperature=0)


def toy_variant(name: str, model_dir: str, engine: str = "transformers") -> VariantSpec:
    """A float32 variant the CPU engines serve (vLLM: eager, 256-token context)."""
    args = {"dtype": "float32", "max_model_len": 256, "batch_size": 64}
    if engine == "vllm":
        args["extra"] = {"enforce_eager": True}
    return VariantSpec(name=name, model=str(model_dir), engine=engine, engine_args=args)


def open_engine(model_dir: str, engine: str = "transformers") -> Engine:
    from omk_ray.engines import engine_class

    return engine_class(engine)(toy_variant(f"toy-{engine}", model_dir, engine), str(model_dir))


def answers(engine: Engine, problems: list[dict]) -> list[str]:
    requests = [Request(id=p["id"], messages=[{"role": "user", "content": p["prompt"]}]) for p in problems]
    return [c.text for c in engine.generate_batch(requests, RECIPE)]


def accuracy(problems: list[dict], responses: list[str]) -> dict[str, float]:
    """Accuracy per class, per `class/subclass`, and `all`."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, text in zip(problems, responses, strict=True):
        ok = text.strip() == p["target"].strip()
        hits["all"].append(ok)
        hits[p["class"]].append(ok)
        if p.get("subclass"):
            hits[f"{p['class']}/{p['subclass']}"].append(ok)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(hits.items())}


def evaluate(model_dir: str, problems: list[dict] | None = None, engine: str = "transformers") -> dict[str, float]:
    """Open an engine on model_dir, answer the held-out problems, return accuracy per class."""
    from omk_ray.toy.tasks import heldout_problems

    problems = problems if problems is not None else heldout_problems("test")
    eng = open_engine(model_dir, engine)
    try:
        return accuracy(problems, answers(eng, problems))
    finally:
        eng.close()
