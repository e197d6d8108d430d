"""CD (ContribDynamic) scores: per class, layer and expert, how much the expert contributed.

The JSON form (input of `dropmap`, output of `profile`):

    {"metadata": {"num_layers": L, "num_experts": E, ...},
     "categories": {CLASS: {LAYER: [{"id", "wnorm", "rnorm", "wsum", "tc", "cc"}, ...]}}}

`wnorm` sums ||routing weight x expert output|| over the tokens routed to the expert, `rnorm`
the same without the weight, `wsum` the routing weights, `tc` the tokens routed, `cc` the prompts
in which the expert fired, `amax` the largest |activation| of the expert's output over those
tokens (optional; older files lack it). The pooled (v3) form has `questions` in place of
`categories`. A science subclass is a category of its own named `science/chemistry`.

In memory the scores are `CDTable`s: one float64 array [experts, fields] per (class, layer),
which merge by addition (`amax` by maximum), so shards profiled on different workers add up exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FIELDS = ("wnorm", "rnorm", "wsum", "tc", "cc", "amax")
MAX_FIELDS = ("amax",)  # merged by maximum; every other field adds up
SUBCLASS_SEPARATOR = "/"


class CDScoresError(ValueError):
    """A CD-scores file or dict that cannot be used; the message names the spot."""


@dataclass
class CDTable:
    """Accumulated CD statistics: class -> layer -> float64 array [num_experts, len(FIELDS)]."""

    num_experts: int
    layers: list[int]
    classes: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    prompts: dict[str, int] = field(default_factory=dict)

    def block(self, name: str, layer: int) -> np.ndarray:
        per_layer = self.classes.setdefault(name, {})
        if layer not in per_layer:
            per_layer[layer] = np.zeros((self.num_experts, len(FIELDS)))
        return per_layer[layer]

    def add(self, name: str, layer: int, values: np.ndarray) -> None:
        """Fold statistics [num_experts, len(FIELDS)] into (class, layer)."""
        block = self.block(name, layer)
        block[:] = combine_fields(block, values)

    def merge(self, other: "CDTable") -> "CDTable":
        if other.num_experts != self.num_experts or other.layers != self.layers:
            raise CDScoresError(
                f"cannot merge CD scores of different shapes: {len(self.layers)} layers x {self.num_experts} "
                f"experts vs {len(other.layers)} layers x {other.num_experts} experts"
            )
        for name, per_layer in other.classes.items():
            for layer, values in per_layer.items():
                self.add(name, layer, values)
        for name, n in other.prompts.items():
            self.prompts[name] = self.prompts.get(name, 0) + n
        return self

    def to_json(self, metadata: dict[str, Any]) -> dict[str, Any]:
        categories = {}
        for name in sorted(self.classes):
            categories[name] = {
                str(layer): [
                    {"id": e, **{f: _plain(values[e, i]) for i, f in enumerate(FIELDS)}}
                    for e in range(self.num_experts)
                ]
                for layer, values in sorted(self.classes[name].items())
            }
        meta = {
            "num_layers": metadata.get("num_layers", len(self.layers)),
            "num_experts": self.num_experts,
            "moe_layers": self.layers,
            "prompts_per_category": dict(sorted(self.prompts.items())),
            **metadata,
        }
        return {"metadata": meta, "categories": categories}


_MAX_MASK = np.array([f in MAX_FIELDS for f in FIELDS])


def combine_fields(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Statistics of two disjoint sets of tokens together (last axis: FIELDS): sums, and maxima for MAX_FIELDS."""
    return np.where(_MAX_MASK, np.maximum(a, b), a + b)


