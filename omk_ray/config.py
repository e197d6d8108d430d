"""Grid configuration: variants x benches x recipes, validated once at the edge.

A grid YAML has four sections: `recipe` (defaults for every bench), `variants`, `benches`
and `farm`. The effective recipe of a (variant, bench) pair is
`recipe` <- `bench.recipe` <- `variant.recipe_overrides[bench or "*"]`; its hash is stored on
every sample row, so results of different recipes never mix (`repeats` is not part of it:
each repeat is its own sample key). Top-level keys that start with `x-` are ignored: they
hold YAML anchors for blocks repeated across variants. A key given twice in one mapping is
refused. Local paths (a variant's `model`, a bench's `source` and `include_path`, a build's
`base`, `drop_map`, `scores`, `profile_prompts`, `gguf.imatrix`, `artifacts`) are resolved once, at load,
against the config file's real folder (a linked config keeps its target's folder), so every
later step (plan, builds, engines) sees the same absolute paths. A build's files (`drop_map`,
`scores`, `profile_prompts`, `gguf.imatrix`) and `include_path` are always the config folder's, even
when missing (`plan` names the path it looked for).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from omk_ray.variants.spec import KIND_TAGS, BuildSpec

from omk_ray.files import not_utf8

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"


class ConfigError(ValueError):
    """A grid config that cannot be used; the message names the file, key and problem. `partial`: for a
    grid whose fields do not validate, the grid of the parts that do (`partial_grid`), so that the
    checks that need a grid (`omk-ray plan`'s) report their problems in the same round."""

    def __init__(self, message: str, partial: "GridConfig | None" = None):
        super().__init__(message)
        self.partial = partial


MAX_REPEATS = 1000
MAX_PLAN_SAMPLES = 5_000_000  # docs x repeats summed over a grid's variants and benches (farm/planner.py)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # `.inf` would disable a bound


class Recipe(_Strict):
    """How prompts are built and sampled. Temperature 0 means greedy."""

    chat_template: bool = True
    enable_thinking: bool = False
    thinking_budget: int | None = Field(None, ge=1)
    reasoning_markers: tuple[str, str] = ("<|channel>", "<channel|>")
    system_prompt: str | None = None
    max_gen_toks: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    seed: int = 0
    min_tokens: int = Field(0, ge=0)
    stop: tuple[str, ...] = ()
    repeats: int = Field(1, ge=1, le=MAX_REPEATS)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def cohort(self) -> str:
        """Greedy runs form one cohort; each sampler setting is a cohort of its own."""
        if self.greedy:
            return "greedy"
        return f"sampled-t{self.temperature:g}-p{self.top_p:g}-k{self.top_k}-minp{self.min_p:g}"

    @property
    def generation_budget(self) -> int:
        """Tokens one request may generate: room for the whole thought plus the answer."""
        if self.enable_thinking and self.thinking_budget:
            return max(self.max_gen_toks, self.thinking_budget + ANSWER_HEADROOM)
        return self.max_gen_toks

    @property
    def hash(self) -> str:
        """What makes two samples comparable. `repeats` only says how many there are: it is hashed
        as 1 whatever its value (so the hashes of single-repeat recipes stayed what they were)."""
        return stable_hash({**self.model_dump(mode="json"), "repeats": 1})

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if self.thinking_budget and not self.enable_thinking:
            raise ValueError("thinking_budget is set but enable_thinking is false")
        if self.min_tokens > self.max_gen_toks:
            raise ValueError(f"min_tokens ({self.min_tokens}) is larger than max_gen_toks ({self.max_gen_toks})")
        return self


ANSWER_HEADROOM = 1024
RECIPE_KEYS = set(Recipe.model_fields)


class EngineArgs(_Strict):
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    quantization: str | None = None
    batch_size: int = Field(16, ge=1, description="transformers engine: requests per generate call")
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to the engine as is")


def parse_count(value: Any) -> Any:
    """26e9, "26B", "20.8B", "550M", "1,172" -> a number (anything else is left to the validator)."""
    if not isinstance(value, str):
        return value
    text = value.strip().replace(",", "").replace("_", "")
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(text[-1:].upper())
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        return value


class DeclaredFacts(_Strict):
    """Facts of a variant written by hand (a variant's `facts:`), for the model card's first table;
    each one given overrides what the checkpoint's headers and provenance say."""

    total_params: float | None = Field(None, gt=0, description='e.g. 26e9 or "26B"')
    expert_params: float | None = Field(None, ge=0)
    active_params: float | None = Field(None, gt=0)
    experts_per_layer: int | None = Field(None, ge=1)
    base_experts: int | None = Field(None, ge=1, description="experts per layer before pruning")
    dropped_per_layer: int | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=1)
    quantization: str | None = None
    drop_map: str | None = Field(None, description='the recipe in words, e.g. "TF pooled, protect_top 16"')

    @field_validator("total_params", "expert_params", "active_params", mode="before")
    @classmethod
    def _counts(cls, value: Any) -> Any:
        return parse_count(value)


class VariantSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    model: str | None = Field(None, description="checkpoint folder or Hugging Face hub id")
    revision: str | None = None
    engine: str = "vllm"
    engine_args: EngineArgs = EngineArgs()
    recipe_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="bench name (or '*') -> recipe fields"
    )
    build: BuildSpec | None = Field(None, description="how to build this variant (variants/spec.py, variants/artifacts.py)")
    facts: DeclaredFacts | None = Field(None, description="the model card's facts, where the checkpoint cannot tell")

    @field_validator("recipe_overrides")
    @classmethod
    def _known_recipe_keys(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for bench, fields in value.items():
            unknown = set(fields) - RECIPE_KEYS
            if unknown:
                raise ValueError(f"recipe_overrides[{bench}] has unknown recipe keys {sorted(unknown)}")
        return value

    @field_serializer("build")
    def _build_as_given(self, build, info) -> dict[str, Any] | None:
        """The keys the config gave (a manifest records the block as written, and reads it back)."""
        return None if build is None else build.model_dump(mode=info.mode, exclude_unset=True)

    @model_validator(mode="after")
    def _needs_weights(self) -> "VariantSpec":
        if not self.model and not self.build:
            raise ValueError("a variant needs `model` (a folder or hub id) or a `build` block")
        return self

    @property
    def model_ref(self) -> str:
        return self.model or ""


class BenchSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: str = Field("jsonl", description="bench type from the bench registry")
    source: str | None = Field(None, description="data file, folder or dataset id")
    revision: str | None = None
    subset: int | list[str] | None = Field(None, description="first N docs, or a list of doc ids")
    recipe: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict, description="bench-specific settings (see each bench's Options)")

    @field_validator("subset")
    @classmethod
    def _sane_subset(cls, value: int | list[str] | None) -> int | list[str] | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"subset must be a positive number of docs or a list of doc ids, not {value}")
        if isinstance(value, list):
            repeated = sorted({i for i in value if value.count(i) > 1})
            if repeated:
                raise ValueError(f"subset lists doc ids more than once: {repeated[:5]}")
            if not value:
                raise ValueError("subset is an empty list: the bench would have no docs")
        return value

    @field_validator("recipe")
    @classmethod
    def _known_recipe_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - RECIPE_KEYS
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}")
        return value


