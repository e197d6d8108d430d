"""Drop maps: which experts each MoE layer loses, chosen from CD scores by a strategy.

Per class c, layer l, expert e the raw score is a saliency `criterion` of the profiled
statistics: `cd` (default) `s = wnorm * alpha + tc` (alpha 2.0), or `frequency`,
`weighted-frequency`, `ean`, `ean-mean`, `weighted-ean`, `reap`, `max-activation` (formulas and
sources in `cdscores.py`).

* `pooled` (v3): the criterion of the selected classes' (or questions') statistics added up
  (each weighted by its class weight); no normalization. For `cd` that is the sum of the raw scores.
* every other strategy first normalizes each (class, layer) row: `mean` divides by the row's mean
  (v4), `rank` turns it into percentile ranks in (0, 1], `none` keeps it raw; a class weight then
  multiplies the row; the rows are aggregated over classes by
  `max` (v4), `mean`, `geomean` (zeros count as 1e-12), `sum`, `lp` (p-norm, `p`, default 2),
  `softmax` (softmax-weighted mean over classes at `temperature`, default 1: -> max as it
  goes to 0, -> mean as it grows), `second` (second-highest class), `topk-mean` (mean of the
  `k` highest classes, default 2).
* `random` (`seed`, default 0): a seeded random score per layer and expert, the ablation floor;
  it ignores the statistics (protections still apply: `protect_top` then shields random experts).

Classes: `classes` picks classes (default: every top-level class, i.e. without a `/`);
`a+b` merges classes by adding their raw scores; `split_classes` replaces a class by its
subclasses (`["science"]` -> `science/chemistry`, `science/physics`, ...; or a dict naming them).

Every layer drops the same number of experts (`drop`, or `num_experts - target`).
`protect_top` shields the N best experts of each layer, `protect_per_class` the N best of
every class in each layer. `protect_super` shields REAP's super experts [cdscores.py: 1, 3]:
those whose max activation (`amax`, over every class) exceeds both the 99.5th percentile over all
layers and experts and a tenth of the largest; like REAP's default, only in the first 75% of the
MoE layers unless `protect_super_all_layers` (REAP's `perserve_outliers`). **Ties**: experts are ranked by score, highest first, and among
equal scores by expert id, lowest first; a layer drops the last `drop` unprotected experts of
that ranking, so between equal scores the higher id is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from omk_ray.files import not_utf8
from omk_ray.variants.cdscores import (
    CRITERIA, FIELDS, NEEDS, SUBCLASS_SEPARATOR, class_stats, combine_fields, criterion_scores, has_field,
    validate_cd,
)  # fmt: skip
from omk_ray.variants.spec import NORMALIZERS, STRATEGIES, STRATEGY_PARAMS, DropMapSpec, explain  # noqa: F401

GEOMEAN_FLOOR = 1e-12
# REAP's super-expert rule (get_super_expert_indices in CerebrasResearch/reap, src/reap/model_util.py)
SUPER_QUANTILE, SUPER_FRACTION_OF_MAX, SUPER_EARLY_LAYERS = 99.5, 0.1, 0.75


class DropMapError(ValueError):
    """A drop map (or the request for one) that cannot be used; the message says why."""


@dataclass
class DropPlan:
    """A drop map with what it was chosen from: the per-layer scores and the protected experts."""

    layers: list[int]
    scores: np.ndarray  # [layers, experts], the aggregated score the ranking used
    protected: dict[str, list[int]]
    drop_map: dict[str, list[int]]
    params: dict[str, Any] = field(default_factory=dict)


def build_drop_map(cd: dict, spec: DropMapSpec | str | None = None, **settings) -> dict[str, list[int]]:
    """The drop map `{"LAYER": [dropped ids, ascending]}`: `plan_drop_map(...).drop_map`, same arguments."""
    return plan_drop_map(cd, spec, **settings).drop_map


def drop_map_spec(spec: DropMapSpec | str | None = None, **settings) -> DropMapSpec:
    """A DropMapSpec as given, or from a strategy name and keywords (`DropMapSpec.of`); DropMapError
    naming what is wrong."""
    if isinstance(spec, DropMapSpec) and not settings:
        return spec
    if isinstance(spec, DropMapSpec):
        settings = {**spec.model_dump(exclude_unset=True), **settings}
        spec = None
    try:
        return DropMapSpec.of(spec, **settings)
    except ValidationError as err:
        raise DropMapError(explain(err)) from None


def plan_drop_map(cd: dict, spec: DropMapSpec | str | None = None, **settings) -> DropPlan:
    """Choose the drop map `spec` describes from the CD scores `cd`. `spec` is a DropMapSpec (a
    build block that chooses its map is one), or a strategy name with the other settings and the
    strategy's parameters as keywords: `plan_drop_map(cd, "lp", drop=4, p=3)`."""
    spec = drop_map_spec(spec, **settings)
    validate_cd(cd)
    criterion, protect_super = spec.criterion, spec.protect_super
    for field_name in {NEEDS.get(criterion), "amax" if protect_super else None} - {None}:
        if not has_field(cd, field_name):
            raise DropMapError(f"the CD scores have no `{field_name}` (profiled by an older omk-ray): "
                               f"profile again for criterion {criterion!r}" + (" / protect_super" if protect_super else ""))
    strategy, normalize, alpha = spec.strategy, spec.normalize, spec.alpha
    protect_top, protect_per_class = spec.protect_top, spec.protect_per_class
    params = spec.strategy_params
    num_experts = cd["metadata"]["num_experts"]
    n_drop = _drop_count(num_experts, spec.target, spec.drop)

    layers, stats = class_stats(cd)
    groups = select_classes(list(stats), spec.classes, spec.split_classes)
    weights = dict(spec.weights or {})
    unknown = set(weights) - set(groups)
    if unknown:
        raise DropMapError(f"weights name classes that are not selected: {sorted(unknown)} (selected: {list(groups)})")
    if strategy == "second" and len(groups) < 2:
        raise DropMapError("strategy `second` needs at least two classes")
    if strategy == "topk-mean" and not 1 <= params["k"] <= len(groups):
        raise DropMapError(f"topk-mean: k={params['k']} must be in 1..{len(groups)} (the number of classes)")

    merged = [_pool([stats[part] for part in parts]) for parts in groups.values()]  # `a+b`: one class
    class_weights = np.array([float(weights.get(name, 1.0)) for name in groups])
    per_class = np.stack([criterion_scores(m, criterion, alpha) for m in merged])  # [C, L, E]
    if strategy == "pooled":
        normalize = "none"
        scores = criterion_scores(_pool(merged, class_weights), criterion, alpha)
    elif strategy == "random":
        scores = np.random.default_rng(params["seed"]).random(per_class.shape[1:])
    per_class = _normalize(per_class, normalize)
    per_class *= class_weights[:, None, None]
    if strategy not in ("pooled", "random"):
        scores = _aggregate(per_class, strategy, params)
    supers = super_experts(layers, stats, spec.protect_super_all_layers) if protect_super else {}

    protected: dict[str, list[int]] = {}
    drop_map: dict[str, list[int]] = {}
    for li, layer in enumerate(layers):
        shield = set(_ranking(scores[li])[:protect_top].tolist()) | set(supers.get(str(layer), []))
        for ci in range(per_class.shape[0]):
            shield.update(_ranking(per_class[ci, li])[:protect_per_class].tolist())
        candidates = [e for e in _ranking(scores[li]).tolist() if e not in shield]
        if len(candidates) < n_drop:
            raise DropMapError(
                f"layer {layer}: {len(shield)} of {num_experts} experts are protected "
                f"(protect_top={protect_top}, protect_per_class={protect_per_class}, "
                f"super experts {supers.get(str(layer), [])}), "
                f"so at most {len(candidates)} can be dropped, not {n_drop}"
            )
        protected[str(layer)] = sorted(shield)
        drop_map[str(layer)] = sorted(candidates[len(candidates) - n_drop :])
    return DropPlan(
        layers=layers,
        scores=scores,
        protected=protected,
        drop_map=drop_map,
        params={
            "strategy": strategy, "normalize": normalize, "alpha": alpha, "drop": n_drop,
            "target": num_experts - n_drop, "num_experts": num_experts, "protect_top": protect_top,
            "protect_per_class": protect_per_class, "classes": {k: v for k, v in groups.items()},
            "weights": weights, "criterion": criterion, "protect_super": protect_super,
            "protect_super_all_layers": spec.protect_super_all_layers, "super_experts": supers, **params,
        },
    )


