"""The drop-map spec and the build blocks (variants/spec.py): one declaration of the settings, read by
the planner, the builder and the `dropmap` command; a grid's build block is typed when the grid is read."""

from __future__ import annotations

import inspect
import math

import pytest
from helpers import write_bench, write_grid
from typer.testing import CliRunner

from omk_ray.cli import app
from omk_ray.config import ConfigError, grid_to_dict, parse_grid, recorded_grid
from omk_ray.variants.artifacts import BuildError, parse_build
from omk_ray.variants.dropmap import DropMapError, plan_drop_map
from omk_ray.variants.spec import (
    STRATEGIES, DropMapSpec, FromMapBuild, FromProfileBuild, FromScoresBuild, QuantizeBuild,
)  # fmt: skip

CD = {"metadata": {"num_experts": 4, "prompts": 2},
      "categories": {c: {"0": [{"id": e, "wnorm": w, "rnorm": 0.0, "wsum": 1.0, "tc": 1, "cc": 1} for e, w in enumerate(ws)]}
                     for c, ws in {"math": [1.0, 0.2, 0.5, 0.1], "code": [0.1, 0.9, 0.3, 0.2]}.items()}}


@pytest.mark.parametrize("block, kind", [
    ({"base": "m", "drop_map": {"0": [1]}}, FromMapBuild),
    ({"base": "m", "drop_map": "map.json", "quantization": "nvfp4a16"}, FromMapBuild),
    ({"base": "m", "scores": "cd.json", "drop": 2, "strategy": "lp", "params": {"p": 3}}, FromScoresBuild),
    ({"base": "m", "profile_prompts": "default", "target": 6, "profile_workers": 2}, FromProfileBuild),
    ({"base": "m", "quantization": "gguf", "gguf": {"type": "Q8_0"}}, QuantizeBuild),
])
def test_a_build_block_is_the_model_of_its_kind(block, kind):
    spec = parse_build(block)
    assert type(spec) is kind and spec.model_dump(exclude_unset=True)["base"] == "m"
    assert isinstance(spec, DropMapSpec) == (kind in (FromScoresBuild, FromProfileBuild))


@pytest.mark.parametrize("block, message", [
    ({"scores": "cd.json", "drop": 2, "strategy": "lpp"},
     "strategy: unknown strategy 'lpp'; choose one of " + ", ".join(STRATEGIES)),
    ({"scores": "cd.json", "drop": 2, "alpha": math.inf}, "alpha: Input should be a finite number"),
    ({"scores": "cd.json", "drop": 2, "weights": {"math": math.nan}}, "weights.math: Input should be a finite number"),
    ({"profile_prompts": "default", "drop": 2, "params": {"seed": -math.inf}, "strategy": "random"},
     "params.seed: Input should be a finite number"),
    ({"drop_map": {"0": [1]}, "protect_top": 4},
     "`protect_top` belongs to a build that chooses its drop map from CD scores or profiles the base to choose its "
     "drop map; this one prunes by a ready drop map"),
    ({"scores": "cd.json", "profile_workers": 2, "drop": 1}, "`profile_workers` belongs to a build that profiles the base"),
    ({"drop_map": {"0": [1]}, "scores": "cd.json"}, "give one source of the drop map (drop_map, scores or profile_prompts)"),
    ({}, "nothing to build: give drop_map, scores or profile_prompts, and/or quantization"),
    ({"scores": "cd.json"}, "give exactly one of `target` (experts kept per layer) or `drop`"),
    ({"scores": "cd.json", "target": 0}, "target 0 keeps no expert: at least one expert must stay"),
    ({"scores": "cd.json", "drop": 1, "params": {"p": 2}}, "strategy 'max' takes no parameter ['p'] (it takes: none)"),
])
def test_a_wrong_build_block_is_refused_in_one_sentence(block, message):
    with pytest.raises(BuildError) as caught:
        parse_build({"base": "m", **block})
    assert str(caught.value) == f"invalid build block: {message}" or str(caught.value).startswith(
        f"invalid build block: {message}"), caught.value
    assert "\n" not in str(caught.value) and "Value error" not in str(caught.value)