class CanarySpec(_Strict):
    """A generation-mode gate: `docs` problems of every bench (a seeded sample, stratified by
    domain) run first and must pass the structural rules (omk_ray.analysis.canary) and, for every
    variant but the baseline (`GridConfig.baseline`), the exact paired test against the baseline's
    canary (`max_loss_pp`) before the variant's full run; the run's gate (omk_ray/farm/gate.py)
    judges them. 24 problems and 20 pp: docs/comparison.md, "Stopping arms early"."""

    enabled: bool = True
    docs: int = Field(24, ge=1, description="problems of every bench in the canary sample")
    max_loss_pp: float | None = Field(20.0, gt=0, le=100, description="stop an arm surely worse than the "
                                      "baseline by more than this on the canary (None: no comparison)")
    seed: int = Field(0, description="seed of the canary sample")
    on_fail: Literal["skip", "continue"] = Field("skip", description="skip the variant's full run, or only record it")
    max_empty_rate: float = Field(0.05, ge=0, le=1)
    min_p10_tokens: float = Field(1, ge=0)


class StagesSpec(_Strict):
    """Staged evaluation (omk_ray/farm/stages.py): every bench is read in its representative order and
    judged after each stage; an arm whose anytime-valid bound of its paired difference to the baseline
    falls below -stop_below_pp stops (docs/farm.md, "Stages"). Off by default: a canonical rerun
    evaluates everything; turn it on for ablation grids."""

    enabled: bool = False
    stages: tuple[Literal["canary"] | float, ...] = Field(("canary", 0.25, 0.5, 1.0), min_length=1,
                                                         description="looks: `canary`, then fractions of every bench")
    stop_below_pp: float = Field(5.0, gt=0, le=100, description="stop an arm surely worse than the baseline by this")
    mode: Literal["futility", "race"] = Field("futility", description="race: also stop arms surely behind the best")
    alpha: float = Field(0.05, gt=0, lt=1, description="chance of any false stop over the grid and every look")
    weights: dict[str, float] | None = Field(None, description="bench -> weight in the pooled difference (default equal)")

    @field_validator("stages")
    @classmethod
    def _increasing(cls, value: tuple) -> tuple:
        fractions = [s for s in value if s != "canary"]
        if "canary" in value[1:]:
            raise ValueError("`canary` can only be the first stage")
        if any(not 0 < f <= 1 for f in fractions) or fractions != sorted(set(fractions)) or fractions[-1:] != [1.0]:
            raise ValueError(f"stages {list(value)}: fractions must increase within (0, 1] and end at 1.0")
        return value


