"""Grid configs: validated at the edge, errors name file, key and problem, and nothing starts."""

from __future__ import annotations

import pytest
import ray
from helpers import hf_variant, write_bench, write_grid
from pydantic import BaseModel
from typer.testing import CliRunner

from omk_ray.cli import app
from omk_ray.config import ConfigError, Recipe, load_grid
from omk_ray.engines.echo import EchoEngine

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
        ({"benches": [{"name": "x", "kind": "jsonl", "source": "/no/such.jsonl"}]}, "data file /no/such.jsonl not found"),
        ({"recipe": {"max_gen_toks": 400}}, "does not fit max_model_len=256"),
    ],
)
def test_cli_refuses_before_starting_anything(tmp_path, change, message):
    results = tmp_path / "results"
    code, output = run_cli("run", grid_file(tmp_path, **change), "--results", results)
    assert code == 2 and output.count(message) == 1  # said once
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


# -- every mistake before start ------------------------------------------------------------------


class StrictEcho(EchoEngine):
    """The echo engine with options of its own, as a plug-in engine declares its `engine_args.extra`."""

    class Options(BaseModel):
        model_config = {"extra": "forbid"}
        seconds_per_token: float = 0.0


class NotAnEngine:
    """A plug-in that forgot to derive from Engine (and so lacks the defaults the farm reads)."""


@pytest.fixture
def strict_engine():
    from omk_ray.engines import ENGINES, register_engine

    register_engine("strict-echo", f"{__name__}:StrictEcho")
    register_engine("not-an-engine", f"{__name__}:NotAnEngine")
    register_engine("missing-module", "no_such_package.engine:Engine")
    yield "strict-echo"
    for kind in ("strict-echo", "not-an-engine", "missing-module"):
        ENGINES.pop(kind)


def mistakes(tmp_path) -> dict[str, tuple[dict, str]]:
    """name -> (grid changes, what the error must say)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_checkpoint = tmp_path / "not-a-checkpoint"
    no_checkpoint.mkdir()
    bench = {"name": "copy", "kind": "jsonl", "source": str(tmp_path / "b.jsonl")}
    return {
        "missing model folder": ({"variants": [hf_variant("base", "/nonexistent/model")]},
                                 "variant 'base': model folder /nonexistent/model not found"),
        "folder without config.json": ({"variants": [hf_variant("base", no_checkpoint)]},
                                       f"variant 'base': model folder {no_checkpoint} holds no config.json"),
        "min_tokens > max_gen_toks": ({"recipe": {"max_gen_toks": 8, "min_tokens": 9}},
                                      "min_tokens (9) is larger than max_gen_toks (8)"),
        "unknown engine extra": ({"variants": [{"name": "e", "engine": "strict-echo", "model": "m",
                                                "engine_args": {"extra": {"seconds_per_tokn": 1}}}]},
                                 "variant 'e': engine_args.extra.seconds_per_tokn: Extra inputs are not permitted"),
        "plug-in not an Engine": ({"variants": [{"name": "e", "engine": "not-an-engine", "model": "m"}]},
                                  f"variant 'e': cannot load engine 'not-an-engine' ({__name__}:NotAnEngine): engine "
                                  f"'not-an-engine' is {__name__}:NotAnEngine, which does not derive from "
                                  "omk_ray.engines.base.Engine"),
        "plug-in module missing": ({"variants": [{"name": "e", "engine": "missing-module", "model": "m"}]},
                                   "variant 'e': cannot load engine 'missing-module' (no_such_package.engine:Engine): "
                                   "No module named 'no_such_package'"),
        "unknown bench option": ({"benches": [{**bench, "options": {"answer_regexp": "x"}}]},
                                 "bench 'copy': options.answer_regexp: Extra inputs are not permitted"),
        "repeated subset id": ({"benches": [{**bench, "subset": ["q0", "q1", "q0"]}]},
                               "subset lists doc ids more than once: ['q0']"),
        "negative subset": ({"benches": [{**bench, "subset": -5}]}, "subset must be a positive number"),
        "empty bench": ({"benches": [{**bench, "source": str(empty)}]}, f"bench 'copy': no documents in {empty}"),
        "bad build block": ({"variants": [{"name": "arm", "engine": "transformers", "build": {
                                "base": "/nonexistent/model", "drop_mapp": {"0": [1]}}}]},
                            "variant 'arm': build.drop_mapp: Extra inputs are not permitted"),
        "build base folder missing": ({"variants": [{"name": "arm", "engine": "transformers", "build": {
                                          "base": "/nonexistent/model", "drop_map": {"0": [1]}}}]},
                                      "variant 'arm': build.base folder /nonexistent/model not found"),
    }


@pytest.mark.parametrize("mistake", ["missing model folder", "folder without config.json", "min_tokens > max_gen_toks",
                                     "unknown engine extra", "plug-in not an Engine", "plug-in module missing",
                                     "unknown bench option", "repeated subset id",
                                     "negative subset", "empty bench", "bad build block", "build base folder missing"])
def test_every_mistake_is_refused_before_anything_starts(tmp_path, tiny_gemma4, strict_engine, mistake):
    change, message = mistakes(tmp_path)[mistake]
    change.setdefault("variants", [hf_variant("base", tiny_gemma4)])
    path = grid_file(tmp_path, tiny_model=tiny_gemma4, **change)
    for command in (["plan", path], ["run", path, "--results", tmp_path / "results", "--no-progress"]):
        code, output = run_cli(*command)
        assert code == 2 and str(path) in output and message in output, output
        assert [output.count(w) for w in ("bench '", "variant '")] == [message.count(w) for w in ("bench '", "variant '")]
    assert not (tmp_path / "results").exists()  # no run folder, no shard
    assert not ray.is_initialized()  # no cluster was started


def test_a_key_given_twice_in_the_yaml_is_refused(tmp_path, tiny_gemma4):
    path = grid_file(tmp_path, tiny_model=tiny_gemma4)
    path.write_text(path.read_text() + "recipe:\n  max_gen_toks: 4\n")  # a second top-level `recipe`
    code, output = run_cli("plan", path)
    assert code == 2 and "the key 'recipe' is given twice in one mapping" in output
    anchors = tmp_path / "anchors.yaml"  # YAML merge keys still override what they merge
    anchors.write_text(path.read_text().rsplit("recipe:\n  max_gen_toks: 4\n", 1)[0].replace(
        "name: test", "name: test\nx-r: &r {max_gen_toks: 5, temperature: 0}\nrecipe: {<<: *r, max_gen_toks: 6}", 1)
        .replace("recipe:\n  max_gen_toks: 8\n", "", 1))
    assert load_grid(anchors).recipe.max_gen_toks == 6


def test_options_every_bench_takes_are_accepted(tmp_path, tiny_gemma4):
    """The README's canary floor and a primary metric are options of every bench kind."""
    code, output = run_cli("plan", grid_file(tmp_path, tiny_model=tiny_gemma4, benches=[
        {"name": "he", "kind": "humaneval", "subset": 2, "options": {"canary_min_p10_tokens": 16, "timeout_s": 5}},
        {"name": "copy", "kind": "jsonl", "source": str(write_bench(tmp_path / "c.jsonl", 2)),
         "options": {"canary_min_p10_tokens": 2, "primary_metric": "exact_match"}},
    ], variants=[hf_variant("base", tiny_gemma4)]))
    assert code == 0, output


