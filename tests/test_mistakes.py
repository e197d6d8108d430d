"""Every user mistake ends in one sentence and exit code 2: no traceback, no validator jargon."""

from __future__ import annotations

import pytest
from helpers import write_grid
from helpers.samples import bench_rows, grid_config, write_store
from typer.testing import CliRunner

from omk_ray.cli import app

runner = CliRunner()


@pytest.fixture
def results(tmp_path):
    config = grid_config([{"name": "base"}, {"name": "arm"}], ["b"])
    rows = bench_rows("base", "b", [True, False, True, True]) + bench_rows("arm", "b", [True, False, False, True])
    write_store(tmp_path / "results", rows, [config])
    return tmp_path / "results"


def one_sentence(*args, problems: int = 0) -> str:
    """The error's sentence; with `problems`, the sentence of a listed problem (`GRID: cannot run:` then one a line)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 + problems and lines[0].startswith("error: "), result.output
    for jargon in ("Traceback", "pydantic", "validation error", "Value error", "type=", "input_value"):
        assert jargon not in result.output
    return lines[-1].strip() if problems else lines[0].removeprefix("error: ")


def test_compare_with_an_unknown_token_statistic(results, tmp_path):
    assert one_sentence("compare", results, "-b", "base", "--out", tmp_path / "r", "--token-stats", "median,avg") == (
        "--token-stats: unknown token statistic 'avg': use pN (0-100, e.g. p10, p95), median, mean, min, max or total")


def test_compare_with_an_unknown_correction(results, tmp_path):
    assert one_sentence("compare", results, "-b", "base", "--out", tmp_path / "r", "--correction", "holm") == (
        "--correction 'holm': must be 'grid', 'variant' or 'none'")


def test_compare_with_an_unknown_bench(results, tmp_path):
    assert one_sentence("compare", results, "-b", "base", "--out", tmp_path / "r", "--bench", "nope") == (
        f"--bench nope: no such bench in {results} (benches there: b)")


def test_route_with_a_missing_model(results):
    assert one_sentence("route", results, "--variant", "base", "--model", "/missing") == (
        "model /missing: no such checkpoint folder (a hub id is NAME or ORG/NAME)")


def test_a_bench_line_without_a_prompt(tmp_path):
    bench = tmp_path / "b.jsonl"
    bench.write_text('{"prompt": "1+1?", "target": "2"}\n{"question": "2+2?", "target": "4"}\n')
    grid = write_grid(tmp_path / "grid.yaml", [{"name": "echo", "model": "echo", "engine": "echo"}],
                      [{"name": "b", "kind": "jsonl", "source": str(bench)}])
    message = one_sentence("plan", grid, problems=1)
    assert message == (f"bench 'b': {bench}:2: a problem needs `prompt` (text) or `messages` (chat); this line has "
                            "neither (its keys: question, target)")