class FarmSpec(_Strict):
    max_in_flight: int | None = Field(None, ge=1, le=100_000, description="requests kept in flight per engine "
                                      "(default: 1.1 x the engine's capacity, e.g. vLLM's max_num_seqs)")
    flush_samples: int = Field(256, ge=1, description="write a shard once this many samples are finished")
    flush_seconds: float = Field(10.0, gt=0, description="... or once the oldest unwritten sample is this old")
    max_retries: int = Field(2, ge=0, description="retries of a sample after its engine failed on it")
    max_engines: int | None = Field(None, ge=1, description="cap on engine actors alive at once")
    cpus_per_engine: float = Field(1, gt=0)
    engine_start_timeout_s: float | None = Field(
        None, gt=0, description="an engine not started by then failed to start (default: from its checkpoint's "
        "size, farm/sizes.py: 600 s + the bytes at 100 MB/s; 1800 s when the size is unknown)")
    stall_timeout_s: float = Field(600, gt=0, description="an engine that finishes nothing for this long "
                                   "while it has requests is replaced")
    scorers: int = Field(2, ge=1, le=256, description="CPU scoring actors (they run the sandboxed programs)")
    scorer_cpus: float = Field(0, ge=0, description="CPUs each scoring actor reserves")
    canary: CanarySpec = CanarySpec()
    stages: StagesSpec = StagesSpec()
    build_resources: dict[str, float] | None = Field(None, description="the Ray resources each build task asks "
                                                     "for, e.g. {CPU: 8, memory: 68719476736, builder: 1} "
                                                     "(default: sized by the checkpoint, farm/builds.py)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        if isinstance(value, dict) and "shard_size" in value:
            raise ValueError("farm.shard_size is gone: engines are fed request by request now; "
                             "use farm.max_in_flight (requests per engine) and farm.flush_samples (rows per shard)")
        return value


class GridConfig(_Strict):
    name: str = Field("grid", pattern=NAME_PATTERN)
    recipe: Recipe = Recipe()
    variants: list[VariantSpec] = Field(min_length=1)
    benches: list[BenchSpec] = Field(min_length=1)
    farm: FarmSpec = FarmSpec()
    baseline: str | None = Field(None, description="the variant the canary and the stages compare arms with "
                                 "(default: the first variant)")
    artifacts: str | None = Field(None, description="where built variants live on the node that builds them "
                                  "(other nodes fetch them: farm/artifact_store.py)")
    source_path: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique_names_and_overrides(self) -> "GridConfig":
        problems = name_problems(self.model_dump())  # all of them in one report
        if self.baseline is not None and self.baseline not in {v.name for v in self.variants}:
            problems.append(f"baseline {self.baseline!r} is not a variant of the grid")
        for variant in self.variants:
            for bench in self.benches:
                try:
                    self.recipe_for(variant, bench)  # every effective recipe must validate
                except ValueError as err:
                    problems.append(str(err))
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def recipe_for(self, variant: VariantSpec, bench: BenchSpec) -> Recipe:
        fields = self.recipe.model_dump()
        fields.update(bench.recipe)
        fields.update(variant.recipe_overrides.get("*", {}))
        fields.update(variant.recipe_overrides.get(bench.name, {}))
        try:
            return Recipe(**fields)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) + ': ' if e['loc'] else ''}{e['msg']}"
                                 for e in err.errors())
            raise ValueError(f"recipe of variant {variant.name!r} on bench {bench.name!r}: {problems}") from None

    @property
    def baseline_variant(self) -> str:
        """The variant arms are compared with: `baseline`, else the first variant."""
        return self.baseline or self.variants[0].name

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def bench(self, name: str) -> BenchSpec:
        for b in self.benches:
            if b.name == name:
                return b
        raise KeyError(name)


def name_problems(raw: dict[str, Any]) -> list[str]:
    """Names given twice and overrides of benches the grid lacks, read from a grid's plain dict (so they
    are found with the other mistakes even where a field does not validate)."""
    def named(section: str) -> list[dict[str, Any]]:
        items = raw.get(section)
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    problems = []
    for kind in ("variant", "bench"):
        names = [i.get("name") for i in named(f"{kind}s") if isinstance(i.get("name"), str)]
        problems += [f"duplicate {kind} name {n!r}" for n in dict.fromkeys(names) if names.count(n) > 1]
    bench_names = {b.get("name") for b in named("benches")}
    for variant in named("variants"):
        overrides = variant.get("recipe_overrides")
        for key in overrides if isinstance(overrides, dict) else ():
            if key != "*" and key not in bench_names:
                problems.append(f"variant {variant.get('name')!r}: recipe_overrides names unknown bench {key!r}")
    return problems


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _format_validation_error(err: ValidationError, source: str, raw: dict[str, Any]) -> str:
    """One line per problem; a variant's build block is named `variant 'NAME': build.KEY` (the kind of
    build that pydantic puts in the path left out), every other place by its path."""
    lines = [f"{source}: invalid grid config"]
    for e in err.errors():
        loc = [p for p in e["loc"] if p not in KIND_TAGS]
        where = ".".join(str(p) for p in loc) or "(top level)"
        what = e["msg"]
        if loc[:1] == ["variants"] and len(loc) > 2 and loc[2] == "build":
            item = raw["variants"][loc[1]] if isinstance(raw.get("variants"), list) else None
            name = item.get("name") if isinstance(item, dict) else None
            where = f"variant {name!r}: " + ".".join(str(p) for p in loc[2:]) if isinstance(name, str) else where
            what = what.removeprefix("Value error, ")
        lines.append(f"  {where}: {what}")
    return "\n".join(lines)