def test_paths_resolve_against_the_config_files_real_folder(tmp_path, tiny_gemma4):
    """A linked config (the README's configs/demo.yaml) resolves every local path, builds' too,
    against the folder of the file it links to."""
    import shutil

    real = tmp_path / "real"
    real.mkdir()
    shutil.copytree(tiny_gemma4, real / "model")
    write_bench(real / "bench.jsonl", 2)
    (real / "grid.yaml").write_text(
        "variants:\n  - {name: base, model: model, engine: transformers}\n"
        "  - {name: arm, engine: transformers, build: {base: model, drop_map: drops.json}}\n"
        "benches:\n  - {name: copy, kind: jsonl, source: bench.jsonl}\n")
    (real / "drops.json").write_text('{"0": [1], "1": [2]}')
    links = tmp_path / "configs"
    links.mkdir()
    (links / "grid.yaml").symlink_to(real / "grid.yaml")
    grid = load_grid(links / "grid.yaml")
    assert grid.variant("base").model == str((real / "model").resolve())
    assert grid.variant("arm").build.model_dump(exclude_unset=True) == {
        "base": str((real / "model").resolve()), "drop_map": str((real / "drops.json").resolve())}
    assert grid.bench("copy").source == str((real / "bench.jsonl").resolve())


def test_a_manifest_of_an_earlier_version_still_reads(tmp_path):
    """Run manifests written before farm.shard_size was retired read back (status, compare, rescore);
    a user's config that still names it is refused with a pointer to what replaced it."""
    from omk_ray.config import parse_grid, recorded_grid

    raw = {"name": "old", "variants": [{"name": "a", "model": "m", "engine": "echo"}],
           "benches": [{"name": "b", "source": "b.jsonl"}], "farm": {"shard_size": 16, "max_retries": 3}}
    grid = recorded_grid(raw, "runs/x/manifest.json")
    assert grid.farm.max_retries == 3 and grid.variants[0].name == "a"
    with pytest.raises(ConfigError, match="farm.shard_size is gone"):
        parse_grid(raw, "grid.yaml")


