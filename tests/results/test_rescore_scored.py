"""Rescoring the rows of loglikelihood benches: lm-eval's per-document metrics (acc, acc_norm, perplexities)
come back from the stored (log-likelihood, is_greedy) pairs through the task's filters and process_results,
without an engine, under rescore's rules; rows scored on other texts (another num_fewshot) are refused."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from helpers import write_grid
from helpers.lmeval_scoring import made_up_scorer
from omk_ray.benches import make_bench
from omk_ray.config import load_grid
from omk_ray.engines.echo import EchoEngine
from omk_ray.farm.planner import make_plan
from omk_ray.farm.rows import RowContext, generate_rows
from omk_ray.results.rescore import RescoreError, rescore
from omk_ray.results.schema import SAMPLE_SCHEMA
from omk_ray.results.store import ResultsStore, write_parquet


Scorer = made_up_scorer()


def grid_of(tmp_path, name: str, **options):
    benches = [{"name": "mc", "kind": "lmeval", "options": {"task": "toy_mc", "id_field": "id", **options}},
               {"name": "rolling", "kind": "lmeval", "options": {"task": "toy_rolling", "id_field": "id"}}]
    return load_grid(write_grid(tmp_path / f"{name}.yaml", [{"name": "e", "engine": "echo", "model": "m"}], benches))


def stored(root) -> dict[tuple[str, str], dict]:
    return {(r["bench"], r["doc_id"]): {**r, "metrics": dict(r["metrics"])} for r in ResultsStore(root).read().to_pylist()}


def tamper(root, bench: str, change) -> None:
    """Edit the rows of the bench's shard in place (what a broken or older scorer would have stored)."""
    (path,) = ResultsStore(root).root.glob(f"samples/e/{bench}/*.parquet")
    import pyarrow.parquet as pq

    rows = pq.read_table(path, schema=SAMPLE_SCHEMA).to_pylist()
    for i, row in enumerate(rows):
        change(i, row)
    write_parquet(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), path)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(EchoEngine, "scores", True)  # planned as one that scores; Scorer makes the numbers up
    grid = grid_of(tmp_path, "grid")
    root = tmp_path / "results"
    store = ResultsStore(root)
    plan = make_plan(grid, store)
    for work in plan.work:
        ctx = RowContext("run", "e", plan.fingerprints["e"], work.bench, work.recipe, "echo")
        table = generate_rows(Scorer(grid.variant("e"), "m"), make_bench(grid.bench(work.bench)), ctx, work.samples)
        store.write_shard(table, "e", work.bench, f"u-{work.bench}")
    return grid, root


def test_stored_loglikelihoods_give_the_scores_back_exactly(results, tmp_path):
    grid, root = results
    before = stored(root)
    assert len(before) == 24 + 12 and all(r["error"] is None for r in before.values())
    mc = [r for (b, _), r in before.items() if b == "mc"]
    assert 0 < sum(r["correct"] for r in mc) < 24 and len({r["chosen"] for r in mc}) > 1  # the made-up picks vary

    def older(i, row):  # an older scorer's scores, and one row that held a scorer error
        row.update(score=0.5, correct=None, metrics=[], chosen=row["chosen"], scorer_version="lm-eval-0.4.11:toy_mc@1.0")
        if i == 3:
            row.update(score=None, error="scorer error: ValueError: boom")
    tamper(root, "mc", older)
    tamper(root, "rolling", lambda i, row: row.update(score=9.0, metrics=[("bits_per_byte,none", 1.0)]) if i < 2 else None)

    reports = {r.bench: r for r in rescore(root, grid=grid)}
    assert (reports["mc"].changed, reports["mc"].errors, reports["mc"].shards) == (24, 0, 1)
    assert {c.why for c in reports["mc"].changes} == {"scorer lm-eval-0.4.11:toy_mc@1.0 -> " + make_bench(grid.bench("mc")).scorer_version}
    assert (reports["rolling"].changed, len(reports["rolling"].kept)) == (0, 2)  # same scorer, same inputs: kept
    after = stored(root)
    for key, row in before.items():
        if key[0] != "mc":
            continue
        new = after[key]
        assert (new["score"], new["correct"], new["chosen"], new["extracted_answer"], new["error"]) == \
               (row["score"], row["correct"], row["chosen"], row["extracted_answer"], None)
        assert {k: v for k, v in new["metrics"].items() if "@" not in k} == row["metrics"]  # acc, acc_norm exactly
        assert new["choice_logprobs"] == row["choice_logprobs"] and new["scorer_version"] == row["scorer_version"]

    [forced] = rescore(root, grid=grid, bench="rolling", force=True)
    assert forced.changed == 2
    after = stored(root)
    for key, row in before.items():
        if key[0] == "rolling":  # bits per byte and word / byte perplexities back from the summed log-likelihood
            assert after[key]["score"] == row["score"] and after[key]["metrics"] == row["metrics"]
            assert math.isclose(row["score"], -row["metrics"]["bits_per_byte,none"] / math.log(2))


def test_a_new_primary_metric_is_read_from_the_stored_loglikelihoods(results, tmp_path):
    _, root = results
    before = stored(root)
    norm = grid_of(tmp_path, "norm", primary_metric="acc_norm,none")
    [dry] = rescore(root, grid=norm, bench="mc", dry_run=True)  # a bench option edited: kept unless forced
    assert dry.changed == 0 and len(dry.kept) == sum(r["metrics"]["acc,none"] != r["metrics"]["acc_norm,none"]
                                                     for (b, _), r in before.items() if b == "mc") > 0
    [report] = rescore(root, grid=norm, bench="mc", force=True)
    assert report.changed == len(dry.kept)
    for (bench, doc), row in stored(root).items():
        if bench == "mc":
            assert row["score"] == before[(bench, doc)]["metrics"]["acc_norm,none"] == row["metrics"]["acc_norm,none"]


def test_rows_scored_on_other_texts_are_refused(results, tmp_path):
    _, root = results
    before = stored(root)
    shots = grid_of(tmp_path, "shots", num_fewshot=2)
    with pytest.raises(RescoreError, match=r"bench 'mc': doc '.*' of variant 'e' was scored on other texts .*num_fewshot"):
        rescore(root, grid=shots, bench="mc", force=True)
    reports = {r.bench: r for r in rescore(root, grid=shots, force=True)}
    assert "scored on other texts" in reports["mc"].skipped and reports["rolling"].skipped is None
    assert stored(root) == before
