"""From a grid config to the samples still to generate.

A sample is one (variant, bench, doc, repeat). The plan lists every expected sample, drops those
the results store already holds (same variant fingerprint, i.e. the same weights by content and
the same engine identity as planned, omk_ray/engines/identity.py; and recipe hash) unless the
bench's document changed since (its `doc_hash`: the plan counts those as `stale`), and groups
the rest per variant and bench with a cost estimate per doc (completion tokens seen for that doc
in earlier results, else the bench's mean, else half the generation budget), so the scheduler
can hand out the longest-expected requests first. A sample stored as one that cannot run (a
prompt longer than the context) stays done until its inputs or the context length change.

Every bench is read in its representative order (farm/order.py: one seeded permutation stratified
by domain, seeded by `farm.canary.seed`, the same for every variant): `limit_docs` keeps its first
N documents, the canary sample is its first `canary.docs`, each group's samples follow it, and
`Plan.orders` is what the run's manifest records (`RunManifest.orders`; pass it back as `orders`
on resume to read the same permutation).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omk_ray.benches import Doc, make_bench
from omk_ray.config import MAX_PLAN_SAMPLES, GridConfig, Recipe, VariantSpec, stable_hash
from omk_ray.engines.identity import EngineIdentity, planned_identity
from omk_ray.farm.order import OrderRecord, order_record, representative_order, reuse
from omk_ray.results.store import ResultsStore

log = logging.getLogger(__name__)


class PlanError(ValueError):
    """A grid that cannot run as configured (checked before anything starts); `problems`, one line each."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


@dataclass
class BenchWork:
    """The missing samples of one variant on one bench."""

    variant: str
    bench: str
    recipe: Recipe
    samples: list[tuple[Doc, int]]  # (doc, repeat)
    expected: int  # samples the grid asks for, done or not
    tokens_per_sample: float  # the estimate of a doc seen nowhere yet
    doc_tokens: dict[str, float] = field(default_factory=dict)  # doc id -> completion tokens seen before
    canary_ids: list[str] = field(default_factory=list)  # the bench's canary sample: its order's first docs
    stale: int = 0  # samples stored already, generated again because their document changed since

    def cost(self, doc: Doc) -> float:
        return self.doc_tokens.get(doc.id, self.tokens_per_sample)

    @property
    def est_tokens(self) -> float:
        return sum(self.cost(doc) for doc, _ in self.samples)