def _plain(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def merge_cd(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up CD-score dicts of the same model (e.g. prompt shards profiled on several workers)."""
    if not parts:
        raise CDScoresError("nothing to merge")
    tables = [from_json(p) for p in parts]
    total = tables[0]
    for table in tables[1:]:
        total.merge(table)
    meta = dict(parts[0]["metadata"])
    meta.pop("prompts_per_category", None)
    meta["prompts"] = sum(p["metadata"].get("prompts", 0) for p in parts)
    return total.to_json(meta)


def load_cd(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CDScoresError(f"{path}: no such CD-scores file")
    try:
        cd = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CDScoresError(f"{path}: not valid JSON: {err}") from None
    try:
        validate_cd(cd)
    except CDScoresError as err:
        raise CDScoresError(f"{path}: {err}") from None
    return cd


def categories_of(cd: dict[str, Any]) -> dict[str, Any]:
    """The per-class scores, or the per-question ones of the pooled (v3) form."""
    return cd["categories"] if "categories" in cd else cd["questions"]


def validate_cd(cd: Any) -> None:
    """Raise CDScoresError naming the first problem of a CD-scores dict."""
    if not isinstance(cd, dict):
        raise CDScoresError(f"CD scores must be a JSON object, got {type(cd).__name__}")
    meta = cd.get("metadata")
    if not isinstance(meta, dict):
        raise CDScoresError("missing `metadata` object")
    num_experts = meta.get("num_experts")
    if not isinstance(num_experts, int) or isinstance(num_experts, bool) or num_experts < 1:
        raise CDScoresError(f"metadata.num_experts must be a positive integer, got {num_experts!r}")
    if ("categories" in cd) == ("questions" in cd):
        raise CDScoresError("needs exactly one of `categories` (per class) or `questions` (pooled v3 form)")
    groups = categories_of(cd)
    if not isinstance(groups, dict) or not groups:
        raise CDScoresError("`categories` must be a non-empty object")
    layer_sets = set()
    for name, layers in groups.items():
        if not isinstance(layers, dict) or not layers:
            raise CDScoresError(f"class {name!r}: expected an object of layers")
        for layer, experts in layers.items():
            where = f"class {name!r}, layer {layer!r}"
            if not str(layer).isdigit():
                raise CDScoresError(f"{where}: layer keys must be integers as strings")
            if not isinstance(experts, list):
                raise CDScoresError(f"{where}: expected a list of experts")
            seen = set()
            for entry in experts:
                if not isinstance(entry, dict):
                    raise CDScoresError(f"{where}: expert entries must be objects, got {entry!r}")
                eid = entry.get("id")
                if not isinstance(eid, int) or isinstance(eid, bool) or not 0 <= eid < num_experts:
                    raise CDScoresError(f"{where}: expert id {eid!r} is not in 0..{num_experts - 1}")
                if eid in seen:
                    raise CDScoresError(f"{where}: expert {eid} appears twice")
                seen.add(eid)
                for key in ("wnorm", "tc"):
                    value = entry.get(key)
                    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                        raise CDScoresError(f"{where}, expert {eid}: `{key}` must be a finite number >= 0, got {value!r}")
        layer_sets.add(frozenset(layers))
    if len(layer_sets) > 1:
        raise CDScoresError("classes cover different sets of layers")


def from_json(cd: dict[str, Any]) -> CDTable:
    validate_cd(cd)
    groups = categories_of(cd)
    layers = sorted(int(layer) for layer in next(iter(groups.values())))
    table = CDTable(num_experts=cd["metadata"]["num_experts"], layers=layers)
    for name, per_layer in groups.items():
        for layer, experts in per_layer.items():
            block = table.block(name, int(layer))
            for entry in experts:
                block[entry["id"]] = [float(entry.get(f, 0.0)) for f in FIELDS]
    table.prompts = dict(cd["metadata"].get("prompts_per_category", {}))
    return table


# -- saliency criteria ------------------------------------------------------------------------
#
# A criterion turns the statistics of one (class, layer) into one score per expert. Over the
# tokens t routed to expert e (N_e of them): w_t is the weight the layer multiplies e's output by
# (Gemma 4: the top-k softmax renormalised, times the per-expert scale), y_t is e's output before it.
#
#   cd                  alpha * sum |w_t| ||y_t|| + N_e  = wnorm*alpha + tc   ContribDynamic: the seed card's v3/v4 score
#   frequency           N_e                              = tc                 REAP's `expert_frequency` [1]
#   weighted-frequency  sum w_t                          = wsum               REAP's `weighted_expert_frequency_sum` [1]
#   ean                 sum ||y_t||                      = rnorm              expert activation norm (EAN) [2]; REAP's `ean_sum` [1]
#   ean-mean            sum ||y_t|| / N_e                = rnorm / tc         REAP's `ean_mean` [1]
#   weighted-ean        sum |w_t| ||y_t||                = wnorm              REAP's `weighted_ean_sum` [1]
#   reap                sum |w_t| ||y_t|| / N_e          = wnorm / tc         REAP's saliency [1] (its observer's `reap`)
#   max-activation      max_t max_i |y_t,i|              = amax               REAP's `max_activations` [1], super experts [3]
#
# A mean over no tokens scores 0. Classes merged (`a+b`, `pooled`) are merged on the statistics
# first (sums; maxima for amax), so a merged `reap` is the mean over the merged tokens.
# Where this differs from REAP's observer (src/reap/observer.py of CerebrasResearch/reap): its gate
# value is the router softmax over all experts (renormalised over the top k on request), ours the
# weight the layer applies; its max activation is the signed maximum, ours the magnitude (super
# experts are defined by extreme outliers of either sign [3]).
#
# [1] Lasby et al., "REAP the Experts: Why Pruning Prevails for One-Shot MoE Compression" (Cerebras),
#     arXiv 2510.13999; code github.com/CerebrasResearch/reap.
# [2] Jaiswal et al., "Finding Fantastic Experts in MoEs: A Unified Study for Expert Dropping Strategies
#     and Observations", arXiv 2504.05586, the source later pruning work cites for activation-norm criteria;
#     the sum/mean forms here are REAP's.
# [3] Su et al., "Unveiling Super Experts in Mixture-of-Experts Large Language Models", arXiv 2507.23279.

_F = {name: i for i, name in enumerate(FIELDS)}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


CRITERIA = {
    "cd": lambda s, alpha: s[..., _F["wnorm"]] * alpha + s[..., _F["tc"]],
    "frequency": lambda s, alpha: s[..., _F["tc"]],
    "weighted-frequency": lambda s, alpha: s[..., _F["wsum"]],
    "ean": lambda s, alpha: s[..., _F["rnorm"]],
    "ean-mean": lambda s, alpha: _ratio(s[..., _F["rnorm"]], s[..., _F["tc"]]),
    "weighted-ean": lambda s, alpha: s[..., _F["wnorm"]],
    "reap": lambda s, alpha: _ratio(s[..., _F["wnorm"]], s[..., _F["tc"]]),
    "max-activation": lambda s, alpha: s[..., _F["amax"]],
}
NEEDS = {"ean": "rnorm", "ean-mean": "rnorm", "max-activation": "amax"}  # fields older files may lack


def class_stats(cd: dict[str, Any]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Per class: the statistics as an array [layers, experts, len(FIELDS)]; experts absent count 0."""
    table = from_json(cd)
    return table.layers, {name: np.stack([per_layer[layer] for layer in table.layers])
                          for name, per_layer in table.classes.items()}


def criterion_scores(stats: np.ndarray, criterion: str = "cd", alpha: float = 2.0) -> np.ndarray:
    """One criterion (see CRITERIA above) of statistics [..., len(FIELDS)]."""
    if criterion not in CRITERIA:
        raise CDScoresError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[criterion](stats, alpha)


def has_field(cd: dict[str, Any], name: str) -> bool:
    """Whether the scores record `name` (files from before a field existed do not)."""
    first_class = next(iter(categories_of(cd).values()))
    experts = next(iter(first_class.values()))
    return bool(experts) and name in experts[0]


def class_scores(cd: dict[str, Any], alpha: float = 2.0, criterion: str = "cd") -> tuple[list[int], dict[str, np.ndarray]]:
    """Per class: the criterion's score (default: wnorm * alpha + tc) as an array [layers, experts]."""
    layers, stats = class_stats(cd)
    return layers, {name: criterion_scores(values, criterion, alpha) for name, values in stats.items()}
