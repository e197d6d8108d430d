"""Prune the toy model and score every class: the specialization and max-vs-geomean checks.

Uses the variant factory end to end: `profile_model` (CD scores per class on the profiling
prompts), `build_drop_map` (a strategy, or one class's own top experts), `prune_checkpoint`
(a real smaller checkpoint), then held-out accuracy per class through an engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omk_ray.toy.evaluate import accuracy, answers, open_engine


def profile(model_dir: str | Path, prompts: list[dict] | None = None) -> dict:
    from omk_ray.toy.data import profile_rows
    from omk_ray.variants.profile import profile_model

    return profile_model(str(model_dir), prompts if prompts is not None else profile_rows(), dtype="float32",
                         batch_size=64)


def class_top_experts(cd: dict, cls: str, n: int, alpha: float = 2.0) -> dict[str, list[int]]:
    """A drop map of the `n` experts class `cls` relies on most in every layer (score wnorm*alpha + tc)."""
    from omk_ray.variants.cdscores import class_scores

    layers, raw = class_scores(cd, alpha)
    if cls not in raw:
        raise KeyError(f"class {cls!r} is not in the CD scores (they have: {', '.join(sorted(raw))})")
    return {str(layer): sorted(np.argsort(-raw[cls][i], kind="stable")[:n].tolist()) for i, layer in enumerate(layers)}


def class_experts(cd: dict, cls: str) -> dict[str, list[int]]:
    """A drop map of the experts class `cls` relies on: its top expert per subclass in every layer
    (one per layer for a class without subclasses), by the class's own score."""
    from omk_ray.variants.cdscores import SUBCLASS_SEPARATOR, categories_of

    subclasses = [c for c in categories_of(cd) if c.startswith(cls + SUBCLASS_SEPARATOR)]
    return class_top_experts(cd, cls, max(1, len(subclasses)))


def strategy_map(cd: dict, strategy: str, drop: int, split: list[str] | None = None) -> dict[str, list[int]]:
    from omk_ray.variants.dropmap import build_drop_map

    return build_drop_map(cd, strategy=strategy, drop=drop, split_classes=split)


def score_pruned(model_dir: str | Path, drop_map: dict, out_dir: str | Path, problems: list[dict],
                 engine: str = "transformers") -> dict[str, float]:
    """Prune model_dir by drop_map into out_dir (reused if it exists) and score it per class."""
    from omk_ray.variants.surgery import prune_checkpoint

    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists():
        prune_checkpoint(model_dir, drop_map, out_dir, {"tool": "omk-ray toy ablation"})
    eng = open_engine(str(out_dir), engine)
    try:
        return accuracy(problems, answers(eng, problems))
    finally:
        eng.close()
