"""`omk-ray route`: stored samples teacher-forced through a real model into the routing side table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_farm_store
from typer.testing import CliRunner

from omk_ray.cli import app
from omk_ray.config import Recipe
from omk_ray.results.routing import SEGMENTS, RoutingTable
from omk_ray.toy.data import shipped
from omk_ray.variants.routing import ANSWER, PROMPT, REASONING, RouteError, completion_parts, forced_positions, route_variant

TOY = shipped("model")
LOGS = Path(__file__).parents[1] / "fixtures" / "lm-eval-logs"
PROBLEMS = [
    {"id": "add-1", "prompt": "add 76 6", "target": "82", "domain": "arith"},
    {"id": "rev-1", "prompt": "reverse hello", "target": "olleh", "domain": "reverse"},
    {"id": "sort-1", "prompt": "sort 9 3 7 1", "target": "1 3 7 9", "domain": "sort"},
    {"id": "upper-1", "prompt": "upper moe", "target": "MOE", "domain": "upper"},
]


def generate_recording(engine, messages: list[dict], recipe: Recipe):
    """Generate one answer with the engine while the profiler's hooks record every forward of
    `generate`: the prefill (prompt positions, its last one predicting the first answer token)
    and one decoding step per further token. Returns (completion, stats per layer [segments, E, ROUTED])."""
    from omk_ray.engines.base import Request
    from omk_ray.variants.profile import ExpertRecorder

    recorder = ExpertRecorder(engine.model, owners=len(SEGMENTS), norms=False)
    calls = []

    def owners(module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        n = ids.shape[-1]
        recorder.rows_owner = torch.tensor(([PROMPT] * (n - 1) + [ANSWER]) if not calls else [ANSWER] * n)
        calls.append(n)

    handle = engine.model.register_forward_pre_hook(owners, with_kwargs=True)
    recorder.recording = True
    try:
        [completion] = engine.generate_batch([Request(id="q#0", messages=messages)], recipe)
    finally:
        handle.remove()
        recorder.close()
    assert calls[0] == completion.prompt_tokens and len(calls) == completion.completion_tokens  # prefill + steps
    return completion, {layer: s.numpy().copy() for layer, s in recorder.stats.items()}


def test_teacher_forced_routing_equals_the_routing_recorded_while_generating(tmp_path):
    from omk_ray.config import VariantSpec
    from omk_ray.engines.transformers_engine import TransformersEngine
    from omk_ray.variants.profile import ROUTED

    bench_file = tmp_path / "bench.jsonl"
    bench_file.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    spec = {"name": "toy", "model": str(TOY), "engine": "transformers",
            "engine_args": {"dtype": "float32", "max_model_len": 256}}
    grid = {"name": "t", "recipe": {"max_gen_toks": 12}, "variants": [spec],
            "benches": [{"name": "full", "source": str(bench_file)},
                        {"name": "capped", "source": str(bench_file), "recipe": {"max_gen_toks": 3}}]}
    engine = TransformersEngine(VariantSpec(**spec), str(TOY))
    rows, recorded = [], {}
    for bench, recipe in (("full", Recipe(max_gen_toks=12)), ("capped", Recipe(max_gen_toks=3))):
        for p in PROBLEMS:
            completion, stats = generate_recording(engine, [{"role": "user", "content": p["prompt"]}], recipe)
            recorded[(bench, p["id"])] = stats
            rows.append({"variant": "toy", "variant_fingerprint": "fp", "bench": bench, "doc_id": p["id"], "repeat": 0,
                         "recipe_hash": recipe.hash, "prompt_tokens": completion.prompt_tokens,
                         "completion_tokens": completion.completion_tokens, "finish_reason": completion.finish_reason,
                         "response": completion.text, "reasoning": completion.reasoning, "score": 1.0, "correct": True})
    rows.append({**rows[0], "doc_id": "broken", "error": "engine died", "response": None})  # never routed
    finishes = {r["finish_reason"] for r in rows[:-1]}
    assert finishes == {"stop", "length"}, finishes  # both ends of a sample are covered
    write_farm_store(tmp_path / "results", grid, rows, {"toy": str(TOY)})

    report = route_variant(tmp_path / "results", "toy", dtype="float32")
    assert (report.routed, report.errors, report.already, report.prompt_mismatch) == (8, 1, 0, 0)
    table = RoutingTable(tmp_path / "results").read("toy").to_pylist()
    assert {r["model"] for r in table} == {str(TOY)}
    seen = set()
    for r in table:
        stats = recorded[(r["bench"], r["doc_id"])][r["layer"]][SEGMENTS.index(r["segment"])]
        assert r["tokens"] == stats[:, ROUTED.index("tc")].astype(int).tolist(), (r["bench"], r["doc_id"], r["layer"])
        assert np.allclose(r["weight"], stats[:, ROUTED.index("wsum")], rtol=1e-4, atol=1e-5)
        assert sum(r["tokens"]) == 2 * r["positions"]  # top-2
        seen.add((r["bench"], r["doc_id"], r["segment"], r["layer"]))
    assert seen == {(b, p["id"], s, layer) for b in ("full", "capped") for p in PROBLEMS
                    for s in ("prompt", "answer") for layer in (0, 1, 2)}  # no reasoning: the toy does not think

    again = route_variant(tmp_path / "results", "toy", dtype="float32")
    assert (again.routed, again.already) == (0, 8)
    full_before = sorted(r for r in RoutingTable(tmp_path / "results").shard_paths("toy") if r.parent.name == "full")
    forced = route_variant(tmp_path / "results", "toy", dtype="float32", benches=["capped"], force=True)
    assert (forced.routed, forced.already, forced.benches) == (4, 0, {"capped": 4})
    after = RoutingTable(tmp_path / "results")
    assert sorted(p for p in after.shard_paths("toy") if p.parent.name == "full") == full_before  # untouched
    keys = [(r["bench"], r["doc_id"], r["segment"], r["layer"]) for r in after.read("toy").to_pylist()]
    assert sorted(keys) == sorted(seen)  # both benches' routing, each once


@pytest.mark.slow
def test_routing_on_ray_actors_equals_routing_here(tmp_path, local_ray):
    import shutil

    bench_file = tmp_path / "bench.jsonl"
    bench_file.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    grid = {"name": "t", "variants": [{"name": "toy", "model": str(TOY)}], "benches": [{"name": "b", "source": str(bench_file)}]}
    rows = [{"variant": "toy", "variant_fingerprint": "fp", "bench": "b", "doc_id": p["id"], "repeat": 0,
             "recipe_hash": Recipe().hash, "finish_reason": "stop", "response": p["target"]} for p in PROBLEMS]
    write_farm_store(tmp_path / "here", grid, rows, {"toy": str(TOY)})
    shutil.copytree(tmp_path / "here", tmp_path / "ray")
    assert route_variant(tmp_path / "here", "toy", dtype="float32").routed == 4
    assert route_variant(tmp_path / "ray", "toy", dtype="float32", workers=2).routed == 4
    assert len(RoutingTable(tmp_path / "ray").shard_paths("toy")) == 2  # two chunks, one per actor

    def rows_of(root):
        table = RoutingTable(root).read("toy").drop_columns(["model"]).to_pylist()
        return sorted(table, key=lambda r: (r["doc_id"], r["segment"], r["layer"]))

    here, ray_rows = rows_of(tmp_path / "here"), rows_of(tmp_path / "ray")
    assert [r["tokens"] for r in here] == [r["tokens"] for r in ray_rows]
    assert np.allclose([r["weight"] for r in here], [r["weight"] for r in ray_rows], rtol=1e-5)


def test_each_position_counts_for_the_token_it_predicts():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOY)  # one token per character; <|channel> / <channel|> are single tokens
    start, end = tok.convert_tokens_to_ids(["<|channel>", "<channel|>"])
    prompt = [2, 40, 41, 42]
    recipe = Recipe(enable_thinking=True)
    parts = completion_parts(tok, prompt, "ok", "hmm", "stop", recipe)
    assert parts == [(REASONING, [start, *tok("hmm", add_special_tokens=False)["input_ids"], end]),
                     (ANSWER, tok("ok", add_special_tokens=False)["input_ids"])]
    ids, segments = forced_positions(prompt, parts, terminated=True)
    # 4 prompt tokens: 3 positions predict prompt tokens; then <|channel> h m m <channel|> (5) and o k (2);
    # the position of `k` predicts the end token, so it is fed too
    assert ids == prompt + parts[0][1] + parts[1][1]
    assert segments == [PROMPT] * 3 + [REASONING] * 5 + [ANSWER] * 2 + [ANSWER]
    ids, segments = forced_positions(prompt, parts, terminated=False)  # cut by the length cap: `k` was never fed
    assert len(ids) == len(segments) == 10 and segments[-1] == ANSWER and ids[-1] == parts[1][1][0]
    opened = completion_parts(tok, prompt + [start], "", "deep", "length_in_reasoning", recipe)
    assert opened == [(REASONING, tok("deep", add_special_tokens=False)["input_ids"]), (ANSWER, [])]
    assert forced_positions([5], [(ANSWER, [])], terminated=True) == ([5], [ANSWER])  # an empty answer


def test_route_an_imported_lm_eval_log_with_a_model(tmp_path, tiny_gemma4):
    from transformers import AutoTokenizer

    from omk_ray.results.importers import import_lmeval

    import_lmeval(LOGS / "aime_30", "gpt-oss", tmp_path)
    no_model = CliRunner().invoke(app, ["route", str(tmp_path), "--variant", "gpt-oss"])
    assert no_model.exit_code == 2 and "give --model" in no_model.output
    result = CliRunner().invoke(app, ["route", str(tmp_path), "--variant", "gpt-oss", "--model", str(tiny_gemma4),
                                      "--max-length", "96", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "routed 30 samples of gpt-oss" in result.output
    table = RoutingTable(tmp_path).read("gpt-oss").to_pylist()
    assert len({r["doc_id"] for r in table}) == 30 and all(sum(r["tokens"]) == 2 * r["positions"] for r in table)
    # the prompt is lm-eval's logged chat request, through the model's chat template
    first = json.loads((LOGS / "aime_30").glob("samples_*.jsonl").__next__().read_text().splitlines()[0])
    messages = json.loads(first["arguments"]["gen_args_0"]["arg_0"][0])
    tok = AutoTokenizer.from_pretrained(tiny_gemma4)
    text = tok.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False,
                                   add_generation_prompt=True)
    prompt_len = len(tok(text, add_special_tokens=False)["input_ids"])
    [row] = [r for r in table if r["doc_id"] == str(first["doc_id"]) and r["segment"] == "prompt" and r["layer"] == 0]
    assert row["positions"] == min(prompt_len - 1, 96)

    # and `experts` measures a second imported run against it, with a drop map given by hand
    import_lmeval(LOGS / "aime_30", "gpt-oss-pruned", tmp_path)
    drop_map = tmp_path / "map.json"
    drop_map.write_text(json.dumps({"0": [0, 1], "1": [0, 1]}))
    result = CliRunner().invoke(app, ["experts", str(tmp_path), "--baseline", "gpt-oss", "--variant", "gpt-oss-pruned",
                                      "--drop-map", str(drop_map)])
    assert result.exit_code == 0, result.output
    assert "| aime24_chat | gpt-oss-pruned | 30 |" in result.output  # the same answers: nothing lost, all exposed


def test_route_refuses_what_it_cannot_route(tmp_path):
    with pytest.raises(RouteError, match="no samples of variant 'nope'"):
        route_variant(tmp_path, "nope")
    rows = [{"variant": "v", "variant_fingerprint": "fp", "bench": "b", "doc_id": "1", "repeat": 0, "recipe_hash": "r",
             "response": "x"}]
    write_farm_store(tmp_path, {"name": "t", "variants": [{"name": "other", "model": str(TOY)}],
                           "benches": [{"name": "b", "source": "x.jsonl"}]}, rows, {})
    with pytest.raises(RouteError, match="no run manifest declares recipe r for variant 'v'"):
        route_variant(tmp_path, "v", model=str(TOY))
