"""Scoring parity with lm-eval on a real run (tests/fixtures/lm-eval-logs, gpt-oss-20b).

1. Importing every log reproduces each aggregate of its results_*.json, and each row's metric
   map holds exactly the per-sample values lm-eval logged (every filter).
2. Rescoring the imported rows with omk-ray's own scorers changes no sample and reproduces the
   aggregates again: gsm8k (both filters), minerva_math500 (exact_match, math_verify) and
   ifeval (four metrics) through lm-eval's filters and metrics from the raw responses; the
   users' aime24_chat and arc_challenge_full_chat through omk-ray's definitions of them; and
   humaneval_chat by running each stored program against its tests in the sandbox.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers.bench_data import LOGS
from omk_ray.benches.lmeval import aggregate
from omk_ray.results.importers import TOKENS_MISSING, import_lcb, import_lmeval
from omk_ray.results.rescore import rescore
from omk_ray.results.store import ResultsStore

BENCHES = ["aime24_chat", "arc_challenge_full_chat", "gsm8k", "humaneval_chat", "ifeval", "minerva_math500"]


def logged_samples(task: str) -> dict[str, dict[str, float]]:
    """doc id -> {"metric,filter": value} as lm-eval logged them (list metrics as their mean)."""
    path = next(LOGS.glob(f"*/samples_{task}_*.jsonl"))
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        s = json.loads(line)
        for metric in s["metrics"]:
            value = s[metric]
            value = sum(value) / len(value) if isinstance(value, list) else float(value)
            out.setdefault(str(s["doc_id"]), {})[f"{metric},{s['filter']}"] = value
    return out


def logged_results(task: str) -> dict[str, float]:
    path = next(LOGS.glob(f"*/samples_{task}_*.jsonl"))
    results = json.loads(next(path.parent.glob("results_*.json")).read_text())["results"][task]
    return {k: float(v) for k, v in results.items() if "," in k and "_stderr" not in k}


def rows_by_bench(root: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in ResultsStore(root).read().to_pylist():
        row["metrics"] = dict(row["metrics"])
        out.setdefault(row["bench"], []).append(row)
    return out


def assert_matches_log(rows: list[dict], task: str) -> None:
    logged = logged_samples(task)
    assert sorted(r["doc_id"] for r in rows) == sorted(logged)
    for row in rows:
        for key, value in logged[row["doc_id"]].items():
            assert math.isclose(row["metrics"][key], value), (task, row["doc_id"], key)
    for key, value in logged_results(task).items():
        assert math.isclose(aggregate([r["metrics"] for r in rows], key), value, abs_tol=1e-12), (task, key)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    reports = import_lmeval(LOGS, "gpt-oss-20b", root)
    return root, {r.bench: r for r in reports}


def test_import_reproduces_every_aggregate_and_sample(imported):
    root, reports = imported
    assert sorted(reports) == BENCHES
    for report in reports.values():
        assert report.reproduced, report.aggregates
    rows = rows_by_bench(root)
    for task in BENCHES:
        assert_matches_log(rows[task], task)
    gsm8k = {r["doc_id"]: r for r in rows["gsm8k"]}
    # One row per doc, both filters merged; score is the primary (flexible-extract) metric.
    assert len(gsm8k) == 100
    assert all(r["score"] == r["metrics"]["exact_match,flexible-extract"] for r in gsm8k.values())
    assert sum(r["score"] for r in gsm8k.values()) == 88
    assert gsm8k["0"]["extracted_answer"] == "$18"
    # No token counts in lm-eval logs: null, and flagged for a chars/4 estimate.
    assert all(r["completion_tokens"] is None and r["metrics"][TOKENS_MISSING] == 1.0 for r in gsm8k.values())
    assert {r["cohort"] for rs in rows.values() for r in rs} == {"greedy"}


def test_import_lcb_reproduces_pass_at_1(tmp_path):
    report = import_lcb(LOGS / "lcb_medium_55" / "lcb_result.samples.jsonl", "gpt-oss-20b", tmp_path)
    assert report.rows == 55 and report.reproduced
    assert report.aggregates["pass@1"][0] == pytest.approx(49 / 55)
    rows = ResultsStore(tmp_path).read().to_pylist()
    assert sum(r["correct"] for r in rows) == 49
    assert all(r["completion_tokens"] and r["finish_reason"] for r in rows)


def test_rescore_reproduces_every_sample_from_the_responses(imported, data_cache):  # noqa: F811
    root, _ = imported
    reports = {r.bench: r for r in rescore(root)}
    assert sorted(reports) == BENCHES
    for report in reports.values():
        assert (report.changed, report.errors) == (0, 0), report
    rows = rows_by_bench(root)
    for task in BENCHES:
        assert_matches_log(rows[task], task)
        for row in rows[task]:  # the previous scorer's score is kept under its version
            previous = [k for k in row["metrics"] if k.startswith("score@lm-eval-0.4.11")]
            assert len(previous) == 1 and row["metrics"][previous[0]] == row["score"]
    assert rows["gsm8k"][0]["scorer_version"].startswith("lm-eval-0.4.")
    assert rows["humaneval_chat"][0]["scorer_version"] == "omk-ray-sandbox:humaneval_chat"
