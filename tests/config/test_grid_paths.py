"""A grid's local paths (imatrix, calibration, sources, builds) are its folder's, whatever the working
directory; `plan` refuses a grid whose files are missing, in one sentence."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from omk_ray.cli import app
from omk_ray.config import load_grid
from omk_ray.demo import GGUF_CONFIG

runner = CliRunner()
TOY = GGUF_CONFIG.parent


def gguf_copy(tmp_path: Path) -> Path:
    """The GGUF demo grid and the files it names, copied into a folder of its own."""
    folder = tmp_path / "grid"
    shutil.copytree(TOY, folder, ignore=shutil.ignore_patterns("model"))
    (folder / "model").symlink_to(TOY / "model")  # the weights need no copy
    return folder / GGUF_CONFIG.name


def test_the_gguf_demo_grid_reads_its_files_from_its_folder_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the grid's folder: nothing of the grid lies here
    grid = load_grid(GGUF_CONFIG)
    builds = {v.name: v.build for v in grid.variants if v.build}
    assert builds["toy-q8"].gguf.imatrix == str(TOY / "calibration.txt")
    assert builds["max-q8"].gguf.imatrix == str(TOY / "calibration.txt")
    assert builds["max"].profile_prompts == str(TOY / "toy_profile_prompts.jsonl")
    assert {b.base for b in builds.values()} == {str(TOY / "model")}
    assert grid.benches[0].source == str(TOY / "bench.jsonl")


def test_plan_of_the_gguf_demo_grid_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plan", str(GGUF_CONFIG)])
    assert result.exit_code == 0, result.output
    assert "6 variants" in result.output and "max-q8: llamacpp" in result.output


def test_the_build_of_a_gguf_arm_finds_its_calibration_text_from_another_working_directory(tmp_path, monkeypatch):
    from omk_ray.variants.artifacts import resolve_build

    monkeypatch.chdir(tmp_path)
    build = next(v.build for v in load_grid(GGUF_CONFIG).variants if v.name == "toy-q8")
    resolved = resolve_build(build, tmp_path / "artifacts")  # no base folder: what a Ray build task does
    assert resolved.spec.gguf.imatrix == str(TOY / "calibration.txt")
    assert resolved.spec.base == str(TOY / "model")


def test_plan_names_a_missing_calibration_file_in_the_grids_folder(tmp_path, monkeypatch):
    config = gguf_copy(tmp_path)
    (config.parent / "calibration.txt").unlink()
    monkeypatch.chdir(TOY)  # a calibration.txt lies here: it must not be the one used
    result = runner.invoke(app, ["plan", str(config)])
    assert result.exit_code == 2
    missing = config.parent.resolve() / "calibration.txt"
    lines = [line.strip() for line in result.output.splitlines() if "imatrix" in line]
    assert lines == [f"variant '{name}': build.gguf.imatrix: file {missing} not found" for name in ("toy-q8", "max-q8")]
    assert "Traceback" not in result.output


def test_a_hub_id_stays_a_hub_id_and_a_dotted_path_is_the_grids(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text("variants: [{name: hub, model: google/gemma-4-26b}, {name: arm, build: {base: "
                      "google/gemma-4-26b, drop_map: maps/drop.json}}]\n"
                      "benches: [{name: b, kind: jsonl, source: ./gone.jsonl}]\n")
    grid = load_grid(config)
    assert grid.variants[0].model == "google/gemma-4-26b"
    assert grid.variants[1].build.base == "google/gemma-4-26b"
    assert grid.benches[0].source == str(tmp_path / "gone.jsonl")
    assert grid.variants[1].build.drop_map == str(tmp_path / "maps" / "drop.json")  # missing, still the grid's


@pytest.mark.slow
def test_the_gguf_q8_arm_builds_from_another_working_directory(tmp_path, monkeypatch):
    from omk_ray.llamacpp.tools import ToolsMissing, find_tools
    from omk_ray.variants.artifacts import ensure_variant

    try:
        find_tools()
    except ToolsMissing as err:
        pytest.skip(str(err))  # `make llamacpp` builds them
    monkeypatch.chdir(tmp_path)
    build = next(v.build for v in load_grid(GGUF_CONFIG).variants if v.name == "toy-q8")
    folder = ensure_variant(build, tmp_path / "artifacts")
    assert (folder / "model-Q8_0.gguf").is_file() and (folder / "imatrix.gguf").is_file()
