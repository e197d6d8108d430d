"""Importing lm-eval / LCB logs (CLI and API) and rescoring stored responses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.bench_data import LOGS, small_gsm8k_log
from omk_ray.benches.jsonl import JsonlBench
from omk_ray.cli import app
from omk_ray.config import load_grid
from omk_ray.results.importers import LogImportError, import_lmeval
from omk_ray.results.rescore import RescoreError, rescore
from omk_ray.results.store import ResultsStore

CANONICAL = Path(__file__).resolve().parents[2] / "configs" / "canonical.yaml"
runner = CliRunner()


def scores(root: Path) -> dict[str, dict]:
    return {r["doc_id"]: {**r, "metrics": dict(r["metrics"])} for r in ResultsStore(root).read().to_pylist()}


def test_rescore_counts_changed_samples_and_keeps_previous_scores(tmp_path):
    log = small_gsm8k_log(tmp_path / "log", docs=10, wrong=(0, 3, 7))
    root = tmp_path / "results"
    [report] = import_lmeval(log, "gpt-oss", root)
    assert report.reproduced  # the doctored log agrees with its doctored results file
    before = scores(root)
    shard = next(root.glob("samples/gpt-oss/gsm8k/part-*.parquet"))

    [dry] = rescore(root, dry_run=True)
    assert (dry.bench, dry.rows, dry.changed, dry.shards) == ("gsm8k", 10, 3, 0)
    assert scores(root) == before

    [first] = rescore(root, bench="gsm8k")
    assert (first.changed, first.errors, first.shards) == (3, 0, 1)
    assert first.scorer_versions == {"lm-eval-0.4.11:gsm8k@3.0:5-shot"}  # the log was asked 5-shot
    after = scores(root)
    for doc_id, row in after.items():
        old = before[doc_id]
        assert row["metrics"]["score@lm-eval-0.4.11:gsm8k@3.0:5-shot"] == old["score"]
        assert row["scorer_version"].startswith("lm-eval-0.4.") and row["scorer_version"].endswith(":gsm8k@3.0:5-shot")
        assert (row["score"] != old["score"]) == (doc_id in {"0", "3", "7"})
        assert row["metrics"]["tokens_missing"] == 1.0
    assert list(root.glob("samples/gpt-oss/gsm8k/part-*.parquet")) == [shard]  # rewritten in place

    [second] = rescore(root)  # same scorer again: nothing changes, nothing is rewritten
    assert (second.changed, second.shards) == (0, 0)
    assert scores(root) == after


def test_import_with_the_canonical_grid_names_benches_and_ids(tmp_path):
    grid = load_grid(CANONICAL)
    reports = {r.task: r for r in import_lmeval(LOGS, "gpt-oss", tmp_path, grid)}
    assert {t: r.bench for t, r in reports.items()} == {
        "aime24_chat": "aime24", "arc_challenge_full_chat": "arc_challenge", "gsm8k": "gsm8k",
        "humaneval_chat": "humaneval", "ifeval": "ifeval", "minerva_math500": "math500"}  # the farm's humaneval
    rows = ResultsStore(tmp_path).read().to_pylist()
    ids = {r["bench"]: set() for r in rows}
    for r in rows:
        ids[r["bench"]].add(r["doc_id"])
    assert "2024-II-4" in ids["aime24"] and "Mercury_7175875" in ids["arc_challenge"] and "1000" in ids["ifeval"]
    assert ids["humaneval"] == {f"HumanEval/{i}" for i in range(164)}  # the farm's ids: the rows pair
    spec = json.loads((tmp_path / "benches" / "math500.json").read_text())["spec"]
    assert spec["options"]["primary_metric"] == "math_verify,none"
    assert json.loads((tmp_path / "benches" / "humaneval.json").read_text())["spec"]["kind"] == "program_tests"

    again = import_lmeval(LOGS / "gsm8k_100", "gpt-oss", tmp_path, grid)  # importing again replaces, not adds
    assert again[0].rows == 100
    assert ResultsStore(tmp_path).read().num_rows == len(rows)
    assert len(list(tmp_path.glob("samples/gpt-oss/gsm8k/part-*.parquet"))) == 1


def test_import_and_rescore_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("OMK_RAY_DATA_CACHE", str(tmp_path / "empty-cache"))  # LiveCodeBench's tests: not here
    log = small_gsm8k_log(tmp_path / "log", docs=6, wrong=(1,), flip="strict-match")
    root = tmp_path / "results"
    done = runner.invoke(app, ["import", "lm-eval", str(log), "--variant", "base", "--results", str(root),
                               "--primary-metric", "gsm8k=exact_match,strict-match"])
    assert done.exit_code == 0, done.output
    assert "exact_match,flexible-extract" in done.output and "yes" in done.output
    row = ResultsStore(root).read().to_pylist()[0]
    assert row["score"] == dict(row["metrics"])["exact_match,strict-match"]

    done = runner.invoke(app, ["import", "lcb", str(LOGS / "lcb_medium_55" / "lcb_result.samples.jsonl"),
                               "--variant", "base", "--results", str(root)])
    assert done.exit_code == 0, done.output
    assert "0.8909" in done.output

    done = runner.invoke(app, ["rescore", str(root), "--bench", "gsm8k"])
    assert done.exit_code == 0, done.output
    assert re.search(r"gsm8k\s*│\s*base\s*│\s*6\s*│\s*1\s*│", done.output), done.output  # bench, variant, samples, changed
    [gsm8k] = rescore(root, bench="gsm8k")
    assert gsm8k.changed == 0

    # The imported LCB rows are rescored by the livecodebench bench, whose tests need its data:
    # asked alone, that is an error; among all benches, it is skipped with the reason.
    done = runner.invoke(app, ["rescore", str(root), "--bench", "lcb_medium"])
    assert done.exit_code == 2 and "lcb_medium" in done.output, done.output
    reports = {r.bench: r for r in rescore(root)}
    assert reports["gsm8k"].skipped is None and reports["gsm8k"].rows == 6
    assert "lcb_medium" in reports["lcb_medium"].skipped
    done = runner.invoke(app, ["rescore", str(root)])
    assert done.exit_code == 1 and "skipped lcb_medium (base)" in done.output


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(LogImportError, match="no lm-eval samples"):
        import_lmeval(tmp_path, "v", tmp_path / "r")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "samples_gsm8k_2026-01-01T00-00-00.000000.jsonl").write_text('{"doc_id": 0}\n')
    with pytest.raises(LogImportError, match="no matching results_2026-01-01T00-00-00.000000.json"):
        import_lmeval(broken, "v", tmp_path / "r")
    (broken / "results_2026-01-01T00-00-00.000000.json").write_text(json.dumps({"results": {"gsm8k": {}}}))
    with pytest.raises(LogImportError, match="has no 'doc'"):
        import_lmeval(broken, "v", tmp_path / "r")
    with pytest.raises(RescoreError, match="no samples"):
        rescore(tmp_path / "empty")
    done = runner.invoke(app, ["import", "lm-eval", str(tmp_path / "nope"), "--variant", "v", "--results", str(tmp_path)])
    assert done.exit_code == 2 and "no such folder" in done.output


class FragileBench(JsonlBench):
    """A jsonl bench whose scorer chokes on one answer (as a real scorer may on a hostile completion)."""

    scorer_version = "fragile-2"

    def score(self, doc, completion):
        if completion.text == "boom":
            raise ValueError("cannot parse 'boom'")
        return super().score(doc, completion)


def stored_rows(bench: str, answers: dict[str, str]) -> list[dict]:
    return [{"variant": "v", "variant_fingerprint": "fp", "bench": bench, "doc_id": d, "repeat": 0, "recipe_hash": "r",
             "response": text, "score": 0.0, "correct": False, "scorer_version": "fragile-1", "metrics": {}}
            for d, text in answers.items()]


@pytest.fixture
def fragile(tmp_path):
    from omk_ray.benches import BENCHES, register_bench
    from omk_ray.results.schema import rows_to_table

    register_bench("fragile", f"{__name__}:FragileBench")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "prompt": "p", "target": str(i)}) + "\n" for i in range(4)))
    config = tmp_path / "grid.yaml"
    config.write_text(f"variants: [{{name: v, model: m, engine: echo}}]\nbenches: [{{name: f, kind: fragile, source: {data}}}]\n")
    store = ResultsStore(tmp_path / "results")
    shards = [store.write_shard(rows_to_table(stored_rows("f", {"d0": "0", "d1": "boom"})), "v", "f", "u1"),
              store.write_shard(rows_to_table(stored_rows("f", {"d2": "2", "d3": "wrong"})), "v", "f", "u2")]
    yield load_grid(config), store, shards
    BENCHES.pop("fragile")


def test_rescore_survives_a_scorer_that_raises_on_one_row(fragile):
    grid, store, shards = fragile
    [report] = rescore(store.root, grid=grid)
    # d1's score goes from 0.0 to null: a scorer error is not a wrong answer
    assert (report.rows, report.changed, report.errors, report.shards, report.skipped) == (4, 3, 1, 2, None)
    got = {r["doc_id"]: (r["score"], r["correct"], r["error"], r["scorer_version"]) for r in store.read().to_pylist()}
    assert got == {"d0": (1.0, True, None, "fragile-2"),
                   "d1": (None, None, "scorer error: ValueError: cannot parse 'boom'", "fragile-2"),
                   "d2": (1.0, True, None, "fragile-2"), "d3": (0.0, False, None, "fragile-2")}


def test_rescore_writes_a_bench_only_when_it_scored_completely(fragile):
    """A doc the bench no longer has, in the second shard: the bench is skipped and the first shard,
    scored already, is not rewritten either."""
    from omk_ray.results.schema import rows_to_table

    grid, store, shards = fragile
    shards[1].unlink()
    store.write_shard(rows_to_table(stored_rows("f", {"d2": "2", "gone": "x"})), "v", "f", "u2")
    before = {p: p.read_bytes() for p in store.shard_paths()}
    [report] = rescore(store.root, grid=grid)
    assert report.skipped == "bench 'f': doc 'gone' is not in the bench's data" and report.shards == 0
    assert {p: p.read_bytes() for p in store.shard_paths()} == before
    with pytest.raises(RescoreError, match="doc 'gone'"):
        rescore(store.root, bench="f", grid=grid)
    assert {p: p.read_bytes() for p in store.shard_paths()} == before


def test_an_import_records_its_shot_count_and_compare_refuses_to_pair_other_counts(tmp_path):
    """The users' gsm8k log was asked 5-shot (lm-eval's `n-shot`): its rows say so, as the farm's few-shot
    rows do, and a zero-shot log of the same bench does not pair with it."""
    from omk_ray.analysis.compare import AnalysisError, CompareOptions, compare

    five = small_gsm8k_log(tmp_path / "five", docs=10)
    zero = small_gsm8k_log(tmp_path / "zero", docs=10, wrong=(1, 2))
    results_file = next(zero.glob("results_*.json"))
    results = json.loads(results_file.read_text())
    assert results["n-shot"] == {"gsm8k": 5}
    results["n-shot"] = {"gsm8k": 0}
    results_file.write_text(json.dumps(results))
    root = tmp_path / "results"
    import_lmeval(five, "base", root)
    import_lmeval(zero, "pruned", root)
    versions = {(r["variant"], r["scorer_version"]) for r in ResultsStore(root).read().to_pylist()}
    assert versions == {("base", "lm-eval-0.4.11:gsm8k@3.0:5-shot"), ("pruned", "lm-eval-0.4.11:gsm8k@3.0")}
    with pytest.raises(AnalysisError, match="gsm8k: baseline base was asked 5-shot but pruned 0-shot"):
        compare(root, CompareOptions(baseline="base"))

    [report] = rescore(root, bench="gsm8k", variants=["base"])  # rebuilt as imported: the same version, nothing to do
    assert (report.changed, report.scorer_versions) == (0, {"lm-eval-0.4.11:gsm8k@3.0:5-shot"})

    results["n-shot"] = {"gsm8k": "five"}
    results_file.write_text(json.dumps(results))
    with pytest.raises(LogImportError, match="n-shot of task 'gsm8k' is 'five', not a count of examples"):
        import_lmeval(zero, "other", root)
