"""The facts table (the model card's first): per variant, what its checkpoint and provenance say.

Where a variant's facts come from, first found wins: what its import recorded
(`variants/<variant>.json`, see `omk_ray.results.importers`), else its checkpoint as the runs
recorded it (`model_paths` in the manifests: a local folder or the Hugging Face cache, headers
only; never the network). The facts its grid declares (`facts:`) are written over either. A
pruned variant without provenance (a checkpoint pruned elsewhere) gets its dropped experts from
the baseline's expert count. Nothing here fails a comparison: an unreadable checkpoint is a row
that says why.
"""

from __future__ import annotations

import json

from omk_ray.analysis.declared import Declared
from omk_ray.results.importers import variant_sidecar_path
from omk_ray.results.store import ResultsStore
from omk_ray.variants.facts import Facts, FactsError, checkpoint_facts


def variant_facts(store: ResultsStore, declared: Declared, baseline: str, variants: list[str]) -> list[dict]:
    facts = {v: _facts(store, declared, v) for v in [baseline, *variants]}
    base = facts[baseline]
    rows = []
    if base.dropped_per_layer is None and base.experts_per_layer:
        base.dropped_per_layer = 0  # the baseline is the reference: what it has, nothing dropped
    for variant, f in facts.items():
        if (variant != baseline and f.dropped_per_layer is None and base.experts_per_layer and f.experts_per_layer
                and f.experts_per_layer <= base.experts_per_layer):
            f.base_experts, f.dropped_per_layer = base.experts_per_layer, base.experts_per_layer - f.experts_per_layer
            f.source += f"; experts dropped: against {baseline}'s count"
        row = f.to_dict()
        row.pop("recipe")
        capacity = row.pop("capacity_removed")
        rows.append({"variant": variant, "role": "baseline" if variant == baseline else "variant", **row,
                     "capacity_removed_pct": None if capacity is None else 100 * capacity,
                     "recipe": json.dumps(f.recipe, sort_keys=True) if f.recipe else None})
    return rows


def _facts(store: ResultsStore, declared: Declared, variant: str) -> Facts:
    sidecar = variant_sidecar_path(store.root, variant)
    if sidecar.is_file():
        try:
            facts = Facts.from_dict(json.loads(sidecar.read_text())["facts"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            facts = Facts(source=f"{sidecar}: unreadable ({err})")
    elif variant in declared.models:
        model, revision = declared.models[variant]
        try:
            facts = checkpoint_facts(model, revision)
        except FactsError as err:
            facts = Facts(model=model, source=f"unread: {err}")
    else:
        facts = Facts(source="no checkpoint recorded")
    return facts.merged(declared.facts.get(variant))
