"""The replay engine: stored answers come back unchanged, rescored by a new scorer; nothing is invented."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from omk_ray.benches import Doc
from omk_ray.config import BenchSpec, Recipe, VariantSpec
from omk_ray.engines import Request, engine_class
from omk_ray.benches import make_bench
from omk_ray.farm.rows import RowContext, generate_rows
from omk_ray.results.schema import rows_to_table
from omk_ray.results.store import ResultsStore

GREEDY, LONGER = Recipe(max_gen_toks=8), Recipe(max_gen_toks=64)


def row(bench: str, doc_id: str, response: str, recipe: Recipe = GREEDY, **fields) -> dict:
    return {
        "run_id": "r0", "cohort": recipe.cohort, "variant": "src", "variant_fingerprint": "fp", "bench": bench,
        "doc_id": doc_id, "repeat": 0, "prompt_hash": f"h-{doc_id}", "prompt_tokens": 12,
        "completion_tokens": len(response.split()), "reasoning_tokens": 3, "finish_reason": "stop",
        "response": response, "reasoning": "thinking", "latency_s": 0.5, "engine": "vllm",
        "engine_version": "vllm 0.32.0", "recipe_hash": recipe.hash, "score": 0.0, "correct": False,
        "started_at": datetime(2026, 1, 1, tzinfo=timezone.utc), **fields,
    }


@pytest.fixture
def stored(tmp_path):
    store = ResultsStore(tmp_path / "results")
    store.write_shard(rows_to_table([
        row("math", "d0", "The answer is 42"), row("math", "d1", "answer: 7"),
        row("math", "d2", "", finish_reason="error", error="engine died"),
        row("math", "shared", "from math"),
    ]), "src", "math", "u0")
    store.write_shard(rows_to_table([row("code", "shared", "from code", LONGER)]), "src", "code", "u1")
    store.write_shard(rows_to_table([row("math", "d0", "other variant") | {"variant": "other"}]), "other", "math", "u2")
    return store.root


def replay(results, **extra) -> object:
    variant = VariantSpec(name="rescored", model=str(results), engine="replay",
                          engine_args={"extra": {"variant": "src", **extra}})
    return engine_class("replay")(variant, str(results))


def ask(*doc_ids: str) -> list[Request]:
    return [Request(id=f"{d}#0", messages=[{"role": "user", "content": d}]) for d in doc_ids]


def test_stored_samples_come_back_unchanged(stored):
    engine = replay(stored)
    a, b, failed = engine.generate_batch(ask("d0", "d1", "d2"), GREEDY)
    assert (a.text, a.reasoning, a.prompt_tokens, a.completion_tokens, a.reasoning_tokens, a.prompt_hash) == \
        ("The answer is 42", "thinking", 12, 4, 3, "h-d0")
    assert b.text == "answer: 7" and b.error is None
    assert failed.finish_reason == "error" and failed.error == "engine died"  # a stored failure stays a failure
    assert engine.version == "replay src (vllm 0.32.0)"


def test_never_invents_an_answer(stored):
    engine = replay(stored)
    missing, = engine.generate_batch(ask("nope"), GREEDY)
    assert missing.finish_reason == "error" and "no stored sample of doc 'nope'" in missing.error
    # a doc id in two benches: the request's recipe picks one, else it is an error that says so
    by_recipe = engine.generate_batch(ask("shared"), LONGER)[0]
    assert by_recipe.text == "from code"
    ambiguous = engine.generate_batch(ask("shared"), Recipe(max_gen_toks=3))[0]
    assert ambiguous.finish_reason == "error" and "several benches (code, math)" in ambiguous.error
    with pytest.raises(ValueError, match="no samples of variant 'ghost'"):
        replay(stored, variant="ghost")
    with pytest.raises(FileNotFoundError, match="no stored samples"):
        replay(stored.parent / "empty")


def test_rescoring_with_a_new_scorer(stored, tmp_path):
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": i, "target": t}) + "\n" for i, t in (("d0", "42"), ("d1", "7"))))
    spec = BenchSpec(name="math", source=str(data), options={"answer_regex": r"(\d+)\s*$"})
    variant = VariantSpec(name="rescored", model=str(stored), engine="replay", engine_args={"extra": {"variant": "src"}})
    engine = engine_class("replay")(variant, str(stored))
    docs = [Doc(id="d0", messages=[{"role": "user", "content": "d0"}], target="42"),
            Doc(id="d1", messages=[{"role": "user", "content": "d1"}], target="7")]
    ctx = RowContext("run", "rescored", "fp2", spec.name, GREEDY, "replay")  # the farm's own row path, in-process
    table = generate_rows(engine, make_bench(spec), ctx, [(d, 0) for d in docs])
    rows = table.to_pylist()
    assert [(r["response"], r["extracted_answer"], r["correct"]) for r in rows] == \
        [("The answer is 42", "42", True), ("answer: 7", "7", True)]  # stored 0.0, rescored right
    assert all(r["engine"] == "replay" and r["completion_tokens"] > 0 for r in rows)


def test_each_bench_gets_its_own_stored_answers(tmp_path):
    """lm-eval benches number their docs 0, 1, ...: the same ids, the same recipe, in every bench."""
    store = ResultsStore(tmp_path / "results")
    for bench in ("gsm8k", "math500"):
        store.write_shard(rows_to_table([row(bench, str(i), f"{bench} answer {i}") for i in range(2)]), "src", bench, bench)
    engine = replay(store.root)
    asked = [Request(id=f"{i}#0", messages=[], bench=bench) for bench in ("math500", "gsm8k") for i in range(2)]
    assert [c.text for c in engine.generate_batch(asked, GREEDY)] == \
        ["math500 answer 0", "math500 answer 1", "gsm8k answer 0", "gsm8k answer 1"]
    missing, = engine.generate_batch([Request(id="7#0", messages=[], bench="gsm8k")], GREEDY)
    assert "no stored sample of doc '7' repeat 0 for variant 'src' on bench 'gsm8k'" in missing.error
