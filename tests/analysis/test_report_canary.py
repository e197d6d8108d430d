"""The canary in the report: a variant stopped by its canary is shown as stopped, with its reasons,
never as a score; the baseline's headline score is its score on the full bench."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import hf_variant, write_grid
from helpers.samples import bench_rows, grid_config, write_store
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.html import to_html
from omk_ray.analysis.markdown import to_markdown
from omk_ray.analysis.report import write_report
from omk_ray.analysis.samples import AnalysisError
from omk_ray.cli import app

runner = CliRunner()
REASON = "toy: every score is exactly 0 (8 of 8): the model or the scorer is broken"


def demo_like_store(root, on_fail: str = "skip"):
    """The demo's shape: a baseline at 90% on 40 problems (its first 8 all right), an arm run in full,
    and an arm (sorted first, like the demo's `geomean`) whose canary failed on the first 8."""
    base = [i not in (10, 20, 25, 30) for i in range(40)]  # 36 / 40
    rows = bench_rows("toy", "toy", base) + bench_rows("max", "toy", [i < 30 for i in range(40)])
    rows += bench_rows("geomean", "toy", [False] * (8 if on_fail == "skip" else 40))
    config = grid_config([{"name": n} for n in ("toy", "max", "geomean")], ["toy"])
    config["farm"] = {"canary": {"enabled": True, "docs": 8, "on_fail": on_fail}}
    store = write_store(root, rows, [config])
    run = store.runs()[0]
    manifest = run.manifest()
    manifest["canary"] = {
        "toy": {"passed": True, "reasons": [], "benches": []},
        "max": {"passed": True, "reasons": [], "benches": []},
        "geomean": {"passed": False, "reasons": [REASON], "benches": []},
    }
    run.write_manifest(manifest)
    return store


def test_a_canary_stopped_arm_is_shown_as_stopped_and_the_baseline_column_is_its_full_bench(tmp_path):
    demo_like_store(tmp_path / "results")
    c = compare(tmp_path / "results", CompareOptions(baseline="toy", resamples=200))
    markdown = to_markdown(c)
    # the summary table: the baseline on all 40 problems (not on the 8 it shares with geomean)
    assert "| toy (40) | 90.00% | stopped by canary | 75.00% (−15.00pp) |" in markdown
    assert "| Bench (n) | toy (all n) | geomean | max |" in markdown
    assert f"geomean stopped by its canary before its full run ({REASON})" in markdown
    assert "−100.00pp" not in markdown and "| 0.00%" not in markdown  # never as a score
    # tables: no paired statistics for the stopped arm; its headline says stopped, with the reasons
    assert {r["variant"] for r in c.rows("scoreboard")} == {"max"}
    assert {r["variant"] for r in c.rows("agreement")} == {"max"}
    assert {r["variant"] for r in c.rows("tokens")} == {"toy", "max"}
    head = {r["variant"]: r for r in c.rows("headline")}
    assert head["toy"]["n"] == 40 and head["toy"]["score"] == pytest.approx(90.0) and head["toy"]["role"] == "baseline"
    assert head["toy"]["stderr_pp"] == pytest.approx(100 * (0.9 * 0.1 * 40 / 39) ** 0.5 / 40 ** 0.5)
    assert head["geomean"]["status"] == "stopped by canary" and head["geomean"]["n"] == 8
    assert head["geomean"]["canary_reasons"] == [REASON] and head["geomean"]["score"] != head["geomean"]["score"]
    assert c.rows("scoreboard")[0]["canary"] == "passed"
    # the HTML and summary.json say the same
    assert "stopped by its canary" in to_html(c, plots={})
    paths = write_report(c, tmp_path / "report", html=False)
    summary = json.loads(paths["summary"].read_text())
    assert summary["canary"]["geomean"] == {"passed": False, "stopped": True, "reasons": [REASON], "run_id": "run-0"}
    stopped = [r for r in summary["headline"] if r["variant"] == "geomean"]
    assert stopped[0]["status"] == "stopped by canary" and stopped[0]["score"] is None


def test_a_failed_canary_whose_run_continued_is_scored_and_marked(tmp_path):
    demo_like_store(tmp_path / "results", on_fail="continue")
    c = compare(tmp_path / "results", CompareOptions(baseline="toy", resamples=200))
    markdown = to_markdown(c)
    assert "| toy (40) | 90.00% | 0.00% (−90.00pp) | 75.00% (−15.00pp) |" in markdown
    assert f"geomean failed its canary (the run continued) ({REASON})" in markdown
    assert {r["variant"]: r["canary"] for r in c.rows("scoreboard")} == {"geomean": "failed (run continued)",
                                                                         "max": "passed"}


def test_a_partly_covered_arm_says_on_which_problems(tmp_path):
    rows = bench_rows("base", "b", [True] * 30 + [False] * 10) + bench_rows("half", "b", [True] * 10)
    rows += bench_rows("full", "b", [True] * 40)
    write_store(tmp_path, rows)
    markdown = to_markdown(compare(tmp_path, CompareOptions(baseline="base", resamples=200)))
    assert "| b (40) | 75.00% | 100.00% (+25.00pp) | 100.00% (0.00pp) on 10 |" in markdown
    assert "n: the problems half shares with base; both columns are scores on those, so base's can differ " \
           "from its full-bench score: b (10 of 40)." in markdown


def test_a_baseline_stopped_by_its_canary_is_refused(tmp_path):
    store = demo_like_store(tmp_path / "results")
    run = store.runs()[0]
    manifest = run.manifest()
    manifest["canary"]["toy"] = {"passed": False, "reasons": ["toy: 8 of 8 answers empty"], "benches": []}
    run.write_manifest(manifest)
    with pytest.raises(AnalysisError, match="the baseline 'toy' was stopped by its canary .*8 of 8 answers empty"):
        compare(tmp_path / "results", CompareOptions(baseline="toy"))


@pytest.mark.slow
def test_a_real_grid_with_a_canary_stopped_arm(tmp_path, local_ray):
    """The demo's wrong baseline column, on a small grid of its own: the shipped toy (transformers) as the
    baseline on 24 problems (4 `add` it gets right, then 20 `mul`, its weakest class), a copy of it that
    passes, and an arm that answers with the prompt (the `echo` engine) and fails its canary on the first
    4. That arm sorts first, so the old summary showed the toy's score on those 4 problems instead of its
    full-bench score."""
    from omk_ray.config import load_grid
    from omk_ray.farm.runner import run_grid
    from omk_ray.toy import data as toy_data

    toy = toy_data.shipped("model")
    problems = toy_data.bench_rows()
    chosen = [p for p in problems if p["subdomain"] == "add"][:4] + [p for p in problems if p["subdomain"] == "mul"][:20]
    bench = toy_data.write_jsonl(tmp_path / "toy.jsonl", chosen)
    grid = load_grid(write_grid(
        tmp_path / "grid.yaml",
        [hf_variant("toy", toy, batch_size=32), hf_variant("toy-copy", toy, batch_size=32),
         {"name": "a-echo", "model": "echo", "engine": "echo"}],
        [{"name": "toy", "kind": "jsonl", "source": str(bench)}],
        recipe={"max_gen_toks": 12}, farm={"canary": {"enabled": True, "docs": 4}},
    ))
    summary = run_grid(grid, tmp_path / "results", show_progress=False)
    assert summary.status == "finished_with_skips" and summary.skipped == 20

    report = runner.invoke(app, ["compare", str(tmp_path / "results"), "--baseline", "toy", "--out", str(tmp_path / "r"),
                                 "--resamples", "200", "--no-html"])
    assert report.exit_code == 0, report.output
    head = {r["variant"]: r for r in json.loads((tmp_path / "r" / "summary.json").read_text())["headline"]}
    full = head["toy"]["score"]
    assert full < 75  # the old column: 100.00%, the toy on the 4 `add` problems it shared with the random arm
    assert head["toy"]["n"] == 24 and head["a-echo"]["status"] == "stopped by canary" and head["a-echo"]["n"] == 4
    assert f"| toy (24) | {full:.2f}% | stopped by canary | {full:.2f}% (0.00pp) |" in report.output
    assert "a-echo stopped by its canary before its full run (toy: every score is exactly 0" in report.output

    status = runner.invoke(app, ["status", str(tmp_path / "results")])
    assert status.exit_code == 0, status.output
    assert "canary stopped a-echo" in status.output and "every score is exactly 0" in status.output
    assert "passed" in status.output


def test_an_arm_stopped_by_the_stages_shows_its_stop_and_the_engine_time_saved_on_the_card_and_report(tmp_path):
    """`mean` stopped at the first look (10 of 40 problems, all wrong): card and report say where, with the
    bound; its score and Δ are on its prefix; the engine time (GPU hours, from the manifest's engines)
    spent is set against a full evaluation (its time per sample x the baseline's 40)."""
    from omk_ray.analysis.card import to_card

    rows = bench_rows("toy", "toy", [True] * 40) + bench_rows("max", "toy", [True] * 40)
    rows += bench_rows("mean", "toy", [False] * 10)
    config = grid_config([{"name": n} for n in ("toy", "max", "mean")], ["toy"])
    store = write_store(tmp_path / "results", rows, [config])
    run = store.runs()[0]
    manifest = run.manifest()
    text = "stopped at 10/40: Δ <= -62 pp (observed -100.0 pp), 95% exact (canary, bench toy)"
    manifest["stops"] = {"mean": {"arm": "mean", "stage": "canary", "look": 0, "rule": "canary", "target": "toy",
                                  "n": 10, "of": 40, "delta_pp": -100.0, "upper_pp": -62.0, "text": text}}
    manifest["engines"] = [{"name": "e1", "variant": "toy", "alive_s": 3600, "samples": 40, "gpus": 1},
                           {"name": "e2", "variant": "max", "alive_s": 3600, "samples": 40, "gpus": 1},
                           {"name": "e3", "variant": "mean", "alive_s": 900, "samples": 10, "gpus": 1}]
    run.write_manifest(manifest)
    c = compare(tmp_path / "results", CompareOptions(baseline="toy", resamples=200))
    assert list(c.stops) == ["mean"] and c.stops["mean"].n == 10
    assert (c.cost.spent, c.cost.full, c.cost.unit) == (2.25, 3.0, "GPU hours") and c.cost.saved == 0.25
    line = f"mean stopped early (farm.stages, run {run.run_id}) at canary: {text}; its scores are on the problems it answered"
    saved = "Engine time: 2.25 GPU hours spent against 3 for a full evaluation of every variant compared (25% saved"
    for shown in (to_card(c), to_markdown(c)):
        assert line in shown and saved in shown
    later = store.new_run("run-1")
    later.folder.mkdir(parents=True)
    later.write_manifest({**manifest, "run_id": "run-1", "stops": {}, "engines": [], "resumed_stopped": ["mean"]})
    assert compare(tmp_path / "results", CompareOptions(baseline="toy", resamples=200)).stops == {}