# (section, key path) of every value that may be a local path; a relative one that exists next
# to the config becomes absolute, anything else is left alone (a hub id, "default").
LOCAL_PATHS = (
    ("variants", ("model",)), ("benches", ("source",)), ("benches", ("options", "include_path")),
    ("variants", ("build", "base")), ("variants", ("build", "drop_map")), ("variants", ("build", "scores")),
    ("variants", ("build", "profile_prompts")), ("variants", ("build", "gguf", "imatrix")),
)  # fmt: skip


# Keys that always name a local file, never a hub id: a relative one is the config folder's even
# when it is missing there (so `plan` and the build name the right place).
FILE_KEYS = ("include_path", "drop_map", "scores", "profile_prompts", "imatrix")


def _local_paths(raw: dict[str, Any]):
    """(holder, key, value, where) of every string at a LOCAL_PATHS place in a raw config."""
    for section, keys in LOCAL_PATHS:
        for top in raw.get(section) or []:
            *parents, key = keys
            item = top
            for parent in parents:
                item = item.get(parent) if isinstance(item, dict) else None
            value = item.get(key) if isinstance(item, dict) else None
            if isinstance(value, str):
                name = top.get("name", "?") if isinstance(top, dict) else "?"
                yield item, key, value, f"{section} {name!r}: {'.'.join(keys)}"


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Local paths in a config are relative to the config file; anything else is a hub id."""
    for item, key, value, _ in _local_paths(raw):
        path = Path(value).expanduser()
        if path.is_absolute():
            item[key] = str(path)
        elif (base / path).exists() or (key in FILE_KEYS and value != "default") or value.startswith(("./", "../")):
            item[key] = str((base / path).resolve())
    if isinstance(raw.get("artifacts"), str) and not Path(raw["artifacts"]).is_absolute():
        raw["artifacts"] = str((base / Path(raw["artifacts"]).expanduser()).resolve())


# Settings earlier versions wrote into run manifests and this one no longer has: a grid read back
# from a manifest ignores them (a user's config that names one is refused with a pointer instead).
RETIRED = {"farm": ("shard_size",)}


# Package data earlier versions shipped elsewhere (old -> new, inside the omk_ray package): the
# absolute paths a manifest recorded to it are read as where the files live now.
MOVED_DATA = (
    ("toy/assets/profile_prompts.jsonl", "_data/toy/toy_profile_prompts.jsonl"),
    ("toy/assets/", "_data/toy/"),
    ("data/profile_prompts.jsonl", "_data/routing_profile_prompts.jsonl"),
    ("benches/lmeval_tasks", "_data/lmeval_tasks"),
)


def _moved_data(path: str) -> str:
    """`path` as it is now, if it is package data of an earlier version that has moved."""
    for old, new in MOVED_DATA:
        marker = f"/omk_ray/{old}"
        if marker in path and not Path(path).exists():
            moved = path.replace(marker, f"/omk_ray/{new}", 1)
            if Path(moved).exists():
                return moved
    return path


def recorded_grid(raw: Any, source: str) -> GridConfig:
    """The grid a run's manifest recorded, as this version reads it."""
    raw = json.loads(json.dumps(raw))
    for section, keys in RETIRED.items():
        if isinstance(raw, dict) and isinstance(raw.get(section), dict):
            for key in keys:
                raw[section].pop(key, None)
    if isinstance(raw, dict):
        for item, key, value, _ in list(_local_paths(raw)):
            item[key] = _moved_data(value)
    return parse_grid(raw, source)


def parse_grid(raw: Any, source: str = "<config>", base_dir: Path | None = None) -> GridConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a grid config must be a mapping, got {type(raw).__name__}")
    raw = json.loads(json.dumps(raw))  # deep copy, plain types
    raw = {k: v for k, v in raw.items() if not k.startswith("x-")}  # `x-` keys hold YAML anchors only
    if base_dir is not None:
        _resolve_paths(raw, base_dir)
    try:
        grid = GridConfig(**raw)
    except ValidationError as err:
        report = _format_validation_error(err, source, raw)
        more = [p for p in name_problems(raw) if p not in report]  # the grid-level checks did not run
        raise ConfigError("\n  ".join([report, *more]), partial_grid(raw, source)) from None
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    return grid.model_copy(update={"source_path": source})


