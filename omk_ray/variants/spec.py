"""The settings of a drop map and of a variant's build, declared once (pydantic; nothing heavy is imported).

`DropMapSpec` is how a drop map is chosen from CD scores: `plan_drop_map(cd, spec)` takes it,
`omk-ray dropmap` builds it from its options, and a build block that chooses its drop map holds
its fields. `BuildSpec` is the `build:` block of a grid variant (`VariantSpec.build`), one model
per kind of build, told apart by the key that gives the drop map:

    kind           keys                                      what the build does
    from-map       drop_map (a JSON file or {layer: [ids]})  prune by that map (then quantize, if asked)
    from-scores    scores (CD-scores JSON) + DropMapSpec     choose the map, prune (then quantize)
    from-profile   profile_prompts + DropMapSpec             profile the base, choose, prune (then quantize)
    quantize-only  neither                                   quantize the base (`quantization` required)

Every kind takes `base`, `revision`, `quantization`, `nvfp4_format`, `gguf`, `hub_repo`, `push`
(variants/artifacts.py says what each does). A key another kind takes is refused with a sentence
naming the kinds that take it; floats refuse infinity and NaN. `explain` turns a ValidationError
into the one-line message the CLI prints.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator, model_validator

STRATEGIES = ("pooled", "max", "mean", "geomean", "sum", "lp", "softmax", "second", "topk-mean", "random")
NORMALIZERS = ("mean", "rank", "none")
STRATEGY_PARAMS = {"lp": {"p": 2.0}, "softmax": {"temperature": 1.0}, "topk-mean": {"k": 2}, "random": {"seed": 0}}
SOURCES = ("drop_map", "scores", "profile_prompts")  # the keys that give a build's drop map

# llama-quantize type -> the ggml type of its tensors (the `_S/_M/_L` mixes keep some tensors higher)
GGUF_TYPES = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K",
    "Q5_K_S": "Q5_K", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q4_0": "Q4_0",
    "Q4_1": "Q4_1", "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K",
    "IQ4_XS": "IQ4_XS", "IQ4_NL": "IQ4_NL",
}  # fmt: skip
GGUF_UNQUANTIZED = ("F32", "F16", "BF16")
CALIBRATION_HINT = "a text file (e.g. bartowski's calibration_datav5.txt) to compute the importance matrix on"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DropMapSpec(_Spec):
    """How a drop map is chosen from CD scores (variants/dropmap.py says what each setting does)."""

    strategy: str = Field("max", description="|".join(STRATEGIES))
    criterion: str = Field("cd", description="per-class saliency (variants/cdscores.py CRITERIA)")
    target: int | None = Field(None, description="experts kept per layer (give this or `drop`)")
    drop: int | None = Field(None, description="experts dropped per layer")
    protect_top: int = Field(0, description="never drop a layer's N best experts")
    protect_per_class: int = Field(0, description="never drop any class's N best experts of a layer")
    protect_super: bool = Field(False, description="never drop REAP's super experts")
    protect_super_all_layers: bool = Field(False, description="look for them in every layer, not the first 75%")
    normalize: str = Field("mean", description="|".join(NORMALIZERS))
    alpha: float = Field(2.0, description="cd score = wnorm * alpha + tc")
    classes: list[str] | None = Field(None, description="classes to aggregate (`a+b` merges two)")
    split_classes: list[str] | dict[str, list[str]] | None = None
    weights: dict[str, float] | None = None
    params: dict[str, float] = Field(default_factory=dict, description="p (lp), temperature (softmax), k (topk-mean), "
                                     "seed (random)")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; choose one of {', '.join(STRATEGIES)}")
        return value

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        from omk_ray.variants.cdscores import CRITERIA

        if value not in CRITERIA:
            raise ValueError(f"unknown criterion {value!r}; choose one of {', '.join(CRITERIA)}")
        return value

    @field_validator("normalize")
    @classmethod
    def _known_normalization(cls, value: str) -> str:
        if value not in NORMALIZERS:
            raise ValueError(f"unknown normalization {value!r}; choose one of {', '.join(NORMALIZERS)}")
        return value

    @field_validator("target")
    @classmethod
    def _keeps_one(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"target {value} keeps no expert: at least one expert must stay")
        return value

    @field_validator("drop", "protect_top", "protect_per_class")
    @classmethod
    def _not_negative(cls, value: int | None, info) -> int | None:
        if value is not None and value < 0:
            raise ValueError(f"{info.field_name} must be an integer >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if (self.target is None) == (self.drop is None):
            raise ValueError("give exactly one of `target` (experts kept per layer) or `drop` (dropped per layer)")
        self.strategy_params  # noqa: B018 - raises on a parameter the strategy does not take
        return self

    @property
    def strategy_params(self) -> dict[str, Any]:
        """The strategy's parameters with their defaults; ValueError naming a wrong one."""
        defaults = STRATEGY_PARAMS.get(self.strategy, {})
        unknown = set(self.params) - set(defaults)
        if unknown:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(f"strategy {self.strategy!r} takes no parameter {sorted(unknown)} (it takes: {allowed})")
        params = {**defaults, **self.params}
        if self.strategy == "lp" and not params["p"] > 0:
            raise ValueError(f"lp: p must be > 0, got {params['p']}")
        if self.strategy == "softmax" and not params["temperature"] > 0:
            raise ValueError(f"softmax: temperature must be > 0, got {params['temperature']}")
        if self.strategy in ("topk-mean", "random"):
            key = "k" if self.strategy == "topk-mean" else "seed"
            params[key] = int(params[key])
        return params

    @classmethod
    def of(cls, strategy: str | None = None, /, **settings: Any) -> "DropMapSpec":
        """The spec from keywords: its fields, and any other keyword as a strategy parameter (`p=3`)."""
        fields = {k: v for k, v in settings.items() if k in cls.model_fields}
        params = {**(fields.pop("params", None) or {}), **{k: v for k, v in settings.items() if k not in cls.model_fields}}
        if strategy is not None:
            fields["strategy"] = strategy
        return cls(**fields, **({"params": params} if params else {}))


