"""Imports keep what their logs say and claim nothing more: the recipe (from the log, the grid or --recipe),
the farm's bench names and ids, empty answers without a recorded cause, length caps inferred from the log's
max_gen_toks; and `status` shows a folder that holds only imports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers.bench_data import LOGS
from helpers.samples import grid_config, sample, write_store
from omk_ray.analysis.card import to_card
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.cli import app
from omk_ray.config import Recipe, load_grid
from omk_ray.results.importers import import_lcb, import_lmeval, imported_recipes
from omk_ray.results.store import ResultsStore

CANONICAL = Path(__file__).resolve().parents[2] / "configs" / "canonical.yaml"
LCB = LOGS / "lcb_medium_55" / "lcb_result.samples.jsonl"
runner = CliRunner()


def responses(samples: Path) -> dict[int, str]:
    """The first response of every doc of an lm-eval samples log, read independently of the importer."""
    out = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        text = s["resps"]
        while isinstance(text, list):
            text = text[0] if text else ""
        out.setdefault(s["doc_id"], text or "")
    return out


def test_humaneval_is_filed_under_the_farms_bench_and_ids_and_pairs_with_farm_rows(tmp_path):
    grid = load_grid(CANONICAL)
    [report] = import_lmeval(LOGS / "humaneval_full", "imported", tmp_path, grid)
    assert (report.bench, report.rows) == ("humaneval", 164)
    rows = ResultsStore(tmp_path).read().to_pylist()
    assert sorted(r["doc_id"] for r in rows) == sorted(f"HumanEval/{i}" for i in range(164))
    recorded = imported_recipes(tmp_path)[("imported", "humaneval")]
    assert (recorded["source"], recorded["max_gen_toks"], recorded["temperature"]) == ("log", 16384, 0.0)
    assert recorded["unstated"] == []  # the log states its max_gen_toks
    assert {r["recipe_hash"] for r in rows} == {
        Recipe(**{k: v for k, v in recorded.items() if k not in ("source", "unstated")}).hash}
    # the farm's own humaneval rows (ids HumanEval/N) under a run manifest: every problem pairs
    farm = [sample("farm", "humaneval", f"HumanEval/{i}", i % 5 != 0) for i in range(164)]
    write_store(tmp_path, farm, [grid_config([{"name": "farm"}], ["humaneval"])])
    c = compare(tmp_path, CompareOptions(baseline="farm", resamples=200))
    [board] = c.rows("scoreboard")
    assert (board["bench"], board["n"], board["baseline_docs"], board["variant_docs"]) == ("humaneval", 164, 164, 164)
    [note] = [n for n in c.guard.notes if n.mark == "†"]  # another recipe, as the import recorded it: said
    assert note.text.startswith("humaneval: imported ran another recipe than farm (imported: max_gen_toks=16384")


def test_an_lcb_import_without_a_recipe_is_marked_unknown(tmp_path):
    for variant in ("128e", "v4"):
        import_lcb(LCB, variant, tmp_path)
    assert imported_recipes(tmp_path) == {("128e", "lcb_medium"): None, ("v4", "lcb_medium"): None}
    c = compare(tmp_path, CompareOptions(baseline="128e", resamples=200))
    card = to_card(c)
    assert "| lcb_medium (55)¶ | 89.09% ±4.24 (49/55) | 89.09% ±4.24 (49/55) |" in card
    assert ("¶ lcb_medium: the recipe of 128e and v4 was not recorded (imported without one; `omk-ray import ... "
            "--recipe`): whether v4 and 128e ran like for like is unknown") in card
    # the runner's finish reasons are exact: its one capped output keeps its cause
    assert [(r["variant"], r["kind"], r["examples"]) for r in c.rows("anomalies")] == [
        ("128e", "length-cap-answer", ["lcb/leetcode/3715"]), ("v4", "length-cap-answer", ["lcb/leetcode/3715"])]


def test_an_lcb_import_with_recipes_marks_the_asymmetry(tmp_path):
    done = runner.invoke(app, ["import", "lcb", str(LCB), "-v", "128e", "-r", str(tmp_path),
                               "--recipe", "max_gen_toks=16384"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["import", "lcb", str(LCB), "-v", "v4", "-r", str(tmp_path), "--recipe", "max_gen_toks=16384",
                               "--recipe", "enable_thinking=true", "--recipe", "thinking_budget=12288"])
    assert done.exit_code == 0, done.output
    recipes = imported_recipes(tmp_path)
    assert recipes[("v4", "lcb_medium")]["thinking_budget"] == 12288 and recipes[("v4", "lcb_medium")]["source"] == "--recipe"
    assert recipes[("128e", "lcb_medium")]["enable_thinking"] is False
    card = to_card(compare(tmp_path, CompareOptions(baseline="128e", resamples=200)))
    assert "| lcb_medium (55)† |" in card
    assert ("† lcb_medium: v4 ran another recipe than 128e (v4: enable_thinking=True, thinking_budget=12288; 128e: "
            "enable_thinking=False, thinking_budget=None), as recorded on import") in card
    assert ("Sampler per bench: lcb_medium: 128e greedy, max_gen_toks 16,384; v4 greedy, thinking on (budget 12,288), "
            "max_gen_toks 16,384.") in card
    bad = runner.invoke(app, ["import", "lcb", str(LCB), "-v", "x", "-r", str(tmp_path), "--recipe", "budget=1"])
    assert bad.exit_code == 2 and "'budget' is not a recipe key" in bad.output
    bad = runner.invoke(app, ["import", "lcb", str(LCB), "-v", "x", "-r", str(tmp_path), "--recipe", "thinking_budget=9"])
    assert bad.exit_code == 2 and "thinking_budget is set but enable_thinking is false" in bad.output


def test_the_grid_gives_an_lcb_import_its_variants_recipe(tmp_path):
    """The canonical grid's asymmetric LCB recipe: 98e-v4 thinks with a budget, 128e does not."""
    for variant in ("128e", "98e-v4"):
        done = runner.invoke(app, ["import", "lcb", str(LCB), "-v", variant, "-r", str(tmp_path), "--config",
                                   str(CANONICAL)])
        assert done.exit_code == 0, done.output
    recipes = imported_recipes(tmp_path)
    v4, base = recipes[("98e-v4", "lcb_medium")], recipes[("128e", "lcb_medium")]
    assert (v4["source"], v4["enable_thinking"], v4["thinking_budget"], v4["max_gen_toks"]) == (
        "grid, grid override", True, 12288, 16384)
    assert (base["source"], base["enable_thinking"], base["chat_template"]) == ("grid", False, True)
    card = to_card(compare(tmp_path, CompareOptions(baseline="128e", resamples=200)))
    assert ("† lcb_medium: 98e-v4 ran another recipe than 128e (98e-v4: enable_thinking=True, thinking_budget=12288; "
            "128e: enable_thinking=False, thinking_budget=None), as recorded on import") in card


