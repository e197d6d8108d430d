"""The card says only what the data shows: verdicts by the corrected test with power beside them, a bench the
baseline lacks kept, the seed's layout details, exposure compared within domains, and no machine's folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, mannwhitneyu

from helpers.samples import bench_rows, grid_config, write_store
from omk_ray.analysis.card import CardOptions, facts_footnote, to_card
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.experts import WITHIN, exposure_within
from omk_ray.analysis.markdown import to_markdown
from omk_ray.analysis.report import write_report
from omk_ray.analysis.sections import abbreviated, metric_label, without_machine_paths

REPO = Path(__file__).resolve().parents[2]
ABSOLUTE = re.compile(r"(?<![\w<.:/~-])/(?:tmp|work|home|root|usr|var|mnt|opt|Users|private)/")


def demo_shaped_grid(root: Path):
    """The demo's max-split against the baseline on 400 problems: 20 lost, 6 gained (−3.50pp, McNemar p = 0.009),
    Holm-corrected over a grid of four arms where one loses a hundred problems (max-split's Holm p = 3 x 0.009)."""
    base = [i < 360 for i in range(400)]
    split = [(i >= 20 if i < 360 else i < 366) for i in range(400)]
    nvfp4 = [(i >= 4 if i < 360 else i < 362) for i in range(400)]
    geomean = [i >= 100 and i < 360 for i in range(400)]
    rows = bench_rows("toy", "toy", base) + bench_rows("max-split", "toy", split)
    rows += bench_rows("toy-nvfp4", "toy", nvfp4) + bench_rows("toy-hf", "toy", base) + bench_rows("geomean", "toy", geomean)
    config = grid_config([{"name": n} for n in ("toy", "max-split", "toy-nvfp4", "toy-hf", "geomean")], ["toy"])
    return write_store(root, rows, [config])


def test_a_significant_difference_below_the_mde_reads_significant(tmp_path):
    demo_shaped_grid(tmp_path / "results")
    c = compare(tmp_path / "results", CompareOptions(baseline="toy", resamples=200))
    board = {r["variant"]: r for r in c.rows("scoreboard")}
    split = board["max-split"]
    p = binomtest(6, 26).pvalue
    assert (split["delta_pp"], split["lost"], split["gained"]) == (pytest.approx(-3.5), 20, 6)
    assert split["p_value"] == pytest.approx(p) and round(p, 3) == 0.009
    assert split["p_holm"] == pytest.approx(3 * p) and round(3 * p, 3) == 0.028  # rank 2 of 4: x3
    assert split["significant"] and not split["detectable"] and split["mde_pp"] > 3.5  # power: below the MDE
    assert not board["toy-nvfp4"]["significant"] and not board["toy-hf"]["significant"]
    card = to_card(c)
    assert "| −3.50pp (significant; below MDE) |" in card
    assert "| −0.50pp (not significant; below MDE) |" in card and "| 0.00pp |" in card
    assert "significant: its paired test (exact McNemar for pass/fail, paired bootstrap for graded scores) gives " \
           "p ≤ 0.05 after Holm's correction over every variant × bench" in card
    assert "below MDE: power information, not a verdict" in card
    assert "A significant Δ stays significant when it is below MDE" in card
    report = to_markdown(c)
    [line] = [x for x in report.splitlines() if x.startswith("| toy (400) | 90.00% | 86.50% |")]
    assert "| −3.50pp |" in line and "| 0.009 (0.028) | significant |" in line and "| below MDE |" in line
    assert "verdict: significant: its paired test" in report


def test_domain_rows_word_the_verdict_the_same_way(tmp_path):
    base = bench_rows("base", "b", [True] * 60)
    var = bench_rows("v", "b", [i >= 12 for i in range(30)] + [i != 0 for i in range(30)])
    for rows in (base, var):
        for i, r in enumerate(rows):
            r["domain"] = "arith" if i < 30 else "logic"
    write_store(tmp_path, base + var)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    domains = {r["domain"]: r for r in c.rows("domains")}
    assert domains["arith"]["p_value"] == pytest.approx(2 ** -11)  # 12 lost, 0 gained
    assert domains["arith"]["p_holm"] == pytest.approx(2 * 2 ** -11) and domains["logic"]["p_holm"] == 1.0
    card = to_card(c)
    assert "| arith | 30 | 100.0% | 60.0% | −40.0 (significant) |" in card
    assert "| logic | 30 | 100.0% | 96.7% | −3.3 (not significant; below MDE) |" in card
    report = to_markdown(c)
    assert f"| {2 ** -11:.3f}".replace("0.000", "<0.001") in report or "| <0.001 (<0.001) | significant |" in report


def test_a_bench_the_baseline_lacks_keeps_the_variants_own_numbers(tmp_path):
    rows = bench_rows("128e", "lcb8k", [i < 48 for i in range(55)]) + bench_rows("v4", "lcb8k", [i < 43 for i in range(55)])
    at_cap = {f"d{i}" for i in (50, 51, 52)}
    rows += [dict(r, finish_reason="length", completion_tokens=16384, response="x" * 100) if r["doc_id"] in at_cap else r
             for r in bench_rows("v4", "lcb16k", [i < 43 for i in range(55)])]
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="128e", resamples=200))
    assert c.benches == ["lcb16k", "lcb8k"] and c.unpaired == ["lcb16k"]
    assert [r["bench"] for r in c.rows("scoreboard")] == ["lcb8k"]
    card = to_card(c)
    assert "| lcb16k (55) | — | 78.18% ±5.62 (43/55) | no baseline |" in card
    # 5 lost, 0 gained: McNemar p = 2^-4 = 0.0625
    assert "| lcb8k (55) | 87.27% ±4.54 (48/55) | 78.18% ±5.62 (43/55) | −9.09pp (not significant; below MDE) |" in card
    assert "no baseline: lcb16k has no samples of 128e" in card
    # its own token distribution, max at the cap: 52 answers of 4 tokens and 3 of 16,384
    assert f"| lcb16k | v4 | 4 | 4 | 4 | 16,384 | {(52 * 4 + 3 * 16384) / 55:,.0f} | 49,360 |" in card
    anomalies = [r for r in c.rows("anomalies") if r["bench"] == "lcb16k"]
    assert [(r["kind"], r["count"], r["examples"]) for r in anomalies] == [
        ("length-cap-answer", 3, ["d50", "d51", "d52"])]
    assert "| lcb16k | v4 | length cap hit in the answer; 3 of 3 scored wrong | 3/55 | −5.45pp | d50, d51, d52 |" in card
    report = to_markdown(c)
    assert "left out of every table" not in report
    assert "| lcb16k | v4 | 55 | 78.18% | no baseline |" in report


