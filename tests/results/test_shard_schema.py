"""Every shard is checked against the sample schema on read: a shard with missing columns, another
schema, wrong types or rows keyed to another folder is named by doctor, status, run and compare,
never counted, and moved aside by `doctor --quarantine`."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import write_bench, write_grid
from typer.testing import CliRunner

from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.samples import AnalysisError
from omk_ray.cli import app
from omk_ray.config import grid_to_dict, load_grid
from omk_ray.farm.planner import make_plan
from omk_ray.results.schema import LATER_COLUMNS, rows_to_table
from omk_ray.results.store import ResultsStore, UnreadableResults

DOCS = [f"q{i}" for i in range(6)]
A_SCORES = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # a: 50%; b: every doc right (100%)
TEN = ["run_id", "cohort", "variant", "variant_fingerprint", "bench", "doc_id", "repeat", "recipe_hash", "score",
       "started_at"]
LATER = datetime(2026, 6, 1, tzinfo=timezone.utc)  # newer than the good rows: would win every key if read


@pytest.fixture
def folder(tmp_path):
    """Variants a (3 of 6 right) and b (6 of 6) on bench q, stored as a farm run stores them."""
    config = write_grid(tmp_path / "grid.yaml", [{"name": v, "engine": "echo", "model": "m"} for v in ("a", "b")],
                        [{"name": "q", "kind": "jsonl", "source": str(write_bench(tmp_path / "q.jsonl", 6))}])
    grid = load_grid(config)
    plan = make_plan(grid)
    results = tmp_path / "results"
    store = ResultsStore(results)
    for variant, scores in (("a", A_SCORES), ("b", [1.0] * 6)):
        work = next(w for w in plan.work if w.variant == variant)
        rows = [good_row(variant, plan.fingerprints[variant], work.recipe, d, s) for d, s in zip(DOCS, scores)]
        store.write_shard(rows_to_table(rows), variant, "q", "u1")
    store.new_run("20260101T000000Z-aaaaaa").write_manifest(
        {"run_id": "20260101T000000Z-aaaaaa", "status": "finished", "started_at": "2026-01-01T00:00:00",
         "config": grid_to_dict(grid), "variants": ["a", "b"]})
    return config, results, good_row("b", plan.fingerprints["b"], plan.work[0].recipe, "q0", 0.0)


def good_row(variant, fingerprint, recipe, doc, score) -> dict:
    return {"run_id": "r1", "cohort": recipe.cohort, "variant": variant, "variant_fingerprint": fingerprint,
            "bench": "q", "doc_id": doc, "repeat": 0, "recipe_hash": recipe.hash, "score": score,
            "correct": score >= 1.0, "metrics": {"exact_match": score}, "response": doc, "completion_tokens": 3,
            "started_at": datetime(2026, 5, 14, tzinfo=timezone.utc)}


def planted(results, table: pa.Table, variant: str = "b"):
    path = results / "samples" / variant / "q" / "part-planted-00000000.parquet"
    pq.write_table(table, path)
    return path


def ten_columns(template: dict) -> pa.Table:
    """10 of the schema's columns, keyed onto b's docs, score 0, started later than b's rows."""
    rows = [{**template, "doc_id": d, "score": 0.0, "started_at": LATER} for d in DOCS]
    return rows_to_table(rows).select(TEN)


def wrong_types(template: dict) -> pa.Table:
    """Every column present, but score and repeat stored as text."""
    table = rows_to_table([{**template, "doc_id": d, "score": 0.0, "started_at": LATER} for d in DOCS])
    for name in ("score", "repeat"):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pa.array([str(v) for v in table[name].to_pylist()]))
    return table


def other_schema(_template: dict) -> pa.Table:
    return pa.table({"variant": ["b"], "bench": ["q"], "doc_id": ["q0"], "accuracy": [0.0]})


CASES = {
    "missing": (ten_columns, "not in the sample schema: missing columns prompt_hash, prompt_tokens, completion_tokens"),
    "other": (other_schema, "columns not in the sample schema accuracy"),
    "types": (wrong_types, "not in the sample schema: wrong types: repeat is string, not int32; score is string, "
                           "not double"),
}


def table_cells(output: str, first: str) -> list[str]:
    [cells] = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith(f"│ {first} ")]
    return cells