def test_the_planner_reads_a_build_block_as_its_drop_map_spec():
    """A build that chooses its map from scores is a DropMapSpec: plan_drop_map takes it as it is,
    and the keyword form gives the same map."""
    spec = parse_build({"base": "m", "scores": "cd.json", "drop": 1, "strategy": "mean", "protect_top": 1})
    assert plan_drop_map(CD, spec).drop_map == plan_drop_map(CD, "mean", drop=1, protect_top=1).drop_map == {"0": [3]}
    assert plan_drop_map(CD, spec).params["protect_top"] == 1
    with pytest.raises(DropMapError, match="alpha: Input should be a finite number"):
        plan_drop_map(CD, "max", drop=1, alpha=math.nan)


def test_the_dropmap_command_defaults_are_the_specs():
    """The command's options are the spec's fields, with the spec's defaults."""
    from omk_ray.variants import commands

    captured = {}
    app_like = type("App", (), {"command": lambda self, name=None, **kw: (lambda f: captured.setdefault(name, f))})()
    commands.register(app_like)
    options = {name: p.default.default for name, p in inspect.signature(captured["dropmap"]).parameters.items()}
    shared = set(options) & set(DropMapSpec.model_fields)
    assert shared >= {"strategy", "criterion", "target", "drop", "protect_top", "protect_per_class", "normalize", "alpha",
                      "protect_super", "protect_super_all_layers"}
    assert {k: options[k] for k in shared} == {k: DropMapSpec.model_fields[k].default for k in shared}


def test_the_dropmap_command_refuses_infinity_in_one_line(tmp_path):
    import json

    cd = tmp_path / "cd.json"
    cd.write_text(json.dumps(CD))
    result = CliRunner().invoke(app, ["dropmap", "--cd", str(cd), "--out", str(tmp_path / "map.json"), "--drop", "1",
                                      "--weight", "math=inf"])
    assert result.exit_code == 2 and "weights.math: Input should be a finite number" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "map.json").exists()


def test_a_grid_types_its_build_blocks_and_records_them_as_given(tmp_path):
    bench = write_bench(tmp_path / "b.jsonl", 2)
    raw = {"name": "g", "variants": [{"name": "arm", "engine": "transformers",
                                      "build": {"base": "m", "scores": "cd.json", "drop": 2, "quantization": "nvfp4a16"}}],
           "benches": [{"name": "copy", "source": str(bench)}]}
    grid = parse_grid(raw, "grid.yaml")
    build = grid.variant("arm").build
    assert type(build) is FromScoresBuild and build.quantization == "NVFP4A16" and build.strategy == "max"
    recorded = grid_to_dict(grid)["variants"][0]["build"]
    assert recorded == {"base": "m", "scores": "cd.json", "drop": 2, "quantization": "NVFP4A16"}  # no defaults added
    assert recorded_grid(grid_to_dict(grid), "manifest.json").variant("arm").build == build
    bad = {**raw, "variants": [{**raw["variants"][0], "build": {"base": "m", "scores": "cd.json", "drop": 2,
                                                                "alpha": math.inf, "strategy": "lpp"}}]}
    with pytest.raises(ConfigError) as caught:
        parse_grid(bad, "grid.yaml")
    assert "variant 'arm': build.alpha: Input should be a finite number" in str(caught.value)
    assert "variant 'arm': build.strategy: unknown strategy 'lpp'; choose one of" in str(caught.value)


def test_plan_names_a_wrong_build_block_and_exits_2(tmp_path):
    bench = write_bench(tmp_path / "b.jsonl", 2)
    path = write_grid(tmp_path / "grid.yaml", [{"name": "arm", "engine": "transformers",
                                                "build": {"base": "m", "scores": "cd.json", "drop": 2, "alpha": ".nan"}}],
                      [{"name": "copy", "kind": "jsonl", "source": str(bench)}])
    path.write_text(path.read_text().replace("'.nan'", ".nan"))
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 2 and "variant 'arm': build.alpha: Input should be a finite number" in result.output, \
        result.output
