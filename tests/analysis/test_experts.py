"""Dropped-expert exposure: hand-made routing whose tables are worked out by hand, and a tiny real
model whose exposure is computed independently from its router's own outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import write_farm_store
from typer.testing import CliRunner

from omk_ray.analysis.experts import Routing, exposure_tables
from omk_ray.analysis.samples import AnalysisError, Pair
from omk_ray.cli import app

# Two layers, four experts; the variant drops expert 1 of layer 0 and expert 3 of layer 1.
DROP = {"0": [1], "1": [3]}


def layer_pair(keep: float, drop: float) -> list[list[float]]:
    """Layer 0: `keep` on expert 0, `drop` on expert 1; layer 1: `keep` on 0, `drop` on 3: exposure drop / (keep + drop)."""
    return [[keep, drop, 0, 0], [keep, 0, 0, drop]]


# doc: (outcome, domain, subdomain, weights [layers][experts]); exposure by hand in the comment
DOCS = {
    "d1": ("lost", "chem", "organic", None),                   # 0.5 (prompt 0, answer 1, tokens 0.25: see below)
    "d2": ("lost", "chem", "general", layer_pair(0.8, 1.2)),   # 0.6
    "d3": ("both_correct", "chem", "organic", layer_pair(1.8, 0.2)),  # 0.1
    "d4": ("both_correct", "phys", None, layer_pair(1.6, 0.4)),  # 0.2
    "d5": ("both_correct", "phys", None, layer_pair(0.9, 1.1)),  # 0.55
    "d6": ("gained", "phys", None, layer_pair(2.0, 0.0)),      # 0.0
    "d7": (None, "bio", None, layer_pair(0.0, 2.0)),           # 1.0, the variant did not answer it
}


def hand_routing() -> tuple[Routing, Pair, dict]:
    docs = list(DOCS)
    weight = np.zeros((len(docs), 3, 2, 4))
    for i, (_, _, _, w) in enumerate(DOCS.values()):
        if w is not None:
            weight[i, 0] = w  # all in the prompt segment
    weight[0, 0] = [[1, 0, 0, 0], [0, 0, 1, 0]]  # d1: its prompt avoids the dropped experts ...
    weight[0, 2] = [[0, 1, 0, 0], [0, 0, 0, 1]]  # ... and its answer uses nothing else: 2 / 4 = 0.5 overall
    tokens = weight * 10
    tokens[0, 0], tokens[0, 2] = [[3, 0, 0, 0], [0, 0, 3, 0]], [[0, 1, 0, 0], [0, 0, 0, 1]]  # d1 by tokens: 2/8
    paired = [d for d, (outcome, *_) in DOCS.items() if outcome]
    base = np.array([DOCS[d][0] in ("lost", "both_correct") for d in paired])
    var = np.array([DOCS[d][0] in ("gained", "both_correct") for d in paired])
    pair = Pair(bench="b", variant="v", doc_id=pa.array(paired), domain=None, subdomain=None,
                base_score=base.astype(float), var_score=var.astype(float), base_pass=base, var_pass=var,
                baseline_docs=len(paired), variant_docs=len(paired), base_repeats=np.ones(len(paired)),
                var_repeats=np.ones(len(paired)), base_repeat_var=np.full(len(paired), np.nan),
                var_repeat_var=np.full(len(paired), np.nan))
    labels = {d: (dom, sub) for d, (_, dom, sub, _) in DOCS.items()}
    return Routing("b", docs, [0, 1], weight, tokens), pair, {"b": labels}


def test_exposure_tables_match_the_hand_computation():
    routing, pair, labels = hand_routing()
    tables = {k: t.to_pylist() for k, t in exposure_tables({"b": routing}, {"v": DROP}, [pair], labels).items()}
    exposure = {r["doc_id"]: r for r in tables["exposure"]}
    expected = {"d1": 0.5, "d2": 0.6, "d3": 0.1, "d4": 0.2, "d5": 0.55, "d6": 0.0, "d7": 1.0}
    assert {d: round(r["exposure"], 12) for d, r in exposure.items()} == expected
    assert exposure["d2"]["exposure_per_layer"] == pytest.approx([0.6, 0.6])
    assert exposure["d1"]["exposure_per_layer"] == pytest.approx([0.5, 0.5])
    assert exposure["d1"]["exposure_prompt"] == 0 and exposure["d1"]["exposure_answer"] == 1
    assert math.isnan(exposure["d1"]["exposure_reasoning"]) and exposure["d1"]["exposure_tokens"] == 0.25
    assert [exposure[d]["outcome"] for d in DOCS] == ["lost", "lost", "both_correct", "both_correct", "both_correct",
                                                       "gained", "unpaired"]

    tests = {(t["group_a"], t["group_b"]): t for t in tables["exposure_tests"]}
    # lost [0.5, 0.6] vs both correct [0.1, 0.2, 0.55]: U = 2 + 3 = 5 of 6 pairs, r = 2*5/6 - 1 = 2/3;
    # exact two-sided p: of the 10 rankings of 2 among 5, U >= 5 in 2 -> 2 * 2/10 = 0.4
    main = tests[("lost", "both_correct")]
    assert (main["n_a"], main["n_b"], main["u"]) == (2, 3, 5)
    assert main["rank_biserial"] == pytest.approx(2 / 3) and main["p_value"] == pytest.approx(0.4)
    assert (main["median_a"], main["median_b"]) == (pytest.approx(0.55), pytest.approx(0.2))
    gained = tests[("gained", "both_correct")]  # [0.0] vs three larger: U = 0, r = -1, p = 2 * 1/4
    assert (gained["u"], gained["rank_biserial"], gained["p_value"]) == (0, -1, pytest.approx(0.5))

    domains = {(r["level"], r["domain"], r["subdomain"]): r for r in tables["exposure_domains"]}
    chem = domains[("domain", "chem", None)]  # d1 d2 d3: mean (0.5 + 0.6 + 0.1) / 3
    assert chem["n"] == 3 and chem["exposure_mean"] == pytest.approx(0.4) and chem["lost"] == 2
    assert chem["lost_exposure"] == pytest.approx(0.55) and chem["both_correct_exposure"] == pytest.approx(0.1)
    phys = domains[("domain", "phys", None)]  # d4 d5 d6
    assert phys["exposure_mean"] == pytest.approx(0.25) and (phys["lost"], phys["gained"]) == (0, 1)
    assert domains[("domain", "bio", None)]["paired"] == 0
    assert domains[("subdomain", "chem", "organic")]["exposure_mean"] == pytest.approx(0.3)

    # Both dropped experts get 0.5 and 0.6 of their layer in the lost problems (> 1/4: touched twice);
    # in the both-correct ones 0.1, 0.2, 0.55: lift 0.55 / 0.28333
    experts = tables["exposure_experts"]
    assert [(r["layer"], r["expert"], r["lost_touched"]) for r in experts] == [(0, 1, 2), (1, 3, 2)]
    assert experts[0]["lost_share"] == pytest.approx(0.55) and experts[0]["lift"] == pytest.approx(0.55 / (0.85 / 3))
    assert experts[0]["top_domain"] == "chem"
    usage = {(r["domain"], r["layer"], r["expert"]): r["share"] for r in tables["expert_usage"]}
    assert usage[("chem", 0, 1)] == pytest.approx(0.4) and usage[("bio", 1, 3)] == pytest.approx(1.0)
    assert len(usage) == 3 * 2  # the dropped experts only, per domain (chem, phys, bio)


PROBLEMS = [  # id, domain, baseline's answer, outcome
    ("p1", "chem", "1234", "lost"), ("p2", "chem", "water", "lost"), ("p3", "phys", "f = m a", "both_correct"),
    ("p4", "phys", "42", "both_correct"), ("p5", "chem", "salt", "gained"), ("p6", "phys", "c", "both_wrong"),
]


def tiny_results(tmp_path: Path, model: Path) -> tuple[Path, dict]:
    """Baseline and pruned samples of a tiny Gemma 4, the pruned one built by the real surgery."""
    from omk_ray.variants.surgery import prune_checkpoint

    drop_map = {"0": [1, 6], "1": [0, 5]}
    pruned = prune_checkpoint(model, drop_map, tmp_path / "pruned", {"tool": "test"})
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}", "target": "x", "domain": d}) + "\n"
                             for i, d, _, _ in PROBLEMS))
    from omk_ray.config import Recipe

    recipe = Recipe(max_gen_toks=8).hash
    rows = []
    for doc, domain, answer, outcome in PROBLEMS:
        base = outcome in ("lost", "both_correct")
        var = outcome in ("gained", "both_correct")
        common = {"bench": "qa", "doc_id": doc, "repeat": 0, "recipe_hash": recipe, "cohort": "greedy",
                  "finish_reason": "stop", "domain": domain}
        rows.append({**common, "variant": "base", "variant_fingerprint": "fb", "response": answer,
                     "score": float(base), "correct": base})
        rows.append({**common, "variant": "pruned", "variant_fingerprint": "fp", "response": "?",
                     "score": float(var), "correct": var})
    variant = {"engine": "transformers", "engine_args": {"dtype": "float32"}}
    grid = {"name": "t", "recipe": {"max_gen_toks": 8},
            "variants": [{"name": "base", "model": str(model), **variant}, {"name": "pruned", "model": str(pruned), **variant}],
            "benches": [{"name": "qa", "source": str(bench)}]}
    write_farm_store(tmp_path / "results", grid, rows, {"base": str(model), "pruned": str(pruned)})
    return tmp_path / "results", drop_map


def independent_exposure(model_dir: Path, drop_map: dict, prompt: str, answer: str) -> float:
    """The router's own choices over the whole sequence: dropped routing weight over all routing weight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omk_ray.variants.profile import experts_inputs, find_experts_modules

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"] + tok(answer, add_special_tokens=False)["input_ids"]
    sums = {"dropped": 0.0, "all": 0.0}

    def hook(layer):
        def record(module, args, kwargs, output):
            _, index, weights = experts_inputs(args, kwargs)
            dropped = torch.isin(index, torch.tensor(drop_map[str(layer)]))
            sums["dropped"] += float(weights[dropped].sum())
            sums["all"] += float(weights.sum())
        return record

    for layer, module in find_experts_modules(model).items():
        module.register_forward_hook(hook(layer), with_kwargs=True)
    with torch.no_grad():
        model(torch.tensor([ids]))
    return sums["dropped"] / sums["all"]