@dataclass
class Plan:
    grid: GridConfig
    fingerprints: dict[str, str]
    model_paths: dict[str, str]
    work: list[BenchWork]
    dataset_revisions: dict[str, str | None] = field(default_factory=dict)
    weights: dict[str, dict] = field(default_factory=dict)  # variant -> what its fingerprint hashed
    identities: dict[str, EngineIdentity] = field(default_factory=dict)  # variant -> its engine's, as planned
    gpu: bool = False  # planned for a cluster with GPUs (engines/identity.py: the device class)
    orders: dict[str, OrderRecord] = field(default_factory=dict)  # bench -> its order (`RunManifest.orders`)

    @property
    def missing(self) -> int:
        return sum(len(w.samples) for w in self.work)

    @property
    def expected(self) -> int:
        return sum(w.expected for w in self.work)

    def recipe_hashes(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for w in self.work:
            out.setdefault(w.variant, {})[w.bench] = w.recipe.hash
        return out

    @functools.cached_property
    def checkpoint_bytes(self) -> dict[str, int | None]:
        """variant -> the bytes of the checkpoint its engine loads (farm/sizes.py; None: unknown)."""
        return {name: _checkpoint_size(self.grid.variant(name), path) for name, path in self.model_paths.items()}

    def start_timeout(self, variant: str) -> float:
        """Seconds the variant's engine may take to start: `farm.engine_start_timeout_s`, else from its
        checkpoint's size (`sizes.start_timeout_s`)."""
        from omk_ray.farm.sizes import start_timeout_s

        return self.grid.farm.engine_start_timeout_s or start_timeout_s(self.checkpoint_bytes.get(variant))


def weights_identity(variant: VariantSpec, model_path: str | None) -> dict[str, object]:
    """What a variant loads, by content, whatever its path: a local folder by the sha256 of its
    config and weight files (cached by size and mtime), a hub id by the commit its revision
    resolves to, a build not built yet by its block; an engine that holds no model by its `model`."""
    from omk_ray.engines import engine_class
    from omk_ray.farm.artifact_store import manifest_at
    from omk_ray.variants.artifacts import (combine_hashes, content_hash, default_hash_cache, identifies,
                                            resolve_hub_revision)
    from omk_ray.variants.checkpoint import PROVENANCE_NAME as PROVENANCE, provenance_identity

    if not engine_class(variant.engine).holds_weights:
        return {"model": variant.model_ref, "revision": variant.revision}
    folder = Path(model_path) if model_path else None
    if folder is not None and folder.is_dir():
        identity: dict[str, object] = {"content_sha256": content_hash(folder, default_hash_cache())}
        provenance = folder / PROVENANCE
        if provenance.is_file():
            identity[PROVENANCE] = provenance_identity(provenance.read_bytes())
        return identity
    manifest = manifest_at(model_path) if model_path else None  # built on a node this one cannot see
    if manifest is not None:
        identity = {"content_sha256": combine_hashes({n: e["sha256"] for n, e in manifest.items()
                                                      if "/" not in n and identifies(n)})}
        if PROVENANCE in manifest:
            identity[PROVENANCE] = manifest[PROVENANCE].get("identity") or manifest[PROVENANCE]["sha256"]
        return identity
    if variant.build and not model_path:  # not built yet (`omk-ray plan`, the lock): local inputs by content
        given = variant.build.model_dump(mode="json", exclude_unset=True)
        return {"build": {key: _content(value) for key, value in given.items()}}
    commit = resolve_hub_revision(variant.model_ref, variant.revision)
    if commit is None:
        log.warning("variant %s: hub model %s@%s not resolved to a commit (offline, not cached): identified "
                    "by its name only", variant.name, variant.model_ref, variant.revision or "main")
    return {"hub": variant.model_ref, "revision": variant.revision, "commit": commit}


def _content(value: object) -> object:
    """A build input by content where it is a local file or folder, else as it is."""
    from omk_ray.variants.artifacts import content_hash, default_hash_cache

    path = Path(value) if isinstance(value, str) else None
    if path is not None and path.is_dir():
        return {"content_sha256": content_hash(path, default_hash_cache())}
    if path is not None and path.is_file():
        return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return value


def output_fingerprint(variant: VariantSpec, model_path: str, weights: dict[str, object] | None = None,
                       identity: EngineIdentity | None = None) -> str:
    """Identity of a variant's outputs: its name, weights, the engine settings that change tokens, and
    the engine identity as planned (`EngineIdentity.resume_key`: family, version, dtype, quantization,
    device class; engines/identity.py says why it is the planned one and how a loaded engine is held to it).
    Without `identity`, the one planned for this machine's devices (`cluster_has_gpus`)."""
    args = variant.engine_args
    identity = identity or planned_identity(variant, cluster_has_gpus())
    return stable_hash({
        "name": variant.name,
        "weights": weights if weights is not None else weights_identity(variant, model_path),
        "engine": variant.engine,
        "dtype": args.dtype,
        "quantization": args.quantization,
        "extra": args.extra,
        "engine_identity": identity.resume_key(),
    })


def cluster_has_gpus() -> bool:
    """Whether the farm's engines get GPUs (the scheduler's rule: any GPU in the cluster): the cluster
    Ray is connected to, else this machine (where a local Ray would start)."""
    import ray

    from omk_ray.devices import cuda_visible

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) >= 1
    return cuda_visible()


def check_grid(grid: GridConfig) -> None:
    """Refuse, before anything starts, what cannot run (see `grid_problems`)."""
    problems = grid_problems(grid)
    if problems:
        raise PlanError(_cannot_run(grid, problems), problems)