def test_a_manifest_naming_package_data_where_it_used_to_live_reads_where_it_is_now(tmp_path):
    """Manifests recorded absolute paths to the shipped toy, its prompts and lm-eval tasks before
    they moved under omk_ray/_data/; read back, each names the file where it lives now."""
    from omk_ray.config import recorded_grid
    from omk_ray.toy.data import assets_dir

    package = assets_dir().parents[1]  # .../omk_ray
    raw = {"name": "old",
           "variants": [{"name": "toy", "model": str(package / "toy/assets/model")},
                        {"name": "arm", "build": {"base": str(package / "toy/assets/model"), "drop": 6,
                                                  "profile_prompts": str(package / "toy/assets/profile_prompts.jsonl")}},
                        {"name": "hub", "model": "google/gemma-4-26b-a4b-it"}],
           "benches": [{"name": "toy", "source": str(package / "toy/assets/bench.jsonl")},
                       {"name": "aime", "kind": "lmeval", "options": {
                           "task": "aime24_chat", "include_path": str(package / "benches/lmeval_tasks")}}]}
    grid = recorded_grid(raw, "runs/x/manifest.json")
    assert grid.variant("toy").model == str(package / "_data/toy/model")
    assert grid.variant("arm").build.model_dump(exclude_unset=True) == {
        "base": str(package / "_data/toy/model"), "drop": 6,
        "profile_prompts": str(package / "_data/toy/toy_profile_prompts.jsonl")}
    assert grid.variant("hub").model == "google/gemma-4-26b-a4b-it"
    assert grid.bench("toy").source == str(package / "_data/toy/bench.jsonl")
    assert grid.bench("aime").options["include_path"] == str(package / "_data/lmeval_tasks")


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, tiny_gemma4):
    path = grid_file(tmp_path, tiny_model=tiny_gemma4)
    bomb = ["x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"x-a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]  # 9**10 values
    path.write_text("\n".join(bomb) + "\n" + path.read_text())
    assert path.stat().st_size < 2000
    code, output = run_cli("plan", path)
    assert code == 2 and str(path) in output
    assert "its aliases expand to more than 100,000 values (an alias bomb?)" in output
    looped = tmp_path / "loop.yaml"
    looped.write_text("x-a: &a [1, *a]\n" + path.read_text().split("\n", len(bomb))[-1])
    code, output = run_cli("plan", looped)
    assert code == 2 and "an alias refers to the value that holds it" in output
    deep = tmp_path / "deep.yaml"
    deep.write_text("x-deep: " + "[" * 5000 + "]" * 5000 + "\n" + path.read_text().split("\n", len(bomb))[-1])
    code, output = run_cli("plan", deep)
    assert code == 2 and f"{deep}: its YAML is nested too deeply to read" in output


@pytest.mark.parametrize("change, message", [
    ({"farm": {"stall_timeout_s": float("inf")}}, "farm.stall_timeout_s: Input should be a finite number"),
    ({"recipe": {"temperature": float("nan")}}, "recipe.temperature: Input should be a finite number"),
    ({"recipe": {"repeats": 100000000}}, "recipe.repeats: Input should be less than or equal to 1000"),
    ({"farm": {"scorers": 100000}}, "farm.scorers: Input should be less than or equal to 256"),
    ({"farm": {"max_in_flight": 10**9}}, "farm.max_in_flight: Input should be less than or equal to 100000"),
])
def test_infinities_and_absurd_repeats_are_refused(tmp_path, change, message):
    code, output = run_cli("plan", grid_file(tmp_path, **change))
    assert code == 2 and message in output, output


def test_a_plan_too_large_to_hold_is_refused_before_it_is_made(tmp_path, tiny_gemma4, monkeypatch):
    from omk_ray.farm import planner

    monkeypatch.setattr(planner, "MAX_PLAN_SAMPLES", 5)  # the bench has 3 docs; 2 repeats make 6 samples
    path = grid_file(tmp_path, tiny_model=tiny_gemma4, recipe={"repeats": 2, "max_gen_toks": 8})
    code, output = run_cli("plan", path)
    assert code == 2 and str(path) in output
    assert "6 samples (docs x repeats over every variant and bench) is more than the 5 one plan holds" in output


@pytest.mark.parametrize("regex, message", [
    ("(unclosed", "bench 'copy': options.answer_regex: Value error, '(unclosed' is not a valid regular expression: "
                  "missing ), unterminated subpattern at position 0"),
    ("(a)(b)", "bench 'copy': options.answer_regex: Value error, '(a)(b)' has 2 groups"),
])
def test_an_answer_regex_is_compiled_by_plan(tmp_path, tiny_gemma4, regex, message):
    bench = {"name": "copy", "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 3)),
             "options": {"answer_regex": regex}}
    path = grid_file(tmp_path, tiny_model=tiny_gemma4, benches=[bench])
    code, output = run_cli("plan", path)
    assert code == 2 and str(path) in output and message in output, output