def partial_grid(raw: dict[str, Any], source: str) -> GridConfig | None:
    """The grid made of the parts of `raw` that validate: a variant or bench that does not is left out,
    a value elsewhere that does not is left at its default, a recipe that does not is replaced by the
    smallest (1 token, 1 repeat: the checks that depend on it find nothing that it would not). None
    when what is left is no grid (no variant or no bench validates, names clash)."""
    parts = json.loads(json.dumps(raw))
    for _ in range(len(json.dumps(raw))):  # each round removes something: bounded by the text's size
        try:
            return GridConfig(**parts).model_copy(update={"source_path": source})
        except ValidationError as err:
            drop: dict[str, set[int]] = {}
            for e in reversed(err.errors()):  # the last first: a list item removed moves no other's index
                loc = e["loc"]
                if not loc or (loc[0] in ("variants", "benches") and (len(loc) < 2 or not isinstance(loc[1], int))):
                    return None  # the grid as a whole, or a section that must be there
                if loc[0] in ("variants", "benches"):
                    drop.setdefault(loc[0], set()).add(loc[1])
                elif loc[0] == "recipe":  # checked as the smallest recipe: no budget or size problem it would not have
                    parts["recipe"] = {"max_gen_toks": 1}
                else:
                    _remove(parts, loc)  # that value alone: its default stands in (recipe.temperature, ...)
            for key, bad in drop.items():
                parts[key] = [item for i, item in enumerate(parts[key]) if i not in bad]
            kept = {b.get("name") for b in parts.get("benches") or [] if isinstance(b, dict)}
            parts["variants"] = [_only_overrides_of(v, kept) for v in parts.get("variants") or []]
        except ValueError:
            return None
    return None


def _remove(parts: dict[str, Any], loc: tuple) -> None:
    """Remove the value at `loc` (keys and list indexes), or its top-level section when the path does not lead to it."""
    holder: Any = parts
    for key in loc[:-1]:
        holder = holder.get(key) if isinstance(holder, dict) else (
            holder[key] if isinstance(holder, list) and isinstance(key, int) and key < len(holder) else None)
    leaf = loc[-1]
    if isinstance(holder, dict) and leaf in holder:
        del holder[leaf]
    elif isinstance(holder, list) and isinstance(leaf, int) and leaf < len(holder):
        del holder[leaf]
    else:
        parts.pop(loc[0], None)


def _only_overrides_of(variant: Any, benches: set) -> Any:
    overrides = variant.get("recipe_overrides") if isinstance(variant, dict) else None
    if not isinstance(overrides, dict):
        return variant
    return {**variant, "recipe_overrides": {k: v for k, v in overrides.items() if k == "*" or k in benches}}


MAX_YAML_NODES = 100_000  # values in a config once its aliases are expanded; real grids hold a few thousand


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML's `<<` merges still override),
    and a document whose aliases would expand to more than MAX_YAML_NODES values (an alias bomb) or
    into themselves, counted on the parsed nodes before anything is expanded."""

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}): only one can count", key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root) -> int:
    """How many values `root` expands to, each alias counted as a full copy of what it names."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to the value that holds it (a recursive anchor)", node.start_mark)
        open_nodes.add(id(node))
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"its aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?): "
                    "refused before expanding them", node.start_mark)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def load_grid(path: str | Path) -> GridConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(not_utf8(path, err) + "; save the grid as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: its YAML is nested too deeply to read") from None
    return parse_grid(raw, str(path), path.resolve().parent)  # resolve(): a linked config keeps its real folder


def grid_to_dict(grid: GridConfig) -> dict[str, Any]:
    return grid.model_dump(mode="json", exclude={"source_path"})