def grid_problems(grid: GridConfig) -> list[str]:
    """Everything wrong with a grid that is known without loading data or starting anything:
    unknown engines or bench kinds, engine and bench options their kind does not take, build
    blocks that do not parse, model folders that are missing or hold no checkpoint, budgets
    that do not fit the context."""
    from omk_ray.benches import BENCHES
    from omk_ray.engines import ENGINES
    from omk_ray.plugins import option_problems

    problems = []
    for v in grid.variants:
        engine = _plugin(ENGINES, v.engine, f"variant {v.name!r}", problems)
        if engine:
            problems += [f"variant {v.name!r}: engine_args.extra.{p}" for p in option_problems(engine, v.engine_args.extra)]
            if engine.holds_weights and v.model and not v.build:
                problems += [f"variant {v.name!r}: model {p}" for p in _checkpoint_problems(v.model)]
        if v.build:
            problems += [f"variant {v.name!r}: {p}" for p in _build_problems(v.build)]
        problems += _gpu_only_problems(v)
    for b in grid.benches:
        bench = _plugin(BENCHES, b.kind, f"bench {b.name!r}", problems)
        if bench:
            problems += [f"bench {b.name!r}: options.{p}" for p in option_problems(bench, b.options)]
    for v in grid.variants:
        limit = v.engine_args.max_model_len
        for b in grid.benches:
            budget = grid.recipe_for(v, b).generation_budget
            if limit is not None and budget >= limit:
                problems.append(
                    f"variant {v.name!r} on bench {b.name!r}: generation budget {budget} tokens does not fit "
                    f"max_model_len={limit} (budget = max(max_gen_toks, thinking_budget + headroom))"
                )
    return problems


def _gpu_only_problems(variant: VariantSpec) -> list[str]:
    """What would only fail on the GPU nodes: vLLM's NVFP4 weight-only kernels (Marlin) take bfloat16
    or float16 activations, never float32."""
    dtype = variant.engine_args.dtype.lower().removeprefix("torch.")
    if variant.engine != "vllm" or dtype not in ("float32", "float", "fp32"):
        return []
    nvfp4 = nvfp4_source(variant)
    if nvfp4 is None:
        return []
    return [f"variant {variant.name!r}: dtype {variant.engine_args.dtype} with an NVFP4A16 checkpoint ({nvfp4}) on "
            "the vllm engine: vLLM's NVFP4 weight-only kernels (Marlin) take bfloat16 or float16 activations only; "
            "set engine_args.dtype: bfloat16 (or float16), or serve it with engine: transformers"]


def nvfp4_source(variant: VariantSpec) -> str | None:
    """Why a variant's weights are NVFP4 (a build's quantization, engine_args.quantization, or its
    checkpoint's quantization config, compressed-tensors or ModelOpt); None when they are not."""
    quant = str(variant.build.quantization or "") if variant.build else ""
    if quant.upper().startswith("NVFP4"):
        return f"build.quantization {quant}"
    if (variant.engine_args.quantization or "").lower() in ("modelopt_fp4", "nvfp4"):
        return f"engine_args.quantization {variant.engine_args.quantization}"
    folder = Path(variant.model).expanduser() if variant.model and not variant.build else None
    if folder is None or not folder.is_dir():
        return None
    for name in ("config.json", "hf_quant_config.json"):
        try:
            text = json.dumps(json.loads((folder / name).read_text()).get(
                "quantization_config" if name == "config.json" else "quantization", {}))
        except (OSError, ValueError, AttributeError):
            continue
        if "nvfp4" in text.lower():
            return f"{name} of {folder}"
    return None


def _plugin(registry, kind: str, where: str, problems: list[str]) -> type | None:
    """The class registered for `kind`, or None with the reason added to `problems`."""
    try:
        return registry.load(kind)
    except KeyError as err:
        problems.append(f"{where}: {err.args[0]}")
    except (ImportError, AttributeError, TypeError) as err:
        problems.append(f"{where}: cannot load {registry.what} {kind!r} ({registry[kind]}): {err}")
    return None


def _cannot_run(grid: GridConfig, problems: list[str]) -> str:
    where = grid.source_path if grid.source_path and not grid.source_path.startswith("<") else "grid"
    return f"{where}: cannot run:\n  " + "\n  ".join(problems)


