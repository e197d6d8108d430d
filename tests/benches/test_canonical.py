"""configs/canonical.yaml: loads, plans the published suite's counts, and its lm-eval benches run
end to end on a tiny model from small local data (then rescore to the same scores)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path


from helpers.bench_data import TASK_ROWS, write_jsonl
from omk_ray.benches import BENCHES, make_bench
from omk_ray.benches.sources import DataError
from omk_ray.config import BenchSpec, grid_to_dict, load_grid, parse_grid

CANONICAL = Path(__file__).resolve().parents[2] / "configs" / "canonical.yaml"
SUITE = {  # bench -> problems, as published
    "arc_challenge": 1172, "gpqa_diamond": 198, "gsm8k": 100, "math500": 100, "aime24": 30, "ifeval": 100,
    "humaneval": 164, "humaneval_plus": 164, "lcb_medium": 55, "mbpp": 500,
}
# Rows in the full data (the suite takes the first N of some).
FULL = {"arc_challenge": 1172, "gpqa_diamond": 198, "gsm8k": 130, "math500": 130, "aime24": 30, "ifeval": 130}
CODE_KINDS = {"humaneval": "humaneval", "humaneval_plus": "humaneval_plus", "lcb_medium": "livecodebench", "mbpp": "mbpp"}


def test_canonical_config_loads_with_the_published_recipes():
    grid = load_grid(CANONICAL)
    assert [b.name for b in grid.benches] == list(SUITE)
    assert {b.name: b.kind for b in grid.benches if b.name in CODE_KINDS} == CODE_KINDS
    assert [v.name for v in grid.variants] == ["128e", "98e-v4"]
    base, v4 = grid.variants
    for bench in grid.benches:
        recipe = grid.recipe_for(base, bench)
        assert recipe.greedy and recipe.cohort == "greedy" and recipe.chat_template
        assert (recipe.temperature, recipe.top_p, recipe.top_k) == (0.0, 1.0, 0)
        if bench.name != "lcb_medium":  # the only asymmetric recipe
            assert grid.recipe_for(v4, bench).hash == recipe.hash
    lcb = grid.bench("lcb_medium")
    assert not grid.recipe_for(base, lcb).enable_thinking
    v4_lcb = grid.recipe_for(v4, lcb)
    assert (v4_lcb.enable_thinking, v4_lcb.thinking_budget, v4_lcb.max_gen_toks) == (True, 12288, 16384)
    assert grid.bench("ifeval").options["primary_metric"] == "prompt_level_strict_acc,none"
    assert grid.bench("gpqa_diamond").options["domain_field"] == "High-level domain"


def local_canonical(tmp_path: Path) -> tuple[dict, list[str]]:
    """The canonical grid with each lm-eval bench reading full-size local data; code benches as
    configured when their kind is registered and their data loads here (HumanEval ships with
    its package; the others need `fetch-data`)."""
    raw = grid_to_dict(load_grid(CANONICAL))
    kept, dropped = [], []
    for bench in raw["benches"]:
        if bench["kind"] == "lmeval":
            rows = TASK_ROWS[bench["options"]["task"]](FULL[bench["name"]])
            bench["source"] = str(write_jsonl(tmp_path / f"{bench['name']}.jsonl", rows))
        elif bench["kind"] not in BENCHES:
            dropped.append(bench["name"])
            continue
        else:
            try:
                make_bench(BenchSpec(**bench)).docs()
            except (DataError, OSError, ValueError):
                dropped.append(bench["name"])
                continue
        kept.append(bench)
    for variant in raw["variants"]:
        variant["recipe_overrides"] = {k: v for k, v in variant["recipe_overrides"].items() if k not in dropped}
    return {**raw, "benches": kept}, dropped


def test_canonical_plan_counts_match_the_suite(tmp_path, data_cache):  # noqa: F811
    from omk_ray.farm.planner import describe, make_plan

    raw, dropped = local_canonical(tmp_path)
    # HumanEval+, LiveCodeBench and MBPP need `fetch-data` (their own tests count them on local copies).
    assert set(dropped) <= {"humaneval_plus", "lcb_medium", "mbpp"}
    plan = make_plan(parse_grid(raw))
    rows = describe(plan)
    assert {r["variant"] for r in rows} == {"128e", "98e-v4"}
    for row in rows:
        assert row["expected"] == SUITE[row["bench"]], row
    assert {r["bench"] for r in rows} == set(SUITE) - set(dropped)
    assert plan.dataset_revisions["gsm8k"].startswith("file:gsm8k.jsonl@sha256:")


def test_canonical_lmeval_benches_run_end_to_end_on_a_tiny_model(tmp_path, tiny_gemma4, data_cache):  # noqa: F811
    """Two docs of each lm-eval bench through the engine actor (transformers, tiny random Gemma 4),
    stored, then rescored: the stored scores are what the current scorers give."""
    from omk_ray.engines import engine_class
    from omk_ray.farm.rows import RowContext, generate_rows
    from omk_ray.results.rescore import rescore
    from omk_ray.results.store import ResultsStore

    raw = grid_to_dict(load_grid(CANONICAL))
    benches = []
    for bench in raw["benches"]:
        if bench["kind"] == "lmeval":
            rows = TASK_ROWS[bench["options"]["task"]](2)
            benches.append({**bench, "subset": None, "source": str(write_jsonl(tmp_path / f"{bench['name']}.jsonl", rows))})
    raw = {**raw, "recipe": {**raw["recipe"], "max_gen_toks": 6}, "benches": benches,
           "variants": [{"name": "tiny", "model": str(tiny_gemma4), "engine": "transformers",
                         "engine_args": {"dtype": "float32", "max_model_len": 1024}}]}
    grid = parse_grid(raw)
    engine = engine_class("transformers")(grid.variants[0], str(tiny_gemma4))
    store = ResultsStore(tmp_path / "results")
    for spec in grid.benches:
        bench = make_bench(spec)
        docs = bench.docs()
        ctx = RowContext("t", "tiny", "fp", spec.name, grid.recipe_for(grid.variants[0], spec), "transformers",
                         bench.dataset_revision)
        table = generate_rows(engine, bench, ctx, [(d, 0) for d in docs])
        rows = table.to_pylist()
        assert len(rows) == 2 and all(r["error"] is None for r in rows), rows
        for r in rows:
            assert r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= 6
            assert r["score"] in (0.0, 1.0) and spec.options["primary_metric"] in dict(r["metrics"])
            assert r["dataset_revision"].startswith("file:") and r["scorer_version"].startswith("lm-eval-")
        if spec.name == "gpqa_diamond":
            assert [(r["doc_id"], r["domain"]) for r in rows] == [("rec0", "Physics"), ("rec1", "Chemistry")]
        store.write_shard(table, "tiny", spec.name, spec.name)
    run = store.new_run("t")
    run.write_manifest({"run_id": "t", "config": grid_to_dict(grid), "status": "finished",
                        "started_at": datetime.now(timezone.utc).isoformat()})
    reports = rescore(store.root)
    assert sorted(r.bench for r in reports) == sorted(b.name for b in grid.benches)
    assert all((r.rows, r.changed, r.errors, r.shards) == (2, 0, 0, 0) for r in reports), reports
    assert json.loads(run.manifest_path.read_text())["status"] == "finished"