def test_imported_empties_claim_no_cause_and_caps_are_inferred(tmp_path):
    log = tmp_path / "ifeval"
    shutil.copytree(LOGS / "ifeval_100", log)
    # a copy of the real log whose run asked for at most 2000 tokens (the real run: 16384), so that its longest
    # answers sit at that cap by the chars / 4 estimate
    [results] = log.glob("results_*.json")
    data = json.loads(results.read_text())
    data["config"]["gen_kwargs"]["max_gen_toks"] = 2000
    data["configs"]["ifeval"]["generation_kwargs"]["max_gen_toks"] = 2000
    results.write_text(json.dumps(data))
    texts = responses(next(log.glob("samples_*.jsonl")))
    capped = {d for d, t in texts.items() if len(t) / 4 >= 2000}
    empty = {d for d, t in texts.items() if not t.strip()}
    assert (len(texts), len(empty), len(capped)) == (100, 17, 2)
    for variant in ("a", "b"):
        import_lmeval(log, variant, tmp_path / "results")
    import_lmeval(LOGS / "humaneval_full", "a", tmp_path / "results")
    import_lmeval(LOGS / "humaneval_full", "b", tmp_path / "results")
    c = compare(tmp_path / "results", CompareOptions(baseline="a", resamples=200))
    kinds = {(r["bench"], r["variant"], r["kind"]): r for r in c.rows("anomalies")}
    assert not any(kind == "silent-empty" for _, _, kind in kinds)  # no finish reason: no cause claimed
    assert kinds[("ifeval", "b", "empty-unrecorded")]["count"] == 17
    assert kinds[("humaneval_chat", "b", "empty-unrecorded")]["count"] == 86
    cap = kinds[("ifeval", "b", "length-cap-inferred")]
    assert cap["count"] == 2 and cap["detail"].endswith(
        f"inferred: up to {max(len(texts[d]) for d in capped) / 4:,.0f} output tokens against max_gen_toks 2,000 "
        "(no finish reason recorded)")
    card = to_card(c)
    assert "| ifeval | b | empty answer (cause not recorded); 17 of 17 scored wrong | 17/100 |" in card
    assert "| ifeval | b | length cap (inferred from the output's length); " in card
    assert "silent-empty" not in card


def test_status_of_a_folder_holding_only_imports(tmp_path):
    import_lcb(LCB, "v4", tmp_path)
    import_lmeval(LOGS / "gsm8k_100", "v4", tmp_path)
    done = runner.invoke(app, ["status", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "imported samples (no run: nothing expected or missing)" in done.output
    lines = [" ".join(line.replace("│", " ").split()) for line in done.output.splitlines()]
    assert any(line.startswith("v4 gsm8k 100 100 0 gsm8k_100/samples_gsm8k_") and line.endswith("from log")
               for line in lines), done.output
    assert any(line.startswith("v4 lcb_medium 55 55 0 lcb_medium_55/lcb_result.samples.jsonl not recorded")
               for line in lines), done.output
    empty = runner.invoke(app, ["status", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "no runs recorded" in empty.output


@pytest.mark.parametrize("values", [["enable_thinking"], ["=3"]])
def test_recipe_values_are_key_value(tmp_path, values):
    done = runner.invoke(app, ["import", "lcb", str(LCB), "-v", "x", "-r", str(tmp_path), "--recipe", *values])
    assert done.exit_code == 2 and "expected KEY=VALUE" in done.output
