"""The canary: structural rules over sample rows, and `omk-ray canary` generating them for real."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers.samples import sample
from omk_ray.analysis.canary import CanaryRules, evaluate_canary
from omk_ray.cli import app


def healthy(bench: str = "gsm8k", n: int = 20) -> list[dict]:
    return [sample("v4", bench, f"d{i}", i % 2 == 0, response=f"Step by step: {i} + {i} = {2 * i}. The answer is {2 * i}.",
                   completion_tokens=20 + i) for i in range(n)]


def test_healthy_samples_pass():
    result = evaluate_canary(healthy() + healthy("arc"))
    assert result.passed and result.reasons == []
    assert [b.bench for b in result.benches] == ["arc", "gsm8k"]
    assert result.benches[0].p10_tokens == pytest.approx(21.9)


def test_empty_rate_over_five_percent_fails():
    rows = healthy()
    rows[4].update(response="", completion_tokens=0)
    assert evaluate_canary(rows).passed  # 1 of 20 = 5%: allowed
    rows[9].update(response="   ", completion_tokens=1)
    result = evaluate_canary(rows)
    assert not result.passed
    assert result.reasons == ["gsm8k: 2 of 20 answers empty or failed (10% > 5%): d4, d9"]


def test_engine_errors_count_as_empty():
    rows = healthy()
    for r in rows[:2]:
        r.update(finish_reason="error", error="prompt too long", response="")
    assert "2 of 20 answers empty or failed" in evaluate_canary(rows).reasons[0]


def test_marker_leak_fails():
    rows = healthy()
    rows[3]["response"] = "<|channel>thought\n<channel|>The answer is 6."
    result = evaluate_canary(rows)
    assert result.reasons == ["gsm8k: reasoning markers leak into 1 answers: d3"]


def test_p10_length_under_the_bench_floor_fails():
    rows = healthy()
    assert evaluate_canary(rows, CanaryRules(p10_floors={"gsm8k": 21})).passed
    result = evaluate_canary(rows, CanaryRules(p10_floors={"gsm8k": 30}))
    assert result.reasons == ["gsm8k: p10 completion length 22 tokens is under the floor of 30"]
    # no token counts stored: chars / 4 stands in
    for r in rows:
        r["completion_tokens"] = None
    assert evaluate_canary(rows, CanaryRules(min_p10_tokens=5)).passed


def test_degenerate_loop_fails():
    rows = healthy()
    rows[5].update(response="l'alimentation de " * 300, finish_reason="length")
    result = evaluate_canary(rows)
    assert result.reasons == ["gsm8k: degenerate loop in 1 outputs: d5"]


def test_all_zero_scores_fail():
    rows = healthy()
    for r in rows:
        r.update(score=0.0, correct=False)
    result = evaluate_canary(rows)
    assert result.reasons == ["gsm8k: every score is exactly 0 (20 of 20): the model or the scorer is broken"]


def test_no_rows_fail():
    assert not evaluate_canary([]).passed


@pytest.mark.slow
def test_canary_command_generates_and_gates(tmp_path, tiny_gemma4, local_ray):
    """A real run: an echo stand-in that answers right passes; a tiny random model fails, with reasons;
    `compare` then reads the samples both canaries left in the results folder."""
    bench = tmp_path / "echo.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"{100 + i} is the answer", "target": f"{100 + i} is the answer"}) + "\n"
                             for i in range(12)))
    config = tmp_path / "grid.yaml"
    config.write_text(json.dumps({
        "name": "canary",
        "recipe": {"max_gen_toks": 8},
        "variants": [
            {"name": "echo", "model": "echo", "engine": "echo"},
            {"name": "tiny", "model": str(tiny_gemma4), "engine": "transformers",
             "engine_args": {"dtype": "float32", "max_model_len": 256}},
        ],
        "benches": [{"name": "echo-bench", "source": str(bench)}],
    }))
    runner = CliRunner()
    results = tmp_path / "results"
    ok = runner.invoke(app, ["canary", str(config), "--variant", "echo", "--limit", "4", "--results", str(results)])
    assert ok.exit_code == 0, ok.output
    assert "canary PASSED" in ok.output and "echo-bench: n=4 empty=0" in ok.output
    canary_files = list((results / "runs").glob("*/canary.json"))
    assert len(canary_files) == 1 and json.loads(canary_files[0].read_text())["passed"] is True

    floor = runner.invoke(app, ["canary", str(config), "-v", "echo", "--limit", "4", "--results", str(results),
                                "--floor", "echo-bench=50"])
    assert floor.exit_code == 1 and "under the floor of 50" in floor.output  # judged from the stored samples

    broken = runner.invoke(app, ["canary", str(config), "--variant", "tiny", "--limit", "4", "--results", str(results)])
    assert broken.exit_code == 1, broken.output
    assert "canary FAILED" in broken.output and "every score is exactly 0" in broken.output

    # the farm's own rows and manifests feed `compare` as they are: tiny was stopped by its canary, never scored
    report = runner.invoke(app, ["compare", str(results), "--baseline", "echo", "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "**tiny**: tiny stopped by its canary before its full run (echo-bench: " in report.output
    assert "every score is exactly 0" in report.output and "−100.00pp" not in report.output

    unknown = runner.invoke(app, ["canary", str(config), "--variant", "nope"])
    assert unknown.exit_code == 2 and "no variant 'nope'" in unknown.output
