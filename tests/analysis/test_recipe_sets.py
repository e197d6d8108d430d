"""A results folder holding two recipe sets (a recipe changed between runs): refused with a hint,
`--recipe latest|HASH` picks one, `--allow-mismatch` uses the latest and says so."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from helpers.samples import grid_config, sample, write_store
from typer.testing import CliRunner

from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.samples import AnalysisError
from omk_ray.cli import app
from omk_ray.config import Recipe

OLD, NEW = Recipe(max_gen_toks=64), Recipe(max_gen_toks=128)
runner = CliRunner()


@pytest.fixture
def results(tmp_path):
    def rows(variant, outcomes, recipe, day):
        return [sample(variant, "b", f"d{i}", ok, recipe=recipe, started_at=datetime(2026, 5, day, tzinfo=timezone.utc))
                for i, ok in enumerate(outcomes)]

    store = [*rows("base", [1, 1, 1, 1], OLD, 14), *rows("arm", [0, 0, 1, 1], OLD, 14),  # old: 100% vs 50%
             *rows("base", [1, 1, 0, 0], NEW, 15), *rows("arm", [1, 1, 1, 0], NEW, 15)]  # new: 50% vs 75%
    configs = [grid_config([{"name": "base"}, {"name": "arm"}], ["b"], recipe=r.model_dump()) for r in (OLD, NEW)]
    write_store(tmp_path / "results", store, configs)
    return tmp_path / "results"


def scores(results, **options) -> tuple[float, float]:
    row = compare(results, CompareOptions(baseline="base", **options)).rows("scoreboard")[0]
    return row["baseline_score"], row["variant_score"]


def test_two_recipe_sets_are_refused_with_a_hint(results, tmp_path):
    result = runner.invoke(app, ["compare", str(results), "-b", "base", "-o", str(tmp_path / "r"), "--no-html"])
    assert result.exit_code == 2
    assert (f"holds 2 recipe sets ({OLD.hash[:8]} (8 samples), {NEW.hash[:8]} (8 samples)): compare one with "
            "--recipe latest or --recipe HASH.") in result.output


def test_recipe_latest_or_a_hash_picks_one_set(results):
    assert scores(results, recipe="latest") == (50.0, 75.0)
    assert scores(results, recipe=NEW.hash[:6]) == (50.0, 75.0)
    assert scores(results, recipe=OLD.hash[:6]) == (100.0, 50.0)
    with pytest.raises(AnalysisError, match="--recipe ffff: no samples ran such a recipe"):
        scores(results, recipe="ffff")


def test_allow_mismatch_uses_the_latest_set_and_says_which(results, tmp_path):
    assert scores(results, allow_mismatch=True) == (50.0, 75.0)
    result = runner.invoke(app, ["compare", str(results), "-b", "base", "-o", str(tmp_path / "r"), "--no-html",
                                 "-q", "--allow-mismatch"])
    assert result.exit_code == 0, result.output
    assert (f"--allow-mismatch: this folder holds 2 recipe sets ({OLD.hash[:8]} (8 samples), {NEW.hash[:8]} "
            f"(8 samples)); each variant x bench uses its latest ({NEW.hash[:8]} (8 samples)); pick another with "
            "--recipe HASH") in result.output
