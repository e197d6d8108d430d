"""`omk-ray run` builds the arms a grid declares (as Ray tasks) before evaluating them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from helpers import hf_variant, write_bench, write_grid
from omk_ray.cli import app
from omk_ray.config import load_grid
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore


def arm(name, base, drop_map):
    return {"name": name, "engine": "transformers", "engine_args": {"dtype": "float32", "max_model_len": 256},
            "build": {"base": str(base), "drop_map": drop_map}}


@pytest.mark.slow
def test_run_builds_missing_arms_once(tmp_path, tiny_gemma4, local_ray):
    bench = write_bench(tmp_path / "b.jsonl", 4)
    drop = {"0": [1, 6], "1": [0, 7]}
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("base", tiny_gemma4), arm("pruned", tiny_gemma4, drop)],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        artifacts=str(tmp_path / "artifacts"),
    ))
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert summary.generated == 8
    built = [p for p in (tmp_path / "artifacts").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(built) == 1
    config = json.loads((built[0] / "config.json").read_text())
    assert config["num_experts"] == 6
    manifest = ResultsStore(tmp_path / "results").runs()[-1].manifest()
    assert manifest["model_paths"]["pruned"] == str(built[0])
    mtime = built[0].stat().st_mtime_ns

    again = run_grid(grid, tmp_path / "results", show_progress=False)
    assert again.generated == 0  # same fingerprint: nothing to generate, nothing rebuilt
    assert built[0].stat().st_mtime_ns == mtime


def test_bad_drop_map_stops_before_running(tmp_path, tiny_gemma4):
    bench = write_bench(tmp_path / "b.jsonl", 4)
    config = write_grid(
        tmp_path / "grid.yaml",
        [arm("bad", tiny_gemma4, {"0": [1, 99], "1": [0, 7]})],
        [{"name": "copy", "kind": "jsonl", "source": str(bench)}],
        artifacts=str(tmp_path / "artifacts"),
    )
    result = CliRunner().invoke(app, ["run", str(config), "--results", str(tmp_path / "results")])
    assert result.exit_code == 2
    assert "variant 'bad': build.drop_map: layer 0: expert ids [99] are outside 0..7" in result.output  # before Ray
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


def test_a_linked_config_builds_from_its_real_folder(tmp_path, tiny_gemma4, local_ray):
    """The README's `omk-ray run configs/demo.yaml`: configs/ holds a link, the build's `base: model`
    lies next to the file it links to, and the build step finds it there."""
    import shutil

    from omk_ray.farm.builds import build_variants

    real = tmp_path / "assets"
    real.mkdir()
    shutil.copytree(tiny_gemma4, real / "model")
    (real / "grid.yaml").write_text(
        "variants:\n  - {name: arm, engine: transformers, build: {base: model, drop_map: {'0': [1], '1': [2]}}}\n"
        "benches:\n  - {name: copy, kind: jsonl, source: bench.jsonl}\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "grid.yaml").symlink_to(real / "grid.yaml")
    paths = build_variants(load_grid(tmp_path / "configs" / "grid.yaml"), tmp_path / "artifacts")
    assert json.loads((Path(paths["arm"]) / "config.json").read_text())["num_experts"] == 7
    assert Path(paths["arm"]).parent == tmp_path / "artifacts"