class GGUFOptions(_Spec):
    """The `gguf:` block of a build (with `quantization: gguf`)."""

    type: str = Field("Q6_K", description=f"llama-quantize type: {', '.join(GGUF_TYPES)}")
    base_type: Literal["F16", "BF16", "F32"] = Field("F16", description="what the converter writes first")
    imatrix: str | None = Field(None, description=CALIBRATION_HINT)
    imatrix_ctx: int = Field(512, ge=16, description="llama-imatrix context per chunk (-c)")
    imatrix_chunks: int | None = Field(None, ge=1, description="at most this many chunks (default: all)")
    allow_fallback: bool = Field(True, description="false: refuse a result where tensors fell back to another type")

    @model_validator(mode="after")
    def _known_type(self) -> "GGUFOptions":
        if self.type not in GGUF_TYPES:
            raise ValueError(f"unknown GGUF type {self.type!r}; choose one of {', '.join(GGUF_TYPES)}")
        if self.imatrix and self.type in GGUF_UNQUANTIZED:
            raise ValueError(f"an importance matrix does nothing for {self.type}: drop `imatrix` or pick a quantized type")
        return self


class _Build(_Spec):
    """What every kind of build takes."""

    kind: ClassVar[str]
    does: ClassVar[str]

    base: str = Field(min_length=1, description="checkpoint folder or Hugging Face hub id")
    revision: str | None = None
    quantization: str | None = Field(None, description="NVFP4A16, another compressed-tensors preset, or gguf")
    nvfp4_format: Literal["compressed-tensors", "modelopt"] = "compressed-tensors"
    gguf: GGUFOptions | None = None
    hub_repo: str | None = None
    push: bool = False

    @model_validator(mode="before")
    @classmethod
    def _keys_of_other_kinds(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if key not in cls.model_fields and key in _TAKEN_BY:
                    raise ValueError(f"`{key}` belongs to a build that {_TAKEN_BY[key]}; this one {cls.does}")
        return value

    @field_validator("quantization")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is None or value.lower() == "gguf":
            return value and "gguf"
        if value.upper() == "NVFP4A16":  # omk-ray's own; no need to load compressed-tensors to know it
            return "NVFP4A16"
        from omk_ray.variants.quantize import is_preset_scheme  # without importing compressed-tensors

        if not is_preset_scheme(value):
            raise ValueError(f"unknown scheme {value!r} (gguf, or a compressed-tensors preset, e.g. NVFP4A16)")
        return value.upper()

    @model_validator(mode="after")
    def _consistent_quantization(self):
        if self.gguf is not None and self.quantization != "gguf":
            raise ValueError("a `gguf` block needs `quantization: gguf`")
        if self.nvfp4_format != "compressed-tensors" and self.quantization != "NVFP4A16":
            raise ValueError(f"nvfp4_format {self.nvfp4_format} needs `quantization: NVFP4A16`")
        if self.push and not self.hub_repo:
            raise ValueError("push: true needs hub_repo")
        return self


class FromMapBuild(_Build):
    kind: ClassVar[str] = "from-map"
    does: ClassVar[str] = "prunes by a ready drop map"

    drop_map: str | dict[str, list[int]] = Field(description="a drop map: JSON file, or {layer: [expert ids]}")


class FromScoresBuild(DropMapSpec, _Build):
    kind: ClassVar[str] = "from-scores"
    does: ClassVar[str] = "chooses its drop map from CD scores"

    scores: str = Field(description="CD-scores JSON (from `omk-ray profile`)")


class FromProfileBuild(DropMapSpec, _Build):
    kind: ClassVar[str] = "from-profile"
    does: ClassVar[str] = "profiles the base to choose its drop map"

    profile_prompts: str = Field(description='prompts JSONL to profile `base` with ("default": the shipped set)')
    profile_generate_tokens: int = Field(0, ge=0, description="greedy tokens generated per prompt before the replay")
    profile_workers: int = Field(1, ge=1, description="Ray tasks to shard the profiling over")


class QuantizeBuild(_Build):
    kind: ClassVar[str] = "quantize-only"
    does: ClassVar[str] = "only quantizes the base"

    @model_validator(mode="after")
    def _something_to_build(self):
        if not self.quantization:
            raise ValueError("nothing to build: give drop_map, scores or profile_prompts, and/or quantization")
        return self


BUILD_KINDS: tuple[type[_Build], ...] = (FromMapBuild, FromScoresBuild, FromProfileBuild, QuantizeBuild)
_TAKEN_BY = {key: " or ".join(k.does for k in BUILD_KINDS if key in k.model_fields)
             for kind in BUILD_KINDS for key in kind.model_fields}


def build_kind(value: Any) -> str | None:
    """The kind of a build block: by the key that gives its drop map (None when it gives several)."""
    if isinstance(value, _Build):
        return value.kind
    if not isinstance(value, dict):
        return QuantizeBuild.kind  # refused there, with pydantic's word for what it is
    given = [k for k in SOURCES if value.get(k) is not None]
    if len(given) > 1:
        return None
    return {"drop_map": FromMapBuild, "scores": FromScoresBuild, "profile_prompts": FromProfileBuild}.get(
        given[0] if given else "", QuantizeBuild).kind


BuildSpec = Annotated[
    Union[tuple(Annotated[k, Tag(k.kind)] for k in BUILD_KINDS)],  # noqa: UP007 - a Union built from the table
    Discriminator(build_kind, custom_error_type="one_source",
                  custom_error_message="give one source of the drop map (drop_map, scores or profile_prompts), "
                                       "not several"),
]
BUILD_ADAPTER: TypeAdapter = TypeAdapter(BuildSpec)
KIND_TAGS = frozenset(k.kind for k in BUILD_KINDS)


def parse_build_spec(block: Any) -> _Build:
    """A build block as its kind's model; ValidationError as pydantic raises it (see `explain`)."""
    return block if isinstance(block, _Build) else BUILD_ADAPTER.validate_python(block)


def error_lines(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `where: what` (the kind of a build left out of `where`, pydantic's
    "Value error, " left out of `what`, `where` left out where `what` starts with it)."""
    lines = []
    for e in err.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"] if p not in KIND_TAGS)
        where = f"{prefix}.{where}" if prefix and where else prefix or where
        what = e["msg"].removeprefix("Value error, ")
        field = where.rpartition(".")[2]
        lines.append(what if not where or (field and what.startswith(field)) else f"{where}: {what}")
    return lines


def explain(err: ValidationError, prefix: str = "") -> str:
    return "; ".join(error_lines(err, prefix))