def _checkpoint_problems(model: str) -> list[str]:
    """A local checkpoint folder must exist and hold config.json (or a GGUF file); a hub id is not checked here."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            return [f"folder {path} holds no config.json: not a checkpoint folder"]
        return []
    looks_local = model.startswith(("/", ".", "~")) or model.endswith("/") or model.count("/") > 1
    if looks_local and not path.exists():
        return [f"folder {path} not found (a hub id is NAME or ORG/NAME)"]
    return []


def _build_problems(build) -> list[str]:
    """A build block that does not parse, a base or input file that is not there, and what the base's
    config.json (a local one) says cannot be built: dropping every expert, keeping fewer than its
    top-k, or protecting more than the drop leaves. Nothing is loaded but JSON."""
    from omk_ray.variants.artifacts import BuildError, parse_build

    try:
        spec = parse_build(build)
    except BuildError as err:
        return [f"build: {err}".replace("build: invalid build block: ", "build.")]
    problems = [f"build.base {p}" for p in _checkpoint_problems(spec.base)]
    drop_map = getattr(spec, "drop_map", None)  # each kind of build has its own keys (variants/spec.py)
    files = {"drop_map": drop_map if isinstance(drop_map, str) else None, "scores": getattr(spec, "scores", None),
             "gguf.imatrix": spec.gguf.imatrix if spec.gguf else None}
    if getattr(spec, "profile_prompts", "default") != "default":
        files["profile_prompts"] = spec.profile_prompts
    problems += [f"build.{key}: file {path} not found" for key, path in files.items()
                 if path and not Path(path).expanduser().is_file()]
    if not problems:
        problems += _expert_count_problems(spec)
    return problems


def _expert_count_problems(spec) -> list[str]:
    from omk_ray.variants.families import num_experts, top_k

    try:
        config = json.loads((Path(spec.base).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return []  # a hub id, or a GGUF folder: checked when it is built
    experts, k = num_experts(config), top_k(config)
    if experts is not None and getattr(spec, "drop_map", None) is not None:
        from omk_ray.variants.dropmap import DropMapError, load_drop_map, validate_drop_map

        try:
            drop_map = spec.drop_map if isinstance(spec.drop_map, dict) else load_drop_map(spec.drop_map)
            validate_drop_map(drop_map, num_experts=experts, top_k=k)
        except DropMapError as err:
            return [f"build.drop_map: {err} (the base has {experts} experts per layer)"]
        return []
    if experts is None or (getattr(spec, "drop", None) is None and getattr(spec, "target", None) is None):
        return []
    drop = spec.drop if spec.drop is not None else experts - spec.target
    keep = experts - drop
    given = f"drop: {spec.drop}" if spec.drop is not None else f"target: {spec.target}"
    if keep > experts:
        return [f"build.target {spec.target} keeps more experts than the base's {experts} per layer"]
    if not 0 <= drop < experts:
        return [f"build.{given.replace(': ', ' ')} leaves {keep} of the base's {experts} experts per layer: "
                "at least one must stay"]
    problems = []
    if k is not None and keep < k:
        problems.append(f"build.{given.replace(': ', ' ')} keeps {keep} experts per layer, fewer than the base's "
                        f"top-k ({k}) routed to per token")
    shielded = max(spec.protect_top, spec.protect_per_class)
    if drop and shielded + drop > experts:
        which = "protect_top" if spec.protect_top >= spec.protect_per_class else "protect_per_class"
        problems.append(f"build.{which} {shielded} shields {shielded} of the base's {experts} experts per layer, so "
                        f"at most {max(experts - shielded, 0)} can be dropped, not {drop} ({given})")
    return problems


def scoring_problems(grid: GridConfig, variants: list[VariantSpec], docs_by_bench: dict[str, list[Doc]]) -> list[str]:
    """Benches whose documents are scoring requests (lm-eval's loglikelihood tasks), on engines that cannot score."""
    from omk_ray.engines import ENGINES

    scoring = [name for name, docs in docs_by_bench.items() if any(d.scoring is not None for d in docs)]
    problems = []
    for v in variants:
        try:
            engine = ENGINES.load(v.engine) if scoring else None
        except (KeyError, TypeError, ImportError):  # grid_problems names it already
            continue
        if engine is None:
            continue
        if not engine.scores:
            problems += [f"variant {v.name!r} on bench {b!r}: the bench scores text (a loglikelihood task) and engine "
                         f"{v.engine!r} cannot: {engine.score_refusal}" for b in scoring]
        else:
            benches = ", ".join(repr(b) for b in scoring)
            problems += [f"variant {v.name!r} (to score bench {benches}): {p}" for p in engine.score_problems(v)]
    return problems


@dataclass
class Benches:
    """Every bench's documents (limited as asked) and dataset revision, read once."""

    docs: dict[str, list[Doc]]  # in each bench's representative order (farm/order.py), limited as asked
    revisions: dict[str, str | None]
    orders: dict[str, OrderRecord] = field(default_factory=dict)  # bench -> its full order


def read_benches(grid: GridConfig, variants: list[str] | None = None, limit_docs: int | None = None,
                 orders: dict[str, OrderRecord | dict] | None = None) -> Benches:
    """Check the grid (`grid_problems`) and read every bench's documents in their representative
    order (`orders`: a run's recorded orders, to read again on resume), the first `limit_docs` of
    each kept, before anything starts: one PlanError lists every problem found."""
    problems = grid_problems(grid)
    if variants is not None:
        unknown = set(variants) - {v.name for v in grid.variants}
        if unknown:
            problems.append(f"unknown variants {sorted(unknown)}; the grid has {[v.name for v in grid.variants]}")
    docs_by_bench: dict[str, list[Doc]] = {}
    revisions: dict[str, str | None] = {}
    records: dict[str, OrderRecord] = {}
    seed = grid.farm.canary.seed
    for spec in grid.benches:
        if any(p.startswith(f"bench {spec.name!r}:") for p in problems):
            continue  # its kind or options are wrong already: reading it would say so twice
        try:
            bench = make_bench(spec)
            docs = bench.docs()
        except (OSError, ValueError, KeyError) as err:
            text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            problems.append(text if text.startswith(f"bench {spec.name!r}") else f"bench {spec.name!r}: {text}")
            continue
        if not docs:
            problems.append(f"bench {spec.name!r}: no documents in {spec.source or 'its data'} (nothing to run)")
        recorded = (orders or {}).get(spec.name)
        docs = reuse(docs, recorded, seed, spec.name) if recorded else representative_order(docs, seed, spec.name)
        records[spec.name] = OrderRecord.model_validate(recorded) if recorded else order_record(docs, seed)
        docs_by_bench[spec.name] = docs[:limit_docs] if limit_docs else docs
        revisions[spec.name] = bench.dataset_revision
    chosen = [v for v in grid.variants if variants is None or v.name in variants]
    problems += scoring_problems(grid, chosen, docs_by_bench)
    samples = sum(len(docs) * grid.recipe_for(v, grid.bench(name)).repeats
                  for name, docs in docs_by_bench.items() for v in chosen)
    if samples > MAX_PLAN_SAMPLES:
        problems.append(f"{samples:,} samples (docs x repeats over every variant and bench) is more than the "
                        f"{MAX_PLAN_SAMPLES:,} one plan holds: lower `repeats`, take a `subset`, or split the grid")
    if problems:
        raise PlanError(_cannot_run(grid, problems), problems)
    return Benches(docs_by_bench, revisions, records)


def make_plan(
    grid: GridConfig,
    store: ResultsStore | None = None,
    model_paths: dict[str, str] | None = None,
    variants: list[str] | None = None,
    limit_docs: int | None = None,
    canary_only: bool = False,
    benches: Benches | None = None,
    gpu: bool | None = None,
    orders: dict[str, OrderRecord | dict] | None = None,
) -> Plan:
    """Every missing sample of the chosen variants, in each bench's representative order;
    `canary_only`: only their canary samples; `benches` when `read_benches` was called already
    (before builds); `gpu`: whether the engines will run on a cluster with GPUs (default:
    `cluster_has_gpus()`), part of the resume key; `orders`: the orders a run recorded (resume)."""
    benches = benches or read_benches(grid, variants, limit_docs, orders)
    chosen = [v for v in grid.variants if variants is None or v.name in variants]
    model_paths = {v.name: (model_paths or {}).get(v.name) or v.model_ref for v in chosen}
    weights = {v.name: weights_identity(v, model_paths[v.name]) for v in chosen}
    gpu = cluster_has_gpus() if gpu is None else gpu
    identities = {v.name: planned_identity(v, gpu) for v in chosen}
    fingerprints = {v.name: output_fingerprint(v, model_paths[v.name], weights[v.name], identities[v.name])
                    for v in chosen}
    stored = store.stored_samples() if store is not None else {}
    by_bench, by_doc = _observed_tokens(store) if store is not None else ({}, {})
    canary = grid.farm.canary

    work = []
    for spec in grid.benches:
        docs = benches.docs[spec.name]
        canary_ids = [d.id for d in docs[: canary.docs]] if canary.enabled or canary_only else []
        if canary_only:
            docs = [d for d in docs if d.id in set(canary_ids)]
        hashes = {doc.id: doc.hash for doc in docs}
        for v in chosen:
            context = v.engine_args.max_model_len
            recipe = grid.recipe_for(v, spec)
            fp, rh = fingerprints[v.name], recipe.hash
            samples, stale = [], 0
            for doc in docs:
                for r in range(recipe.repeats):
                    known = stored.get((fp, rh, spec.name, doc.id, r))
                    changed = known is not None and known.doc_hash is not None and known.doc_hash != hashes[doc.id]
                    still_cannot_run = known is not None and known.error_kind is not None and \
                        context is not None and (known.prompt_tokens or 0) >= context
                    if known is None or changed or (known.error_kind is not None and not still_cannot_run):
                        samples.append((doc, r))
                        stale += changed
            per_sample = by_bench.get(spec.name) or recipe.generation_budget / 2
            work.append(BenchWork(v.name, spec.name, recipe, samples, len(docs) * recipe.repeats, per_sample,
                                  by_doc.get(spec.name, {}), canary_ids, stale))
    return Plan(grid, fingerprints, model_paths, work, benches.revisions, weights, identities, gpu, benches.orders)


def _checkpoint_size(variant: VariantSpec, model_path: str | None) -> int | None:
    from omk_ray.engines import engine_class
    from omk_ray.farm.sizes import checkpoint_bytes

    if not engine_class(variant.engine).holds_weights:
        return 0
    if not model_path and variant.build:  # not built yet (`omk-ray plan`): its base bounds it
        return checkpoint_bytes(variant.build.base, variant.build.revision)
    return checkpoint_bytes(model_path, variant.revision) if model_path else None


def _observed_tokens(store: ResultsStore) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean completion tokens in earlier results, per bench and per (bench, doc): better than the cap."""
    table = store.read(columns=["bench", "doc_id", "completion_tokens"])
    if table.num_rows == 0:
        return {}, {}
    benches = table.group_by("bench").aggregate([("completion_tokens", "mean")])
    per_bench = {b: float(m) for b, m in zip(benches["bench"].to_pylist(),
                                             benches["completion_tokens_mean"].to_pylist()) if m}
    docs = table.group_by(["bench", "doc_id"]).aggregate([("completion_tokens", "mean")])
    per_doc: dict[str, dict[str, float]] = {}
    for b, d, m in zip(docs["bench"].to_pylist(), docs["doc_id"].to_pylist(), docs["completion_tokens_mean"].to_pylist()):
        if m is not None:
            per_doc.setdefault(b, {})[d] = float(m)
    return per_bench, per_doc


def describe(plan: Plan) -> list[dict]:
    """One row per variant x bench for `omk-ray plan`."""
    variants = {v.name: v for v in plan.grid.variants}
    return [
        {
            "variant": w.variant,
            "engine": variants[w.variant].engine,
            "engine_identity": plan.identities[w.variant].label if w.variant in plan.identities else None,
            "bench": w.bench,
            "cohort": w.recipe.cohort,
            "recipe": w.recipe.hash[:8],
            "expected": w.expected,
            "missing": len(w.samples),
            "stale": w.stale,
            "est_tokens": int(w.est_tokens),
        }
        for w in plan.work
    ]


def plan_json(plan: Plan) -> str:
    return json.dumps(describe(plan), indent=2)
