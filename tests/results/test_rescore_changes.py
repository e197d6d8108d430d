"""`rescore` changes a stored score only when the scorer or its inputs changed, prints every change
before writing, and writes more than 10 only with --yes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from omk_ray.cli import app
from omk_ray.config import load_grid
from omk_ray.results.rescore import ScoreChange, rescore
from omk_ray.results.schema import rows_to_table
from omk_ray.results.store import ResultsStore

cli = CliRunner(env={"COLUMNS": "400"})


def setup(tmp_path: Path, docs: int, rows: list[dict]) -> tuple[Path, Path]:
    """A jsonl bench `f` whose doc dN has target "N" (scorer version "1"), and `rows` stored for variant v."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "prompt": "p", "target": str(i)}) + "\n" for i in range(docs)))
    config = tmp_path / "grid.yaml"
    config.write_text("variants: [{name: v, model: m, engine: echo}]\n"
                      f"benches: [{{name: f, kind: jsonl, source: {data}}}]\n")
    full = [{"variant": "v", "variant_fingerprint": "fp", "bench": "f", "repeat": 0, "recipe_hash": "r",
             "correct": False, "metrics": {}, **r} for r in rows]
    ResultsStore(tmp_path / "results").write_shard(rows_to_table(full), "v", "f", "u1")
    return tmp_path / "results", config


def stored(root: Path) -> dict[str, tuple]:
    return {r["doc_id"]: (r["score"], r["scorer_version"], r["error"]) for r in ResultsStore(root).read().to_pylist()}


def shard_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in ResultsStore(root).shard_paths()}


def test_a_score_changes_only_when_its_scorer_or_its_inputs_changed(tmp_path):
    root, config = setup(tmp_path, 5, [
        {"doc_id": "d0", "response": "0", "target": "0", "score": 0.0, "scorer_version": "1"},  # same scorer, inputs
        {"doc_id": "d1", "response": "1", "target": "1", "score": 0.0, "scorer_version": "0"},  # older scorer
        {"doc_id": "d2", "response": "2", "target": "7", "score": 0.0, "scorer_version": "1"},  # target now "2"
        {"doc_id": "d3", "response": "x", "target": "3", "score": 0.0, "scorer_version": "1"},  # nothing changes
        {"doc_id": "d4", "response": "4", "target": "4", "score": None, "scorer_version": "1",
         "error": "scorer error: ValueError: boom"},
    ])
    before = shard_bytes(root)

    done = cli.invoke(app, ["rescore", str(root), "--config", str(config), "--dry-run"])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert "v/f d1#0: 0 -> 1 (scorer 0 -> 1)" in lines
    assert "v/f d2#0: 0 -> 1 (its target changed ('7' -> '2'))" in lines
    assert "v/f d4#0: error -> 1 (its scorer failed before)" in lines
    assert "kept v/f d0#0: 0 (the same scorer now gives 1 for the same inputs)" in lines
    assert not any("d3" in line for line in lines)
    assert "3 score(s) would change, 1 kept (same scorer and inputs; --force writes them); nothing written" in lines
    assert shard_bytes(root) == before

    done = cli.invoke(app, ["rescore", str(root), "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "v/f d2#0: 0 -> 1 (its target changed ('7' -> '2'))" in done.output.splitlines()
    assert "3 score(s) changed, 1 kept (same scorer and inputs; --force writes them)" in done.output.splitlines()
    assert stored(root) == {"d0": (0.0, "1", None), "d1": (1.0, "1", None), "d2": (1.0, "1", None),
                            "d3": (0.0, "1", None), "d4": (1.0, "1", None)}

    [again] = rescore(root, grid=load_grid(config))  # nothing left to change but the kept one
    assert (again.changed, again.changes, again.kept) == (0, [], [ScoreChange("d0", 0, 0.0, 1.0, "forced")])
    [forced] = rescore(root, grid=load_grid(config), force=True)
    assert forced.changes == [ScoreChange("d0", 0, 0.0, 1.0, "forced")] and forced.shards == 1
    assert stored(root)["d0"] == (1.0, "1", None)


def test_more_than_ten_changes_are_listed_and_written_only_with_yes(tmp_path):
    root, config = setup(tmp_path, 12, [
        {"doc_id": f"d{i}", "response": str(i), "target": str(i), "score": 0.0, "scorer_version": "0"}
        for i in range(12)])
    before = shard_bytes(root)

    done = cli.invoke(app, ["rescore", str(root), "--config", str(config)])
    assert done.exit_code == 2, done.output
    lines = done.output.splitlines()
    assert all(f"v/f d{i}#0: 0 -> 1 (scorer 0 -> 1)" in lines for i in range(12)), done.output
    assert "12 score(s) would change; nothing written" in lines
    assert ("error: 12 stored scores would change (more than 10): nothing written; check the changes above, then "
            "rerun with --yes to write them") in " ".join(done.output.split())
    assert shard_bytes(root) == before and set(stored(root).values()) == {(0.0, "0", None)}

    done = cli.invoke(app, ["rescore", str(root), "--config", str(config), "--yes"])
    assert done.exit_code == 0, done.output
    assert "12 score(s) changed" in done.output.splitlines()
    rows = ResultsStore(root).read().to_pylist()
    assert {(r["score"], r["scorer_version"], dict(r["metrics"])["score@0"]) for r in rows} == {(1.0, "1", 0.0)}
