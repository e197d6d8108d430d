"""The one row constructor: an error row has a null score and `correct`, whoever writes it, and a raw
reader of samples/ gets the project's score; shards written before (error rows with 0.0 / False) read
as they did."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from helpers.samples import bench_rows, write_store
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.benches.base import Doc
from omk_ray.config import Recipe
from omk_ray.engines.base import Completion
from omk_ray.farm.rows import RowContext, sample_row
from omk_ray.results import importers
from omk_ray.results.schema import COLUMNS, make_row
from omk_ray.results.store import ResultsStore

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "lm-eval-logs"
ENGINE_ERROR = "engine died: CUDA error"


def test_make_row_fills_every_column_and_nulls_the_score_of_an_error_row():
    row = make_row(variant="v", bench="b", doc_id="d0", repeat=0, score=0.0, correct=False, error="boom")
    assert sorted(row) == sorted(COLUMNS)
    assert (row["score"], row["correct"], row["error"], row["response"]) == (None, None, "boom", None)
    assert make_row(variant="v", score=0.0, correct=False)["correct"] is False  # a wrong answer stays wrong
    with pytest.raises(ValueError, match="not columns of a sample row: corect"):
        make_row(variant="v", corect=True)


def test_an_error_row_of_the_farm_has_a_null_score_and_correct():
    ctx = RowContext("run-1", "v", "fp", "b", Recipe(), "echo")
    doc = Doc(id="d0", messages=[{"role": "user", "content": "hi"}], target="1")
    failed = Completion(text="", finish_reason="error", error=ENGINE_ERROR)
    row = sample_row(ctx, doc, 0, failed, None, ENGINE_ERROR, datetime.now(timezone.utc), None, None)
    assert (row["score"], row["correct"], row["error"]) == (None, None, ENGINE_ERROR)


def test_an_error_row_of_an_importer_has_a_null_score_and_correct(tmp_path, monkeypatch):
    made = []
    make_row = importers.make_row

    def first_is_an_error(**columns):  # the importer builds its rows with the constructor: fail its first
        row = make_row(**columns, **({} if made else {"error": ENGINE_ERROR}))
        made.append(row)
        return row

    monkeypatch.setattr(importers, "make_row", first_is_an_error)
    importers.import_lcb(LOGS / "lcb_medium_55" / "lcb_result.samples.jsonl", "v", tmp_path)
    rows = ResultsStore(tmp_path).read().to_pylist()
    assert len(made) == len(rows) == 55
    assert [(r["score"], r["correct"]) for r in rows if r["error"]] == [(None, None)]
    assert all(r["score"] is not None and r["correct"] is not None for r in rows if not r["error"])


def _rows(error_row: dict) -> list[dict]:
    """Base and variant on 8 docs; the variant's d1 (a right answer otherwise) failed."""
    base = bench_rows("base", "b", [1, 1, 0, 1, 0, 1, 1, 0])
    var = bench_rows("v", "b", [1, 1, 0, 0, 0, 1, 0, 0])
    var[1] = {**var[1], **error_row}
    return base + var


def _scores(results) -> dict:
    c = compare(results, CompareOptions(baseline="base", resamples=200))
    return {(r["variant"], r["bench"]): (r["n"], r["score"], r["correct"]) for r in c.rows("headline")}


def test_a_raw_reader_of_samples_gets_the_projects_score_and_old_shards_compare_as_before(tmp_path):
    new = tmp_path / "new"
    rows = _rows({})
    rows[8 + 1] = make_row(**{**rows[8 + 1], "error": ENGINE_ERROR})
    write_store(new, rows)
    project = _scores(new)
    assert project[("v", "b")] == (7, pytest.approx(100 * 2 / 7), 2)  # the error row left out

    samples = ds.dataset(str(new / "samples"), format="parquet").to_table().to_pandas()
    raw = samples.groupby("variant")["correct"].mean()  # pandas skips the nulls
    assert 100 * raw["v"] == pytest.approx(project[("v", "b")][1])
    assert 100 * raw["base"] == pytest.approx(project[("base", "b")][1])
    duckdb = pytest.importorskip("duckdb")
    glob = str(new / "samples" / "**" / "*.parquet")
    mean = duckdb.sql(f"SELECT avg(correct::INT) FROM read_parquet('{glob}') WHERE variant = 'v'").fetchall()[0][0]
    filtered = duckdb.sql(f"SELECT avg(correct::INT) FROM read_parquet('{glob}') "
                          "WHERE variant = 'v' AND error IS NULL").fetchall()[0][0]
    assert 100 * mean == 100 * filtered == pytest.approx(project[("v", "b")][1])

    old = tmp_path / "old"  # written before the constructor: the error row stored 0.0 / False
    write_store(old, _rows({"error": ENGINE_ERROR, "score": 0.0, "correct": False}))
    assert _scores(old) == project
    old_compare = compare(old, CompareOptions(baseline="base", resamples=200)).rows("scoreboard")
    new_compare = compare(new, CompareOptions(baseline="base", resamples=200)).rows("scoreboard")
    assert _same(old_compare, new_compare) and old_compare[0]["errors_excluded"] == 1


def _same(a: list[dict], b: list[dict]) -> bool:
    """Equal rows, NaN equal to NaN."""
    return len(a) == len(b) and all(
        ra.keys() == rb.keys() and all(x == y or (x != x and y != y) for x, y in zip(ra.values(), rb.values()))
        for ra, rb in zip(a, b))