def test_the_seed_layout_details(tmp_path):
    assert metric_label("prompt_level_strict_acc,none") == "prompt-strict"
    assert metric_label("exact_match,flexible-extract") == "exact match/flexible-extract"
    assert metric_label("score") == "" and metric_label(None) == ""
    # the seed's supplementary totals: 54.9k, 84.0k, 112k, 178k, 270k
    assert [abbreviated(x) for x in (54_900, 84_000, 112_000, 178_000, 270_400, 950)] == [
        "54.9k", "84k", "112k", "178k", "270k", "950"]
    rows = bench_rows("128e", "ifeval", [i < 94 for i in range(100)]) + bench_rows("v4", "ifeval", [i < 87 for i in range(100)])
    config = grid_config([{"name": "128e"}, {"name": "v4"}], ["ifeval"])  # the rows' recipe: the default
    config["benches"][0]["options"] = {"primary_metric": "prompt_level_strict_acc,none"}
    for r in rows:
        r["metrics"] = {"prompt_level_strict_acc,none": r["score"]}
    write_store(tmp_path, rows, [config])
    c = compare(tmp_path, CompareOptions(baseline="128e", resamples=200))
    card = to_card(c, CardOptions(abbreviate=True, stats=("median", "total")))
    assert "| ifeval (100, prompt-strict) | 94.00% ±2.39 (94/100) | 87.00% ±3.38 (87/100) |" in card
    assert "Sampler per bench: ifeval: greedy, max_gen_toks 256 (every variant)." in card
    totals = [line.rsplit("|", 2)[-2].strip() for line in card.splitlines() if line.startswith("| ifeval | ")]
    assert totals == [abbreviated(sum(max(1, len(f"The answer is d{i}.") // 4) for i in range(100)))] * 2


def test_footnotes_say_where_each_variants_facts_come_from():
    assert facts_footnote({"toy": ["headers"], "max": ["headers"]}).startswith(
        "Parameters are summed over the safetensors headers (no weight is read); active =")
    mixed = facts_footnote({"toy": ["headers"], "q8": ["gguf"], "v4": ["declared"], "v3": ["headers", "declared"]})
    assert mixed.startswith(
        "Parameters of toy, v3 (partly declared in the grid): summed over the safetensors headers (no weight is read); "
        "of q8: read from the GGUF file's tensor table and metadata with `gguf` (no weight is read); "
        "of v4: declared in the grid (`facts:`), not read from a checkpoint; active =")


def confounded_exposures() -> list[dict]:
    """The demo's confound in miniature: arith routes ~40% to the dropped experts, logic ~10%; every lost problem
    is arith, and within arith lost and kept problems are equally exposed (interleaved)."""
    rows = [{"domain": "arith", "outcome": "lost", "exposure": 0.40 + 0.001 * i} for i in range(20)]
    rows += [{"domain": "arith", "outcome": "both_correct", "exposure": 0.4005 + 0.001 * i} for i in range(20)]
    rows += [{"domain": "logic", "outcome": "both_correct", "exposure": 0.10 + 0.001 * i} for i in range(20)]
    return rows


def test_exposure_is_compared_within_domains():
    rows = confounded_exposures()
    lost = [r["exposure"] for r in rows if r["outcome"] == "lost"]
    kept = [r["exposure"] for r in rows if r["outcome"] == "both_correct"]
    pooled = mannwhitneyu(lost, kept, alternative="two-sided")
    assert 2 * pooled.statistic / (20 * 40) - 1 == pytest.approx(0.475) and pooled.pvalue < 0.005  # the pooled mirage
    within = {r["stratum"]: r for r in exposure_within(rows, "toy", "max")}
    arith, logic, combined = within["arith"], within["logic"], within[WITHIN]
    assert (arith["n_lost"], arith["n_both_correct"], arith["rank_biserial"]) == (20, 20, pytest.approx(-0.05))
    assert arith["p_value"] == pytest.approx(mannwhitneyu(lost, kept[:20], alternative="two-sided").pvalue)
    assert (logic["n_lost"], logic["weight"]) == (0, 0) and np.isnan(logic["rank_biserial"])  # cannot tell
    assert combined["rank_biserial"] == pytest.approx(-0.05) and combined["p_value"] > 0.5
    assert abs(combined["p_value"] - arith["p_value"]) < 0.05  # one informative stratum: the permutation ~ exact U


def test_a_real_within_domain_difference_is_found():
    rng = np.random.default_rng(0)
    rows = []
    for domain, level in (("arith", 0.4), ("logic", 0.1)):
        rows += [{"domain": domain, "outcome": "lost", "exposure": level + 0.05 + 0.01 * rng.random()} for _ in range(10)]
        rows += [{"domain": domain, "outcome": "both_correct", "exposure": level + 0.01 * rng.random()} for _ in range(30)]
    within = {r["stratum"]: r for r in exposure_within(rows, "b", "v", permutations=2000)}
    assert within["arith"]["rank_biserial"] == 1.0 and within["logic"]["rank_biserial"] == 1.0
    assert within[WITHIN]["rank_biserial"] == 1.0 and within[WITHIN]["p_value"] == pytest.approx(1 / 2001)


def test_no_machine_paths_in_the_report_or_the_card(tmp_path):
    """Checkpoints, results and logs in this machine's folders: the card, report.md and report.html name none."""
    rows = bench_rows("toy", "toy", [i % 10 != 0 for i in range(40)]) + bench_rows("max", "toy", [i % 4 != 0 for i in range(40)])
    rows += [dict(r, response="", finish_reason=None) if r["doc_id"] in ("d1", "d2") else r
             for r in bench_rows("max", "extra", [True] * 10)]
    config = grid_config([{"name": "toy", "model": str(tmp_path / "ckpt" / "toy")},
                          {"name": "max", "model": str(tmp_path / "ckpt" / "max")}], ["toy"])
    store = write_store(tmp_path / "results", rows, [config])
    manifest = store.runs()[0].manifest()
    manifest["model_paths"] = {"toy": str(tmp_path / "ckpt" / "toy"), "max": str(REPO / "artifacts" / "max")}
    store.runs()[0].write_manifest(manifest)
    c = compare(tmp_path / "results", CompareOptions(baseline="toy", resamples=200))
    paths = write_report(c, tmp_path / "report")
    outputs = {"card": to_card(c), **{k: Path(paths[k]).read_text() for k in ("markdown", "html", "card")}}
    for name, text in outputs.items():
        assert str(tmp_path) not in text and str(REPO) not in text, name
        assert not ABSOLUTE.search(re.sub(r"<[^>]*>", " ", text)), (name, ABSOLUTE.search(text))
        assert "drops no experts?" not in text and "(drops no" not in text, name
    assert "results folder `results`" in outputs["markdown"]
    assert without_machine_paths("ckpt /tmp/x/y/model has none; 30/layer; http://a/b") == \
        "ckpt y/model has none; 30/layer; http://a/b"


def test_the_readme_demo_card_names_no_machine_folder():
    text = (REPO / "README.md").read_text()
    card = text.split("<!-- demo-card:begin -->")[1].split("<!-- demo-card:end -->")[0]
    assert not ABSOLUTE.search(card), ABSOLUTE.search(card)
    assert "drops no experts?" not in card and "results from `/" not in card
    assert json.dumps(card)  # a plain text block
