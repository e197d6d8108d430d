"""The cohort guard: unlike samples never share a table unless asked, and then they are marked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from helpers.samples import SAMPLED, bench_rows, grid_config, sample, write_store
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.cohort import CohortMismatch
from omk_ray.analysis.markdown import to_markdown
from omk_ray.cli import app
from omk_ray.config import Recipe, parse_grid

OUTCOMES = [True, False, True, True, False, True]


def test_greedy_vs_sampled_is_refused(tmp_path):
    rows = bench_rows("base", "gsm8k", OUTCOMES) + bench_rows("v4", "gsm8k", OUTCOMES, recipe=SAMPLED)
    write_store(tmp_path, rows)
    with pytest.raises(CohortMismatch, match="gsm8k: baseline base is greedy but v4 is sampled-t0.6-p0.95-k20"):
        compare(tmp_path, CompareOptions(baseline="base"))
    result = CliRunner().invoke(app, ["compare", str(tmp_path), "--baseline", "base", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "greedy but v4 is sampled" in result.output and "--allow-mismatch" in result.output
    assert not (tmp_path / "r").exists()  # nothing written from a refused comparison


def test_allow_mismatch_builds_the_table_and_marks_it(tmp_path):
    rows = bench_rows("base", "gsm8k", OUTCOMES) + bench_rows("v4", "gsm8k", OUTCOMES, recipe=SAMPLED)
    rows += bench_rows("base", "arc", OUTCOMES) + bench_rows("v4", "arc", OUTCOMES)
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", allow_mismatch=True, resamples=200))
    marks = {r["bench"]: r["marks"] for r in c.rows("scoreboard")}
    assert marks == {"arc": "", "gsm8k": "‡"}
    markdown = to_markdown(c)
    assert "| gsm8k (6)‡ |" in markdown and "| arc (6) |" in markdown
    assert "‡ mismatch allowed: gsm8k: baseline base is greedy but v4 is sampled" in markdown


def test_declared_recipe_override_is_allowed_and_footnoted(tmp_path):
    overrides = {"lcb": {"enable_thinking": True, "thinking_budget": 12288, "max_gen_toks": 16384}}
    config = grid_config([{"name": "128e"}, {"name": "v4", "recipe_overrides": overrides}], ["lcb", "gpqa"])
    grid = parse_grid(config)
    v4_lcb = grid.recipe_for(grid.variant("v4"), grid.bench("lcb"))
    rows = bench_rows("128e", "lcb", OUTCOMES) + bench_rows("v4", "lcb", OUTCOMES, recipe=v4_lcb)
    write_store(tmp_path, rows, configs=[config])
    c = compare(tmp_path, CompareOptions(baseline="128e", resamples=200))
    assert c.rows("scoreboard")[0]["marks"] == "†"
    markdown = to_markdown(c)
    assert "| lcb (6)† |" in markdown
    assert "† lcb: v4 uses its declared recipe override (enable_thinking=True, max_gen_toks=16384, thinking_budget=12288)" in markdown


def test_undeclared_recipe_difference_is_refused(tmp_path):
    config = grid_config([{"name": "128e"}, {"name": "v4"}], ["lcb"])  # no override declared
    other = Recipe(max_gen_toks=999)
    rows = bench_rows("128e", "lcb", OUTCOMES) + bench_rows("v4", "lcb", OUTCOMES, recipe=other)
    write_store(tmp_path, rows, configs=[config])
    with pytest.raises(CohortMismatch, match=f"lcb: v4 ran recipe {other.hash[:8]} .* no grid declared that override"):
        compare(tmp_path, CompareOptions(baseline="128e"))


def test_one_variant_mixing_two_weights_is_refused(tmp_path):
    rows = bench_rows("base", "arc", OUTCOMES) + bench_rows("v4", "arc", OUTCOMES)
    rows += [sample("v4", "arc", "d0", False, variant_fingerprint="fp-other")]  # same doc, other weights
    write_store(tmp_path, rows)
    with pytest.raises(CohortMismatch, match="v4 on arc mixes samples of different setups"):
        compare(tmp_path, CompareOptions(baseline="base"))