def test_messages_of_the_wrong_shape_are_refused_by_plan(tmp_path, tiny_gemma4):
    data = tmp_path / "m.jsonl"
    data.write_text('{"id": "ok", "messages": [{"role": "user", "content": "hi"}], "target": "x"}\n'
                    '{"id": "bad", "messages": "hi", "target": "x"}\n')
    path = grid_file(tmp_path, tiny_model=tiny_gemma4, benches=[{"name": "copy", "kind": "jsonl", "source": str(data)}])
    code, output = run_cli("plan", path)
    assert code == 2, output
    assert f"bench 'copy': {data}:2: `messages` must be a list of" in output.replace("\n", "")
    assert 'not "hi"' in output


def test_impossible_builds_are_refused_by_plan_all_at_once(tmp_path, tiny_gemma4):
    """The tiny base has 8 experts per layer and routes each token to 2; nothing is loaded but its config.json."""
    scores = tmp_path / "scores.json"
    scores.write_text("{}")  # only its existence is checked before the build

    def build(name, **block):
        return {"name": name, "engine": "transformers", "build": {"base": str(tiny_gemma4), **block}}

    variants = [
        build("none-left", scores=str(scores), drop=8),
        build("below-top-k", scores=str(scores), drop=7),
        build("too-many-kept", scores=str(scores), target=9),
        build("over-protected", scores=str(scores), drop=5, protect_top=4),
        build("no-calibration", quantization="gguf", gguf={"type": "Q6_K", "imatrix": "calibration.txt"}),
        build("no-scores", scores="missing-scores.json", drop=2),
        build("map-over-top-k", drop_map={"0": [0, 1, 2, 3, 4, 5, 6], "1": [0, 1, 2, 3, 4, 5, 6]}),
        build("map-out-of-range", drop_map={"0": [8], "1": [0]}),
        build("fine", scores=str(scores), drop=4, protect_top=4),
        build("fine-map", drop_map={"0": [0, 1], "1": [2, 3]}),
    ]
    path = grid_file(tmp_path, tiny_model=tiny_gemma4, variants=variants)
    code, output = run_cli("plan", path)
    assert code == 2 and str(path) in output, output
    lines = [line.strip() for line in output.splitlines()]
    assert [line for line in lines if line.startswith("variant '")] == [
        "variant 'none-left': build.drop 8 leaves 0 of the base's 8 experts per layer: at least one must stay",
        "variant 'below-top-k': build.drop 7 keeps 1 experts per layer, fewer than the base's top-k (2) routed to per token",
        "variant 'too-many-kept': build.target 9 keeps more experts than the base's 8 per layer",
        "variant 'over-protected': build.protect_top 4 shields 4 of the base's 8 experts per layer, so at most 4 can be "
        "dropped, not 5 (drop: 5)",
        f"variant 'no-calibration': build.gguf.imatrix: file {tmp_path / 'calibration.txt'} not found",
        f"variant 'no-scores': build.scores: file {tmp_path / 'missing-scores.json'} not found",
        "variant 'map-over-top-k': build.drop_map: the drop map keeps 1 experts per layer, fewer than the model's "
        "top-k (2) (the base has 8 experts per layer)",
        "variant 'map-out-of-range': build.drop_map: layer 0: expert ids [8] are outside 0..7 (the base has 8 experts "
        "per layer)",
    ]
    assert not ray.is_initialized()


def test_grid_level_mistakes_are_reported_together(tmp_path):
    variants = [hf_variant("a", "/m"), hf_variant("a", "/m"),
                {**hf_variant("b", "/m"), "recipe_overrides": {"lcb": {"max_gen_toks": 4}, "copy": {"min_tokens": 99}}}]
    path = grid_file(tmp_path, variants=variants)
    code, output = run_cli("plan", path)
    assert code == 2 and str(path) in output, output
    for problem in ("duplicate variant name 'a'", "variant 'b': recipe_overrides names unknown bench 'lcb'",
                    "recipe of variant 'b' on bench 'copy': Value error, min_tokens (99) is larger than max_gen_toks (8)"):
        assert output.count(problem) == 1, (problem, output)
    assert "validation error for Recipe" not in output


def test_a_field_mistake_and_a_grid_level_mistake_are_reported_together(tmp_path):
    variants = [hf_variant("a", "/m"), {**hf_variant("a", "/m"), "recipe_overrides": {"lcb": {"max_gen_toks": 4}}}]
    path = grid_file(tmp_path, variants=variants, recipe={"top_p": 3})
    code, output = run_cli("plan", path)
    assert code == 2 and str(path) in output, output
    for problem in ("recipe.top_p: Input should be less than or equal to 1", "duplicate variant name 'a'",
                    "variant 'a': recipe_overrides names unknown bench 'lcb'"):
        assert output.count(problem) == 1, (problem, output)