def _pool(parts: list[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """Statistics [L, E, F] of several classes as one: weighted sums, weighted maxima for MAX_FIELDS."""
    weights = np.ones(len(parts)) if weights is None else weights
    total = parts[0] * weights[0]
    for part, w in zip(parts[1:], weights[1:]):
        total = combine_fields(total, part * w)
    return total


def super_experts(layers: list[int], stats: dict[str, np.ndarray], all_layers: bool = False) -> dict[str, list[int]]:
    """REAP's super experts: layer -> experts whose max activation over every class exceeds
    max(99.5th percentile over all layers and experts, largest / 10); only the first 75% of the
    layers unless `all_layers`."""
    amax = np.max(np.stack([s[..., FIELDS.index("amax")] for s in stats.values()]), axis=0)  # [L, E]
    threshold = max(float(np.quantile(amax, SUPER_QUANTILE / 100)), float(amax.max()) * SUPER_FRACTION_OF_MAX)
    found = amax > threshold
    if not all_layers:
        found[int(len(layers) * SUPER_EARLY_LAYERS):] = False
    return {str(layer): np.flatnonzero(found[li]).tolist() for li, layer in enumerate(layers) if found[li].any()}


def select_classes(available: list[str], classes=None, split_classes=None) -> dict[str, list[str]]:
    """Selected class label -> the CD categories it adds up (`a+b` merges, splits expand)."""
    chosen = list(classes) if classes else [c for c in available if SUBCLASS_SEPARATOR not in c] or list(available)
    groups: dict[str, list[str]] = {}
    for label in chosen:
        parts = [p.strip() for p in str(label).split("+")]
        missing = [p for p in parts if p not in available]
        if missing:
            raise DropMapError(f"class {missing[0]!r} is not in the CD scores (they have: {', '.join(sorted(available))})")
        groups["+".join(parts)] = parts
    if split_classes:
        splits = split_classes if isinstance(split_classes, dict) else {c: None for c in split_classes}
        for name, subs in splits.items():
            if name not in groups:
                raise DropMapError(f"cannot split class {name!r}: it is not among the selected classes {list(groups)}")
            prefix = name + SUBCLASS_SEPARATOR
            if subs is None:
                subs = sorted(c for c in available if c.startswith(prefix))
                if not subs:
                    raise DropMapError(f"cannot split class {name!r}: the CD scores have no `{prefix}...` subclasses")
            subs = [s if s.startswith(prefix) else prefix + s for s in subs]
            missing = [s for s in subs if s not in available]
            if missing:
                raise DropMapError(f"subclass {missing[0]!r} is not in the CD scores")
            at = list(groups).index(name)
            items = list(groups.items())
            groups = dict(items[:at] + [(s, [s]) for s in subs] + items[at + 1 :])
    return groups


def _drop_count(num_experts: int, target: int | None, drop: int | None) -> int:
    n_drop = num_experts - target if target is not None else drop
    if not isinstance(n_drop, int) or not 0 <= n_drop < num_experts:
        raise DropMapError(
            f"cannot drop {n_drop} of {num_experts} experts per layer (target={target}, drop={drop}): "
            f"at least one expert must stay"
        )
    return n_drop


def _normalize(per_class: np.ndarray, how: str) -> np.ndarray:
    from scipy import stats

    if how == "none":
        return per_class.copy()
    if how == "mean":
        mean = per_class.mean(axis=-1, keepdims=True)
        return np.divide(per_class, mean, out=np.zeros_like(per_class), where=mean > 0)
    return stats.rankdata(per_class, axis=-1) / per_class.shape[-1]


def _aggregate(per_class: np.ndarray, strategy: str, params: dict[str, Any]) -> np.ndarray:
    from scipy import stats
    from scipy.special import softmax

    if strategy in ("pooled", "sum"):
        return per_class.sum(axis=0)
    if strategy == "max":
        return per_class.max(axis=0)
    if strategy == "mean":
        return per_class.mean(axis=0)
    if strategy == "geomean":
        return stats.gmean(np.maximum(per_class, GEOMEAN_FLOOR), axis=0)
    if strategy == "lp":
        p = float(params["p"])
        return (np.abs(per_class) ** p).sum(axis=0) ** (1.0 / p)
    if strategy == "softmax":
        return (softmax(per_class / float(params["temperature"]), axis=0) * per_class).sum(axis=0)
    ordered = -np.sort(-per_class, axis=0)
    if strategy == "second":
        return ordered[1]
    return ordered[: params["k"]].mean(axis=0)  # topk-mean


def _ranking(scores: np.ndarray) -> np.ndarray:
    """Expert ids, best first: score descending, then id ascending."""
    return np.lexsort((np.arange(len(scores)), -scores))


# -- checking, summarizing, comparing ----------------------------------------------------------


def validate_drop_map(
    drop_map: Any,
    num_experts: int | None = None,
    layers: list[int] | None = None,
    protected: dict[str, list[int]] | None = None,
    top_k: int | None = None,
) -> dict[str, list[int]]:
    """The drop map normalized (string layer keys, sorted ids), or DropMapError naming the problem."""
    if not isinstance(drop_map, dict) or not drop_map:
        raise DropMapError(f"a drop map must be a non-empty JSON object {{layer: [expert ids]}}, got {drop_map!r:.80}")
    clean: dict[str, list[int]] = {}
    for key, ids in drop_map.items():
        if not str(key).isdigit():
            raise DropMapError(f"layer key {key!r} is not a non-negative integer")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DropMapError(f"layer {key}: expected a list of integer expert ids, got {ids!r:.80}")
        if str(int(key)) in clean:
            raise DropMapError(f"layer {key} appears twice")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise DropMapError(f"layer {key}: expert ids listed twice: {dupes}")
        if num_experts is not None:
            bad = [i for i in ids if not 0 <= i < num_experts]
            if bad:
                raise DropMapError(f"layer {key}: expert ids {bad} are outside 0..{num_experts - 1}")
        clean[str(int(key))] = sorted(ids)
    counts = {layer: len(ids) for layer, ids in clean.items()}
    if len(set(counts.values())) > 1:
        raise DropMapError(
            f"every layer must drop the same number of experts (transformers and vLLM size all layers "
            f"from one num_experts); got {counts}"
        )
    n_drop = next(iter(counts.values()))
    if num_experts is not None:
        if n_drop >= num_experts:
            raise DropMapError(f"the drop map removes all {num_experts} experts of a layer")
        if top_k is not None and num_experts - n_drop < top_k:
            raise DropMapError(
                f"the drop map keeps {num_experts - n_drop} experts per layer, fewer than the model's top-k ({top_k})"
            )
    if layers is not None:
        want = {str(layer) for layer in layers}
        extra, missing = sorted(set(clean) - want, key=int), sorted(want - set(clean), key=int)
        if extra:
            raise DropMapError(f"the drop map names layers {extra}, which have no MoE experts in the model")
        if missing:
            raise DropMapError(f"the drop map has no entry for MoE layers {missing}; every MoE layer needs one")
    for layer, shield in (protected or {}).items():
        hit = sorted(set(clean.get(str(layer), [])) & set(shield))
        if hit:
            raise DropMapError(f"layer {layer}: the drop map drops protected experts {hit}")
    return clean


def load_drop_map(path: str | Path) -> dict[str, list[int]]:
    path = Path(path)
    if not path.is_file():
        raise DropMapError(f"{path}: no such drop-map file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DropMapError(not_utf8(path, err)) from None
    except json.JSONDecodeError as err:
        raise DropMapError(f"{path}: not valid JSON: {err}") from None
    try:
        return validate_drop_map(raw)
    except DropMapError as err:
        raise DropMapError(f"{path}: {err}") from None


def summarize_plan(plan: DropPlan, near_tie: float = 0.01) -> dict[str, Any]:
    """Per layer: the weakest kept and strongest dropped score, their margin, and the near-ties:
    unprotected experts on either side whose score is within `near_tie` (relative) of the
    other side's boundary score, i.e. those a small change in the scores could swap."""
    layers = {}
    for li, layer in enumerate(plan.layers):
        key = str(layer)
        scores = plan.scores[li]
        dropped, shield = set(plan.drop_map[key]), set(plan.protected[key])
        entry: dict[str, Any] = {"dropped": plan.drop_map[key], "protected": plan.protected[key]}
        kept = [e for e in range(len(scores)) if e not in dropped and e not in shield]
        if dropped and kept:
            kept_min, dropped_max = float(scores[kept].min()), float(scores[list(dropped)].max())
            tol = near_tie * max(abs(kept_min), abs(dropped_max), 1e-12)
            entry.update(
                kept_min=kept_min,
                dropped_max=dropped_max,
                margin=kept_min - dropped_max,
                near_ties=[
                    {"id": e, "score": float(scores[e]), "dropped": e in dropped}
                    for e in _ranking(scores).tolist()
                    if (e in dropped and scores[e] >= kept_min - tol) or (e in kept and scores[e] <= dropped_max + tol)
                ],
            )
        layers[key] = entry
    return {
        "params": plan.params,
        "protected": plan.protected,
        "layers": layers,
        "layers_with_near_ties": sum(1 for e in layers.values() if e.get("near_ties")),
    }


def compare_drop_maps(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, Any]:
    """Per layer: experts only one map drops, and the overlap |a & b| / max(|a|, |b|)."""
    a, b = validate_drop_map(a), validate_drop_map(b)
    layers = {}
    for layer in sorted(set(a) | set(b), key=int):
        sa, sb = set(a.get(layer, [])), set(b.get(layer, []))
        size = max(len(sa), len(sb))
        layers[layer] = {
            "only_a": sorted(sa - sb),
            "only_b": sorted(sb - sa),
            "overlap": len(sa & sb) / size if size else 1.0,
        }
    shared = sum(len(set(a.get(k, [])) & set(b.get(k, []))) for k in layers)
    total = sum(max(len(a.get(k, [])), len(b.get(k, []))) for k in layers)
    return {
        "layers": layers,
        "overlap": shared / total if total else 1.0,
        "differing_experts": sum(len(v["only_a"]) + len(v["only_b"]) for v in layers.values()),
    }


def drop_map_hash(drop_map: dict[str, list[int]]) -> str:
    from omk_ray.config import stable_hash

    return stable_hash(validate_drop_map(drop_map))


__all__ = [
    "CRITERIA", "DropMapError", "DropPlan", "NORMALIZERS", "STRATEGIES", "build_drop_map", "compare_drop_maps",
    "drop_map_hash", "load_drop_map", "plan_drop_map", "select_classes", "summarize_plan", "super_experts",
    "validate_drop_map",
]
