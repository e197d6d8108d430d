"""Resume identity: a stored sample is reused only while what produced it is unchanged, weights by
content, hub ids by commit, documents by hash; `repeats` adds samples without discarding any."""

from __future__ import annotations

import json
import shutil


from helpers import hf_variant, write_bench, write_grid
from omk_ray.benches import make_bench
from omk_ray.config import load_grid
from omk_ray.engines import engine_class
from omk_ray.farm.planner import make_plan
from omk_ray.farm.rows import RowContext, generate_rows
from omk_ray.results.schema import rows_to_table
from omk_ray.results.store import ResultsStore


def run_in_process(grid, store: ResultsStore) -> int:
    """Generate what the plan says is missing through the farm's own generate -> score -> row path, here."""
    plan = make_plan(grid, store)
    for w in plan.work:
        if w.samples:
            variant = grid.variant(w.variant)
            engine = engine_class(variant.engine)(variant, plan.model_paths[w.variant])
            ctx = RowContext("run", w.variant, plan.fingerprints[w.variant], w.bench, w.recipe, variant.engine)
            table = generate_rows(engine, make_bench(grid.bench(w.bench)), ctx, w.samples)
            store.write_shard(table, w.variant, w.bench, f"u-{w.variant}-{w.bench}-{len(store.shard_paths())}")
    return plan.missing


def missing(grid, store) -> dict[str, list[str]]:
    return {f"{w.variant}/{w.bench}": sorted(f"{d.id}#{r}" for d, r in w.samples) for w in make_plan(grid, store).work}


def test_a_bench_edited_under_the_same_ids_is_generated_again(tmp_path):
    bench = write_bench(tmp_path / "b.jsonl", 4)
    grid = load_grid(write_grid(tmp_path / "grid.yaml", [{"name": "e", "engine": "echo", "model": "m"}],
                                [{"name": "copy", "kind": "jsonl", "source": str(bench)}]))
    store = ResultsStore(tmp_path / "results")
    assert run_in_process(grid, store) == 4
    assert missing(grid, store) == {"e/copy": []}
    rows = [json.loads(line) for line in bench.read_text().splitlines()]
    rows[2]["target"] = "a new target"  # q2 and q3 edited in place, same ids
    rows[3]["prompt"] = "copy 99"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = make_plan(grid, store)
    assert [(w.stale, sorted(d.id for d, _ in w.samples)) for w in plan.work] == [(2, ["q2", "q3"])]

    from typer.testing import CliRunner

    from omk_ray.cli import app

    shown = CliRunner().invoke(app, ["plan", str(tmp_path / "grid.yaml"), "--results", str(store.root)])
    assert shown.exit_code == 0
    assert "2 of 4 samples to generate (2 stored before but generated again: their document changed)" in shown.output


def test_changing_repeats_keeps_the_stored_samples(tmp_path):
    bench = write_bench(tmp_path / "b.jsonl", 3)
    config = write_grid(tmp_path / "grid.yaml", [{"name": "e", "engine": "echo", "model": "m"}],
                        [{"name": "copy", "kind": "jsonl", "source": str(bench)}])
    store = ResultsStore(tmp_path / "results")
    run_in_process(load_grid(config), store)
    config.write_text(config.read_text().replace("max_gen_toks: 8", "max_gen_toks: 8\n  repeats: 2"))
    assert missing(load_grid(config), store) == {"e/copy": ["q0#1", "q1#1", "q2#1"]}  # repeat 0 is kept


