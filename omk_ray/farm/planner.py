"""From a grid config to the samples still to generate.

A sample is one (variant, bench, doc, repeat). The plan lists every expected sample, drops
those the results store already holds (same variant fingerprint and recipe hash), and
groups the rest per variant and bench with a cost estimate, so the scheduler can hand out
the longest work first. Units are cut from these groups at dispatch time (see scheduler).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from omk_ray.benches import Doc, make_bench
from omk_ray.config import GridConfig, Recipe, VariantSpec, stable_hash
from omk_ray.results.store import ResultsStore

FINGERPRINT_FILES = ("config.json", "model.safetensors.index.json", "omk_ray_provenance.json")


class PlanError(ValueError):
    """A grid that cannot run as configured (checked before anything starts)."""


@dataclass
class BenchWork:
    """The missing samples of one variant on one bench."""

    variant: str
    bench: str
    recipe: Recipe
    samples: list[tuple[Doc, int]]  # (doc, repeat)
    expected: int  # samples the grid asks for, done or not
    tokens_per_sample: float
    doc_order: list[str] = field(default_factory=list)  # every doc id of the bench, in order

    @property
    def est_tokens(self) -> float:
        return len(self.samples) * self.tokens_per_sample


@dataclass
class Plan:
    grid: GridConfig
    fingerprints: dict[str, str]
    model_paths: dict[str, str]
    work: list[BenchWork]
    dataset_revisions: dict[str, str | None] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return sum(len(w.samples) for w in self.work)

    @property
    def expected(self) -> int:
        return sum(w.expected for w in self.work)

    def units_estimate(self) -> int:
        size = self.grid.farm.shard_size
        return sum(-(-len(w.samples) // size) for w in self.work if w.samples)

    def recipe_hashes(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for w in self.work:
            out.setdefault(w.variant, {})[w.bench] = w.recipe.hash
        return out


def variant_fingerprint(variant: VariantSpec, model_path: str) -> str:
    """Identity of a variant's outputs: its name, weights and the engine settings that change tokens."""
    weights: dict[str, object] = {"model": variant.model_ref, "revision": variant.revision, "build": variant.build}
    folder = Path(model_path)
    if folder.is_dir():
        weights["files"] = sorted(
            (p.name, p.stat().st_size) for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")
        )
        for name in FINGERPRINT_FILES:
            if (folder / name).is_file():
                weights[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    args = variant.engine_args
    return stable_hash(
        {
            "name": variant.name,
            "weights": weights,
            "engine": variant.engine,
            "dtype": args.dtype,
            "quantization": args.quantization,
            "extra": args.extra,
        }
    )


def check_grid(grid: GridConfig) -> None:
    """Refuse, before anything starts, what cannot run: unknown engines or benches, budgets too long."""
    from omk_ray.benches import BENCHES
    from omk_ray.engines import ENGINES

    problems = []
    for v in grid.variants:
        if v.engine not in ENGINES:
            problems.append(f"variant {v.name!r}: unknown engine {v.engine!r} (known: {', '.join(sorted(ENGINES))})")
    for b in grid.benches:
        if b.kind not in BENCHES:
            problems.append(f"bench {b.name!r}: unknown bench kind {b.kind!r} (known: {', '.join(sorted(BENCHES))})")
    for v in grid.variants:
        limit = v.engine_args.max_model_len
        for b in grid.benches:
            budget = grid.recipe_for(v, b).generation_budget
            if limit is not None and budget >= limit:
                problems.append(
                    f"variant {v.name!r} on bench {b.name!r}: generation budget {budget} tokens does not fit "
                    f"max_model_len={limit} (budget = max(max_gen_toks, thinking_budget + headroom))"
                )
    if problems:
        raise PlanError("grid cannot run:\n  " + "\n  ".join(problems))


def make_plan(
    grid: GridConfig,
    store: ResultsStore | None = None,
    model_paths: dict[str, str] | None = None,
    variants: list[str] | None = None,
    limit_docs: int | None = None,
) -> Plan:
    check_grid(grid)
    chosen = [v for v in grid.variants if variants is None or v.name in variants]
    if variants is not None:
        unknown = set(variants) - {v.name for v in grid.variants}
        if unknown:
            raise PlanError(f"unknown variants {sorted(unknown)}; the grid has {[v.name for v in grid.variants]}")
    model_paths = {v.name: (model_paths or {}).get(v.name) or v.model_ref for v in chosen}
    fingerprints = {v.name: variant_fingerprint(v, model_paths[v.name]) for v in chosen}
    done = store.done_keys() if store is not None else set()
    observed = _observed_tokens(store) if store is not None else {}

    docs_by_bench: dict[str, list[Doc]] = {}
    revisions: dict[str, str | None] = {}
    for spec in grid.benches:
        try:
            bench = make_bench(spec)
            docs = bench.docs()
        except (OSError, ValueError, KeyError) as err:
            raise PlanError(f"bench {spec.name!r}: {err}") from None
        docs_by_bench[spec.name] = docs[:limit_docs] if limit_docs else docs
        revisions[spec.name] = bench.dataset_revision

    work = []
    for v in chosen:
        for spec in grid.benches:
            recipe = grid.recipe_for(v, spec)
            fp, rh = fingerprints[v.name], recipe.hash
            docs = docs_by_bench[spec.name]
            samples = [
                (doc, r)
                for doc in docs
                for r in range(recipe.repeats)
                if (fp, rh, spec.name, doc.id, r) not in done
            ]
            per_sample = observed.get(spec.name) or recipe.generation_budget / 2
            work.append(BenchWork(v.name, spec.name, recipe, samples, len(docs) * recipe.repeats, per_sample,
                                  [d.id for d in docs]))
    return Plan(grid, fingerprints, model_paths, work, revisions)


def _observed_tokens(store: ResultsStore) -> dict[str, float]:
    """Mean completion tokens per bench in earlier results: a better cost estimate than the cap."""
    table = store.read(columns=["bench", "completion_tokens"])
    if table.num_rows == 0:
        return {}
    means = table.group_by("bench").aggregate([("completion_tokens", "mean")])
    return {b: float(m) for b, m in zip(means["bench"].to_pylist(), means["completion_tokens_mean"].to_pylist()) if m}


def describe(plan: Plan) -> list[dict]:
    """One row per variant x bench for `omk-ray plan`."""
    variants = {v.name: v for v in plan.grid.variants}
    return [
        {
            "variant": w.variant,
            "engine": variants[w.variant].engine,
            "bench": w.bench,
            "cohort": w.recipe.cohort,
            "recipe": w.recipe.hash[:8],
            "expected": w.expected,
            "missing": len(w.samples),
            "est_tokens": int(w.est_tokens),
        }
        for w in plan.work
    ]


def plan_json(plan: Plan) -> str:
    return json.dumps(describe(plan), indent=2)
