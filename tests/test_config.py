"""Grid configs: validated at the edge, errors name file, key and problem, and nothing starts."""

from __future__ import annotations

import pytest
import ray
from typer.testing import CliRunner

from conftest import hf_variant, write_bench, write_grid
from omk_ray.cli import app
from omk_ray.config import ConfigError, Recipe, load_grid

runner = CliRunner()


def grid_file(tmp_path, tiny_model="/nonexistent/model", **overrides):
    bench = write_bench(tmp_path / "b.jsonl", 3)
    variants = overrides.pop("variants", [hf_variant("base", tiny_model)])
    benches = overrides.pop("benches", [{"name": "copy", "kind": "jsonl", "source": str(bench)}])
    return write_grid(tmp_path / "grid.yaml", variants, benches, **overrides)


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "change, message",
    [
        ({"recipe": {"max_gen_toks": 0}}, "recipe.max_gen_toks"),
        ({"recipe": {"temprature": 0.5}}, "recipe.temprature"),
        ({"variants": [{"name": "bad name!", "model": "x"}]}, "variants.0.name"),
        ({"variants": [{"name": "a"}]}, "needs `model`"),
        ({"farm": {"flush_samples": -1}}, "farm.flush_samples"),
        ({"farm": {"shard_size": 16}}, "farm.shard_size is gone"),
        ({"recipe": {"thinking_budget": 100}}, "enable_thinking is false"),
    ],
)
def test_malformed_config_names_key_and_problem(tmp_path, change, message):
    path = grid_file(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_yaml_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_grid(tmp_path / "missing.yaml")


def test_override_of_unknown_bench_is_refused(tmp_path):
    variant = {**hf_variant("v4", "/m"), "recipe_overrides": {"lcb": {"enable_thinking": True}}}
    with pytest.raises(ConfigError, match="unknown bench 'lcb'"):
        load_grid(grid_file(tmp_path, variants=[variant]))


def test_per_variant_override_changes_recipe_hash(tmp_path):
    v4 = {**hf_variant("v4", "/m"),
          "recipe_overrides": {"copy": {"enable_thinking": True, "thinking_budget": 12288, "max_gen_toks": 16384}}}
    grid = load_grid(grid_file(tmp_path, variants=[hf_variant("base", "/m"), v4]))
    base_recipe = grid.recipe_for(grid.variant("base"), grid.bench("copy"))
    v4_recipe = grid.recipe_for(grid.variant("v4"), grid.bench("copy"))
    assert base_recipe.hash != v4_recipe.hash
    assert v4_recipe.generation_budget == 16384 and v4_recipe.cohort == base_recipe.cohort == "greedy"
    assert Recipe(temperature=1.0, top_p=0.95, top_k=64).cohort == "sampled-t1-p0.95-k64-minp0"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"variants": [{**hf_variant("a", "/m"), "engine": "sglang"}]}, "unknown engine 'sglang'"),
        ({"benches": [{"name": "x", "kind": "nope", "source": "x"}]}, "unknown bench kind 'nope'"),
        ({"benches": [{"name": "x", "kind": "jsonl", "source": "/no/such.jsonl"}]}, "not found"),
        ({"recipe": {"max_gen_toks": 400}}, "does not fit max_model_len=256"),
    ],
)
def test_cli_refuses_before_starting_anything(tmp_path, change, message):
    results = tmp_path / "results"
    code, output = run_cli("run", grid_file(tmp_path, **change), "--results", results)
    assert code == 2 and message in output
    assert not results.exists()  # no run folder, no shard
    assert not ray.is_initialized()  # no cluster was started


def test_cli_malformed_config_exit_code(tmp_path):
    code, output = run_cli("plan", grid_file(tmp_path, recipe={"top_p": 3}))
    assert code == 2 and "recipe.top_p" in output


def test_plan_counts(tmp_path, tiny_gemma4):
    path = grid_file(tmp_path, tiny_model=tiny_gemma4, variants=[hf_variant("a", tiny_gemma4), hf_variant("b", tiny_gemma4)])
    code, output = run_cli("plan", path, "--json")
    assert code == 0
    import json

    rows = json.loads(output)
    assert [(r["variant"], r["bench"], r["expected"], r["missing"]) for r in rows] == [("a", "copy", 3, 3), ("b", "copy", 3, 3)]


def test_locked_run_refuses_a_config_without_or_off_its_lock(tmp_path, tiny_gemma4):
    path = grid_file(tmp_path, tiny_model=tiny_gemma4, variants=[hf_variant("a", tiny_gemma4)])
    code, output = run_cli("run", path, "--results", tmp_path / "r", "--locked")
    assert code == 2 and "lock" in output and not (tmp_path / "r").exists()
    assert run_cli("lock", path)[0] == 0
    path.write_text(path.read_text().replace("max_gen_toks: 8", "max_gen_toks: 9"))
    code, output = run_cli("run", path, "--results", tmp_path / "r", "--locked")
    assert code == 2 and "max_gen_toks 8 -> 9" in output and not (tmp_path / "r").exists()
    assert not ray.is_initialized()