def test_a_weight_file_changed_in_place_is_a_new_variant(tmp_path, tiny_gemma4):
    """The same names and sizes: only the content tells (hashed once, then cached by size and mtime)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_gemma4, model)
    grid = load_grid(write_grid(tmp_path / "grid.yaml", [hf_variant("v", model)],
                                [{"name": "copy", "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 2))}]))
    store = ResultsStore(tmp_path / "results")
    plan = make_plan(grid, store)
    rows = [{"variant": "v", "variant_fingerprint": plan.fingerprints["v"], "recipe_hash": plan.work[0].recipe.hash,
             "bench": "copy", "doc_id": d.id, "repeat": 0, "doc_hash": d.hash} for d, _ in plan.work[0].samples]
    store.write_shard(rows_to_table(rows), "v", "copy", "u1")
    assert make_plan(grid, store).missing == 0
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:  # zero 4 KiB in the middle of the tensors
        f.seek(size // 2)
        f.write(bytes(4096))
    assert weights.stat().st_size == size
    again = make_plan(grid, store)
    assert again.fingerprints["v"] != plan.fingerprints["v"] and again.missing == 2
    assert again.weights["v"]["content_sha256"] != plan.weights["v"]["content_sha256"]


def test_a_hub_id_is_identified_by_the_commit_it_resolves_to(tmp_path, monkeypatch):
    """Offline, the commit comes from the Hugging Face cache (the layout huggingface_hub writes)."""
    from huggingface_hub import constants

    from omk_ray.variants.artifacts import resolve_hub_revision

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    first, second = "1" * 40, "2" * 40
    for commit in (first, second):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_hub_revision("org/tiny") == first
    assert resolve_hub_revision("org/tiny", "3" * 40) == "3" * 40  # a commit is its own resolution
    assert resolve_hub_revision("org/absent") is None

    grid = load_grid(write_grid(tmp_path / "grid.yaml", [{"name": "v", "model": "org/tiny", "engine": "transformers"}],
                                [{"name": "copy", "kind": "jsonl", "source": str(write_bench(tmp_path / "b.jsonl", 2))}]))
    before = make_plan(grid)
    assert before.weights["v"] == {"hub": "org/tiny", "revision": None, "commit": first}
    (repo / "refs" / "main").write_text(second)  # main moved on: another model
    after = make_plan(grid)
    assert after.weights["v"]["commit"] == second and after.fingerprints["v"] != before.fingerprints["v"]


def test_a_prompt_longer_than_the_context_is_recorded_once(tmp_path, tiny_gemma4):
    """A sample that can never run is stored once as such, and generated again only when its inputs change."""
    bench = write_bench(tmp_path / "b.jsonl", 2)
    with bench.open("a") as f:
        f.write(json.dumps({"id": "long", "prompt": "copy " + " ".join(str(i) for i in range(300)), "target": "x"}) + "\n")
    config = write_grid(tmp_path / "grid.yaml", [hf_variant("v", tiny_gemma4, max_model_len=64)],
                        [{"name": "copy", "kind": "jsonl", "source": str(bench)}])
    store = ResultsStore(tmp_path / "results")
    assert run_in_process(load_grid(config), store) == 3
    assert run_in_process(load_grid(config), store) == 0  # not generated again, no second error row
    assert len(store.shard_paths()) == 1
    [long] = [r for r in store.read().to_pylist() if r["doc_id"] == "long"]
    assert (long["error_kind"], long["finish_reason"]) == ("prompt_too_long", "error")
    assert long["error"].startswith("prompt of ") and long["prompt_tokens"] > 64
    config.write_text(config.read_text().replace("max_model_len: 64", "max_model_len: 2048"))
    assert missing(load_grid(config), store) == {"v/copy": ["long#0"]}  # the context grew: it may fit now


def test_code_bench_rows_record_how_their_programs_were_confined(tmp_path):
    """Every code-bench row says which sandbox level ran its program; the manifest's summary per bench."""
    grid = load_grid(write_grid(tmp_path / "grid.yaml", [{"name": "e", "engine": "echo", "model": "m"}],
                                [{"name": "he", "kind": "humaneval", "subset": 2}]))
    store = ResultsStore(tmp_path / "results")
    assert run_in_process(grid, store) == 2
    rows = store.read().to_pylist()
    assert sorted((r["doc_id"], r["isolation"], r["correct"]) for r in rows) == \
        [("HumanEval/0", "namespaces", False), ("HumanEval/1", "namespaces", False)]  # the echoed prompt fails
    from omk_ray.benches.code_bench import isolation_used

    assert isolation_used(store, "run") == {"he": ["namespaces"]}