@pytest.mark.parametrize("case", CASES)
def test_a_shard_outside_the_schema_is_named_everywhere_and_never_counted(folder, case):
    config, results, template = folder
    make, problem = CASES[case]
    bad = planted(results, make(template))
    cli = CliRunner(env={"COLUMNS": "400"})

    # the store: a tolerant read leaves it out and names it; a strict one refuses with its name
    tolerant = ResultsStore(results, skip_unreadable=True)
    b_scores = tolerant.read().filter(pa.compute.equal(tolerant.read()["variant"], "b"))["score"].to_pylist()
    assert b_scores == [1.0] * 6
    assert [(u.path, u.problem.startswith(problem) or problem in u.problem) for u in tolerant.unreadable] == [(bad, True)]
    with pytest.raises(UnreadableResults, match="part-planted"):
        ResultsStore(results).read()

    status = cli.invoke(app, ["status", str(results)])
    assert status.exit_code == 0, status.output
    assert table_cells(status.output, "b")[:6] == ["b", "q", "6", "6", "0", "0"]
    assert any(line.startswith(f"unreadable {bad}: ") and problem in line for line in status.output.splitlines())
    assert "1 unreadable file(s) left out" in status.output

    run = cli.invoke(app, ["run", str(config), "--results", str(results), "--no-progress"])
    assert run.exit_code == 2 and str(bad) in run.output and problem in run.output, run.output
    assert len(list((results / "runs").iterdir())) == 1  # refused before a run began

    with pytest.raises(AnalysisError, match="part-planted") as refused:
        compare(results, CompareOptions(baseline="a", resamples=100))
    assert problem in str(refused.value)
    shown = cli.invoke(app, ["compare", str(results), "--baseline", "a", "--out", str(results.parent / "r")])
    assert shown.exit_code == 2 and "Traceback" not in shown.output and "part-planted" in shown.output

    doctor = cli.invoke(app, ["doctor", str(results)])
    assert doctor.exit_code == 1 and "checked 3 shards and 1 run manifests: 1 unreadable" in doctor.output
    assert str(bad) in doctor.output and problem in doctor.output.replace("\n", "")
    moved = cli.invoke(app, ["doctor", str(results), "--quarantine"])
    assert moved.exit_code == 0 and "moved 1 file(s) to" in moved.output and not bad.exists()

    headline = {r["variant"]: (r["n"], r["score"]) for r in compare(results, CompareOptions(
        baseline="a", resamples=100)).rows("headline")}
    assert headline == {"a": (6, 50.0), "b": (6, 100.0)}  # b stays at 100% (the planted shard said 0%)


def test_rows_keyed_to_another_folder_are_named(folder):
    _, results, template = folder
    bad = planted(results, rows_to_table([{**template, "doc_id": d, "started_at": LATER} for d in DOCS]), variant="a")
    store = ResultsStore(results, skip_unreadable=True)
    assert sorted(store.read()["score"].to_pylist()) == sorted(A_SCORES + [1.0] * 6)
    assert [(u.path, u.problem) for u in store.unreadable] == [(bad, "rows of variant 'b' in the folder of variant 'a'")]


def test_a_shard_written_before_the_later_columns_still_counts(folder):
    _, results, template = folder
    older = rows_to_table([{**template, "doc_id": d, "score": 0.5, "started_at": LATER} for d in DOCS])
    planted(results, older.drop_columns(sorted(LATER_COLUMNS)))
    store = ResultsStore(results)
    table = store.read()
    b = table.filter(pa.compute.equal(table["variant"], "b"))
    assert b["score"].to_pylist() == [0.5] * 6 and b["engine_family"].to_pylist() == [None] * 6
    assert store.check() == []


def test_rescore_refuses_a_bench_with_a_shard_outside_the_schema(folder):
    from omk_ray.results.rescore import RescoreError, rescore

    config, results, template = folder
    bad = planted(results, ten_columns(template))
    before = {p: p.read_bytes() for p in results.rglob("*.parquet")}
    with pytest.raises(RescoreError, match=f"{bad}: unreadable shard \\(not in the sample schema: missing columns"):
        rescore(results, bench="q", grid=load_grid(config))
    assert {p: p.read_bytes() for p in results.rglob("*.parquet")} == before  # refused: nothing written
    reports = {r.variant: r for r in rescore(results, grid=load_grid(config))}  # the other variant is still rescored
    assert "missing columns" in reports["b"].skipped and reports["a"].skipped is None and reports["a"].rows == 6
    after = {p: p.read_bytes() for p in results.rglob("*.parquet")}
    assert {p for p in before if after[p] != before[p]} == {p for p in before if p.parent.parent.name == "a"}
    assert reports["a"].shards == 1  # a rescored (its scorer version was unknown); none of b's shards changed