def test_exposure_of_a_tiny_model_with_a_known_drop_map(tmp_path, tiny_gemma4):
    from omk_ray.analysis.compare import CompareOptions, compare
    from omk_ray.analysis.report import write_report
    from omk_ray.variants.routing import route_variant

    results, drop_map = tiny_results(tmp_path, tiny_gemma4)
    before = CliRunner().invoke(app, ["experts", str(results), "--baseline", "base", "--variant", "pruned"])
    assert before.exit_code == 2 and "omk-ray route" in before.output

    assert route_variant(results, "base", dtype="float32").routed == len(PROBLEMS)
    comparison = compare(results, CompareOptions(baseline="base", resamples=100))  # drop map from the provenance
    exposure = {r["doc_id"]: r for r in comparison.rows("exposure")}
    for doc, _, answer, outcome in PROBLEMS:
        assert exposure[doc]["exposure"] == pytest.approx(
            independent_exposure(tiny_gemma4, drop_map, f"question {doc}", answer), rel=1e-5)
        assert exposure[doc]["outcome"] == outcome
    [main] = [t for t in comparison.rows("exposure_tests") if t["group_a"] == "lost" and t["group_b"] == "both_correct"]
    assert (main["n_a"], main["n_b"]) == (2, 2)

    paths = write_report(comparison, tmp_path / "report")
    assert "## Dropped-expert exposure" in paths["markdown"].read_text()
    html = paths["html"].read_text()
    assert 'id="plot-experts"' in html and html.count("layer 0, expert 1:") == 2  # chem and phys panels
    assert (tmp_path / "report" / "tables" / "exposure.parquet").is_file()

    result = CliRunner().invoke(app, ["experts", str(results), "--baseline", "base", "--variant", "pruned"])
    assert result.exit_code == 0, result.output
    assert "| qa | pruned | 6 |" in result.output and "### Exposure by domain: pruned on qa" in result.output
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"0": [2, 3], "1": [2, 3]}))
    given = compare(results, CompareOptions(baseline="base", resamples=100, drop_maps={"pruned": str(other)}))
    doc, _, answer, _ = PROBLEMS[0]
    assert given.rows("exposure")[0]["exposure"] == pytest.approx(
        independent_exposure(tiny_gemma4, {"0": [2, 3], "1": [2, 3]}, f"question {doc}", answer), rel=1e-5)
    with pytest.raises(AnalysisError, match=r"drop maps given for \['nope'\]"):
        compare(results, CompareOptions(baseline="base", resamples=100, drop_maps={"nope": str(other)}))
    other.write_text(json.dumps({"0": [1], "1": [1], "2": [1]}))
    bad = CliRunner().invoke(app, ["experts", str(results), "-b", "base", "-v", "pruned", "--drop-map", str(other)])
    assert bad.exit_code == 2 and "does not fit the baseline's routing" in bad.output
