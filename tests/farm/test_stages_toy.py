"""End to end on the shipped toy (real builds, the transformers engine, real Ray): the demo's arms with
`farm.stages` on. `geomean` (-54 pp on the canary) is stopped by the canary's comparison with the
baseline, `mean` by the stages' futility bound at 25%, `max-split` (-3.5 pp) and an exact copy of the
baseline run to the end; the card says so; `--resume-stopped` completes `mean` to exactly its full
set of keys; and `--limit 120` passes the canaries the full run passes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from omk_ray.analysis.card import to_card
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.cli import app
from omk_ray.config import load_grid
from omk_ray.farm.runner import run_grid
from omk_ray.results.store import ResultsStore
from omk_ray.toy import data as toy_data


def toy_grid(tmp_path, stages: bool):
    toy = toy_data.shipped("model")
    root = toy.parent
    hf = {"engine": "transformers", "engine_args": {"dtype": "float32", "max_model_len": 256, "batch_size": 32}}
    arm = {"base": str(toy), "profile_prompts": str(root / "toy_profile_prompts.jsonl"), "drop": 6}
    config = {
        "name": "toy-stages", "recipe": {"max_gen_toks": 12, "temperature": 0}, "baseline": "toy-hf",
        "variants": [{"name": "toy-hf", "model": str(toy), **hf}, {"name": "toy-copy", "model": str(toy), **hf},
                     {"name": "geomean", **hf, "build": {**arm, "strategy": "geomean"}},
                     {"name": "mean", **hf, "build": {**arm, "strategy": "mean"}},
                     {"name": "max-split", **hf, "build": {**arm, "strategy": "max", "split_classes": ["arith"]}}],
        "benches": [{"name": "toy", "kind": "jsonl", "source": str(root / "bench.jsonl")}],
        "farm": {"canary": {"docs": 24}, "stages": {"enabled": stages}, "max_engines": 2},
        "artifacts": str(tmp_path / "artifacts"),
    }
    path = tmp_path / f"grid-{stages}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_toy_grid_with_stages_stops_the_losing_arms_and_resumes_one_to_full(tmp_path, local_ray):
    path = toy_grid(tmp_path, stages=True)
    results = tmp_path / "results"
    summary = run_grid(load_grid(path), results, show_progress=False)
    canary = summary.canary
    assert canary["geomean"].stopped and [r.rule for r in canary["geomean"].rules if not r.passed] == ["baseline"]
    assert all(canary[v].passed for v in ("toy-hf", "toy-copy", "mean", "max-split"))
    assert list(summary.stops) == ["mean"]
    mean = summary.stops["mean"]
    assert (mean["rule"], mean["stage"], mean["n"], mean["of"]) == ("futility", "25%", 100, 400)
    assert mean["upper_pp"] < -5 and mean["text"].startswith("stopped at 100/400: Δ <= ")
    store = ResultsStore(results)
    done = {}
    for r in store.read(columns=["variant", "doc_id"]).to_pylist():
        done[r["variant"]] = done.get(r["variant"], 0) + 1
    assert done["toy-hf"] == done["toy-copy"] == done["max-split"] == 400 and done["geomean"] == 24
    assert 100 <= done["mean"] < 400 and summary.skipped == 376 + 400 - done["mean"]

    c = compare(results, CompareOptions(baseline="toy-hf", resamples=200))
    card = to_card(c)
    assert f"mean stopped early (farm.stages, run {summary.run_id}) at 25%: {mean['text']}" in card
    # engine hours are measured time (a loaded machine moves them): that they are reported, not how many
    assert c.cost is not None and 0 < c.cost.spent < c.cost.full and "Engine time: " in card

    resumed = CliRunner().invoke(app, ["run", str(path), "--results", str(results), "--resume-stopped", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    last = store.runs()[-1].records().manifest
    assert last.resumed_stopped == ["geomean", "mean"] and last.stops == {}
    for arm in ("mean", "geomean"):
        raw = [r["doc_id"] for p in store.shard_paths()
               for r in pq.read_table(p, columns=["variant", "doc_id"]).to_pylist() if r["variant"] == arm]
        assert len(set(raw)) == len(raw) == 400  # the full set of keys, each generated once
    assert compare(results, CompareOptions(baseline="toy-hf", resamples=200)).stops == {}

    limited = CliRunner().invoke(app, ["run", str(toy_grid(tmp_path, stages=False)), "--results",
                                       str(tmp_path / "limited"), "--limit", "120", "--no-progress"])
    assert limited.exit_code == 1  # geomean's canary stops it, as in the full run
    verdicts = ResultsStore(tmp_path / "limited").runs()[-1].records().manifest.canary
    assert {v: r.passed for v, r in verdicts.items()} == {v: canary[v].passed for v in canary}
