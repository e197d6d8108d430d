"""Every table of the comparison on small hand-made results whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from helpers.samples import bench_rows, sample, write_store
from helpers.gpqa import CARD_GPQA  # the seed card's GPQA-Diamond analysis, per subdomain
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.markdown import to_markdown
from omk_ray.analysis.report import write_report
from omk_ray.analysis.samples import AnalysisError
from omk_ray.analysis.stats import holm, mcnemar_exact, mcnemar_interval, mcnemar_mde

# GPQA-like bench: 10 problems, 5 physics (3 QM, 2 astro) and 5 chemistry (all organic).
GPQA_BASE = [1, 1, 1, 1, 0, 0, 1, 1, 1, 0]
GPQA_V4 = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]  # both right 4, both wrong 2, lost d6 d7 d8, gained d9
DOMAINS = [("Physics", "Quantum Mechanics")] * 3 + [("Physics", "Astrophysics")] * 2 + [("Chemistry", "Organic Chemistry")] * 5
LOOP = "Let me reconsider the constraint once more. " * 200


def gpqa(variant, outcomes):
    return [sample(variant, "gpqa", f"d{i}", o, domain=d, subdomain=s)
            for i, (o, (d, s)) in enumerate(zip(outcomes, DOMAINS))]


def gsm8k(variant, empty_docs=()):
    """20 problems; the scorer's strict filter fails everything, the flexible one follows `correct`."""
    rows = []
    for i in range(20):
        empty = i in empty_docs
        ok = not empty
        rows.append(sample(
            variant, "gsm8k", f"d{i}", ok,
            response="" if empty else "x" * (4 * (i + 1)),
            completion_tokens=0 if empty else i + 1,
            metrics={"exact_match,strict-match": 0.0, "exact_match,flexible-extract": float(ok)},
        ))
    return rows


def lcb(variant, broken: bool):
    rows = bench_rows(variant, "lcb", [True] * 10, reasoning="thinking", reasoning_tokens=50)
    if broken:
        rows[0].update(finish_reason="length_in_reasoning", response="", reasoning=LOOP, score=0.0, correct=False)
        rows[1].update(finish_reason="length_in_reasoning", response="", score=0.0, correct=False)
        rows[2].update(finish_reason="length", response="def f():\n    return 1", score=0.0, correct=False)
        rows[3].update(response="<|channel>thought leaked<channel|> answer")  # still scored right
    return rows


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    rows = (
        gpqa("base", GPQA_BASE) + gpqa("v4", GPQA_V4)
        + gsm8k("base") + gsm8k("v4", empty_docs=(3, 7))
        + lcb("base", broken=False) + lcb("v4", broken=True)
    )
    write_store(root, rows)
    return root


@pytest.fixture(scope="module")
def comparison(results):
    return compare(results, CompareOptions(baseline="base", resamples=1000))


def by(rows, **keys):
    found = [r for r in rows if all(r[k] == v for k, v in keys.items())]
    assert len(found) == 1, (keys, found)
    return found[0]


def test_scoreboard_deltas_and_mcnemar(comparison):
    row = by(comparison.rows("scoreboard"), bench="gpqa", variant="v4")
    assert (row["n"], row["lost"], row["gained"]) == (10, 3, 1)
    assert row["baseline_score"] == pytest.approx(70.0)
    assert row["variant_score"] == pytest.approx(50.0)
    assert row["delta_pp"] == pytest.approx(-20.0)
    assert row["test"] == "mcnemar-exact"
    assert row["p_value"] == pytest.approx(binomtest(1, 4, 0.5).pvalue)  # 0.625
    assert (row["ci_low_pp"], row["ci_high_pp"]) == pytest.approx([100 * b for b in mcnemar_interval(3, 1, 10)])
    assert row["ci_low_pp"] < -20 < 0 < row["ci_high_pp"] and row["ci_method"] == "melded-exact"
    # what 10 problems can tell apart: SE of the paired difference, correlation, MDE at 4 discordant
    assert row["se_pp"] == pytest.approx(100 * np.std([0] * 6 + [-1] * 3 + [1], ddof=1) / np.sqrt(10))
    assert row["correlation"] == pytest.approx(np.corrcoef(GPQA_BASE, GPQA_V4)[0, 1])
    assert row["mde_pp"] == float("inf") and row["detectable"] is False  # 4 discordant of 10: nothing is
    assert (row["correction"], row["repeats"]) == ("variant", 1) and np.isnan(row["repeat_se_pp"])
    gsm = by(comparison.rows("scoreboard"), bench="gsm8k", variant="v4")
    assert gsm["delta_pp"] == pytest.approx(-10.0) and (gsm["lost"], gsm["gained"]) == (2, 0)
    # Holm across the 3 benches of v4: the smallest p times 3, then monotone
    ps = sorted(r["p_value"] for r in comparison.rows("scoreboard"))
    assert min(r["p_holm"] for r in comparison.rows("scoreboard")) == pytest.approx(min(1.0, 3 * ps[0]))


def test_agreement_counts_and_ids(comparison):
    row = by(comparison.rows("agreement"), bench="gpqa", variant="v4")
    assert [row[k] for k in ("both_correct", "both_wrong", "lost", "gained")] == [4, 2, 3, 1]
    assert row["both_correct_pct"] == pytest.approx(40.0)
    assert row["lost_ids"] == ["d6", "d7", "d8"] and row["gained_ids"] == ["d9"]
    split = {r["domain"]: r for r in comparison.rows("agreement_by_domain") if r["bench"] == "gpqa"}
    assert (split["Chemistry"]["lost"], split["Chemistry"]["gained"]) == (3, 1)
    assert (split["Physics"]["lost"], split["Physics"]["gained"], split["Physics"]["both_correct"]) == (0, 0, 4)
    problems = comparison.tables["problems"].to_pylist()
    assert {p["doc_id"] for p in problems if p["bench"] == "gpqa" and p["outcome"] == "lost"} == {"d6", "d7", "d8"}


def test_domain_and_subdomain_breakdown(comparison):
    rows = [r for r in comparison.rows("domains") if r["bench"] == "gpqa"]
    chem = by(rows, level="domain", domain="Chemistry")
    assert (chem["n"], chem["baseline_score"], chem["variant_score"]) == (5, pytest.approx(60.0), pytest.approx(20.0))
    assert chem["delta_pp"] == pytest.approx(-40.0) and (chem["lost"], chem["gained"]) == (3, 1)
    phys = by(rows, level="domain", domain="Physics")
    assert (phys["n"], phys["delta_pp"]) == (5, pytest.approx(0.0))
    qm = by(rows, level="subdomain", subdomain="Quantum Mechanics")
    assert (qm["domain"], qm["n"], qm["baseline_score"]) == ("Physics", 3, pytest.approx(100.0))
    astro = by(rows, level="subdomain", subdomain="Astrophysics")
    assert (astro["n"], astro["baseline_score"], astro["variant_score"]) == (2, pytest.approx(50.0), pytest.approx(50.0))
    assert not [r for r in comparison.rows("domains") if r["bench"] == "gsm8k"]  # no domain metadata
    assert chem["se_pp"] == pytest.approx(100 * np.std([0, -1, -1, -1, 1], ddof=1) / np.sqrt(5))
    assert (chem["mde_pp"], chem["detectable"], phys["mde_pp"]) == (float("inf"), False, float("inf"))


def test_token_percentiles_and_chars_fallback(comparison):
    base = by(comparison.rows("tokens"), bench="gsm8k", variant="base", measure="completion")
    values = np.arange(1, 21)
    assert [base[k] for k in ("p10", "p50", "p90")] == pytest.approx(list(np.percentile(values, [10, 50, 90])))
    assert (base["max"], base["mean"], base["total"], base["source"]) == (20, 10.5, 210, "tokens")
    # v4's two empty answers store 0 tokens beside an empty text: a real count, not a missing one
    assert by(comparison.rows("tokens"), bench="gsm8k", variant="v4", measure="completion")["estimated"] == 0
    reasoning = by(comparison.rows("tokens"), bench="lcb", variant="base", measure="reasoning")
    assert (reasoning["p50"], reasoning["total"]) == (50, 500)


def test_token_counts_missing_fall_back_to_chars_over_4(tmp_path):
    rows = []
    for variant in ("base", "imported"):
        for i in range(10):
            rows.append(sample(variant, "he", f"d{i}", True, response="y" * 40 * (i + 1),
                               completion_tokens=None if variant == "imported" else 5))
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    imported = by(c.rows("tokens"), variant="imported", measure="completion")
    assert (imported["source"], imported["estimated"]) == ("chars/4", 10)
    assert (imported["max"], imported["total"]) == (100, 550)  # (40 * 10) / 4; sum of 10..100
    assert "≈imported" in to_markdown(c) and "chars ÷ 4" in to_markdown(c)


def test_anomalies_with_counts_examples_and_cost(comparison):
    rows = [r for r in comparison.rows("anomalies") if r["variant"] == "v4"]
    empty = by(rows, bench="gsm8k", kind="silent-empty")
    assert (empty["count"], empty["n"], empty["examples"]) == (2, 20, ["d3", "d7"])
    assert empty["impact_pp"] == pytest.approx(-10.0)
    in_reasoning = by(rows, bench="lcb", kind="length-cap-reasoning")
    assert (in_reasoning["count"], in_reasoning["examples"], in_reasoning["impact_pp"]) == (2, ["d0", "d1"], pytest.approx(-20.0))
    in_answer = by(rows, bench="lcb", kind="length-cap-answer")
    assert (in_answer["count"], in_answer["examples"]) == (1, ["d2"])
    loop = by(rows, bench="lcb", kind="rumination-loop")
    assert (loop["count"], loop["examples"]) == (1, ["d0"])
    leak = by(rows, bench="lcb", kind="marker-leak")
    assert (leak["count"], leak["examples"], leak["impact_pp"]) == (1, ["d3"], 0.0)
    gap = by(comparison.rows("anomalies"), bench="gsm8k", variant="base", kind="metric-gap")
    assert "exact_match,strict-match 0.0%" in gap["detail"] and "flexible-extract 100.0%" in gap["detail"]
    assert not [r for r in comparison.rows("anomalies") if r["variant"] == "base" and r["kind"] != "metric-gap"]


def test_scorer_zero_and_primary_metric_choice(tmp_path):
    rows = gsm8k("base") + gsm8k("v4")
    for r in rows:
        if r["variant"] == "v4":
            r.update(score=0.0, correct=False)  # a broken scorer: every answer scored 0
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    zero = by(c.rows("anomalies"), variant="v4", kind="scorer-zero")
    assert zero["count"] == 20 and "exactly 0" in zero["detail"]
    strict = compare(tmp_path, CompareOptions(baseline="base", resamples=200, metrics={"gsm8k": "exact_match,strict-match"}))
    row = by(strict.rows("scoreboard"), bench="gsm8k")
    assert (row["baseline_score"], row["variant_score"], row["primary_metric"]) == (0.0, 0.0, "exact_match,strict-match")
    with pytest.raises(AnalysisError, match="nope.*missing from 40 of 40.*exact_match,flexible-extract; exact_match,strict-match"):
        compare(tmp_path, CompareOptions(baseline="base", metrics={"gsm8k": "nope"}))


def test_three_arms_against_one_baseline_in_one_report(tmp_path):
    root, out = tmp_path / "results", tmp_path / "report"
    rows = gpqa("128e", GPQA_BASE) + gsm8k("128e")
    arms = {"v4": GPQA_V4, "v4-mean": GPQA_BASE, "v4-geomean": [0] * 10}
    for arm, outcomes in arms.items():
        rows += gpqa(arm, outcomes) + gsm8k(arm, empty_docs=(1,) if arm == "v4-geomean" else ())
    write_store(root, rows)
    c = compare(root, CompareOptions(baseline="128e", variants=["v4", "v4-mean", "v4-geomean"], resamples=500))
    board = c.rows("scoreboard")
    assert len(board) == 6
    assert by(board, bench="gpqa", variant="v4-geomean")["delta_pp"] == pytest.approx(-70.0)
    assert by(board, bench="gpqa", variant="v4-mean")["delta_pp"] == pytest.approx(0.0)
    paths = write_report(c, out)
    markdown = paths["markdown"].read_text()
    for arm in arms:
        assert f"### Scores: {arm} vs 128e" in markdown
    assert "| gpqa (10) | 70.00% | 50.00% (−20.00pp) | 70.00% (0.00pp) | 0.00% (−70.00pp) |" in markdown
    assert "Of the 3 problems v4 lost: 3 Chemistry." in markdown
    summary = json.loads(paths["summary"].read_text())
    assert summary["variants"] == ["v4", "v4-mean", "v4-geomean"] and len(summary["scoreboard"]) == 6
    # every table is plain Parquet for any reader
    import duckdb
    import pandas as pd

    for name in ("scoreboard", "agreement", "agreement_by_domain", "domains", "tokens", "anomalies", "problems"):
        assert paths[name].exists()
    assert len(pd.read_parquet(paths["scoreboard"])) == 6
    lost = duckdb.sql(f"select count(*) from '{paths['problems']}' where outcome = 'lost' and variant = 'v4-geomean'").fetchall()[0][0]
    assert lost == 7 + 1  # gpqa: all 7 baseline-right problems; gsm8k: the empty answer


# Two arms x three benches with known discordant counts: (lost, gained) per arm and bench, 40 problems each.
GRID = {"a": {"b1": (9, 0), "b2": (7, 1), "b3": (4, 4)}, "b": {"b1": (12, 1), "b2": (2, 0), "b3": (6, 0)}}


@pytest.fixture(scope="module")
def grid_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    rows = []
    for bench in ("b1", "b2", "b3"):
        rows += bench_rows("base", bench, [i < 20 for i in range(40)])
        for arm, counts in GRID.items():
            lost, gained = counts[bench]
            outcome = [i < 20 for i in range(40)]
            for i in range(lost):
                outcome[i] = False  # baseline-right problems the arm lost
            for i in range(gained):
                outcome[20 + i] = True
            rows += bench_rows(arm, bench, outcome)
    write_store(root, rows)
    return root


def test_holm_over_the_grid_is_the_default_for_several_arms(grid_results):
    c = compare(grid_results, CompareOptions(baseline="base", resamples=200))
    board = c.rows("scoreboard")
    raw = [mcnemar_exact(*GRID[r["variant"]][r["bench"]]) for r in board]
    assert [r["p_value"] for r in board] == pytest.approx(raw)
    assert c.correction == "grid" and {r["correction"] for r in board} == {"grid"}
    assert [r["p_holm"] for r in board] == pytest.approx(holm(raw))  # one family of 6
    # the smallest of 6 p-values is multiplied by 6, not by the 3 benches of its arm
    smallest = min(range(6), key=lambda i: raw[i])
    assert board[smallest]["p_holm"] == pytest.approx(6 * raw[smallest])
    markdown = to_markdown(c)
    assert "p (Holm, grid)" in markdown and "Holm-corrected over the whole grid (6 comparisons" in markdown

    per_arm = compare(grid_results, CompareOptions(baseline="base", resamples=200, correction="variant"))
    for arm in GRID:
        mine = [r for r in per_arm.rows("scoreboard") if r["variant"] == arm]
        assert [r["p_holm"] for r in mine] == pytest.approx(holm([r["p_value"] for r in mine]))
    assert "Holm-corrected over the benches of each variant" in to_markdown(per_arm)

    none = compare(grid_results, CompareOptions(baseline="base", resamples=200, correction="none"))
    assert all(np.isnan(r["p_holm"]) for r in none.rows("scoreboard"))
    assert "no multiple-comparison correction" in to_markdown(none) and "| p |" in to_markdown(none)


def test_correction_on_the_command_line(grid_results, tmp_path):
    from typer.testing import CliRunner

    from omk_ray.cli import app

    out = tmp_path / "report"
    args = ["compare", str(grid_results), "--baseline", "base", "--out", str(out), "--resamples", "200", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--correction", "variant"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["correction"] == "variant"
    bad = CliRunner().invoke(app, [*args, "--correction", "family"])
    assert bad.exit_code == 2 and "correction" in bad.output and "'grid', 'variant' or 'none'" in bad.output


def test_missing_baseline_and_variants_are_named(results, tmp_path):
    with pytest.raises(AnalysisError, match="baseline 'nobody' has no samples.*base, v4"):
        compare(results, CompareOptions(baseline="nobody"))
    with pytest.raises(AnalysisError, match=r"no samples for variants \['v9'\]"):
        compare(results, CompareOptions(baseline="base", variants=["v9"]))
    with pytest.raises(AnalysisError, match="no samples"):
        compare(tmp_path, CompareOptions(baseline="base"))


def test_partial_coverage_pairs_shared_problems_and_says_so(tmp_path):
    rows = bench_rows("base", "b", [True] * 10) + bench_rows("v", "b", [True] * 6)
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    assert by(c.rows("scoreboard"), bench="b")["n"] == 6
    assert any("share 6 problems (base has 10, v 6)" in n for n in c.notes)


def test_repeats_are_averaged_per_problem(tmp_path):
    from helpers.samples import SAMPLED

    rows = []
    for r in range(4):
        rows += [sample("base", "aime", f"d{i}", True, recipe=SAMPLED, repeat=r) for i in range(8)]
        rows += [sample("v4", "aime", f"d{i}", r % 2 == 0, recipe=SAMPLED, repeat=r) for i in range(8)]
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=300))
    row = by(c.rows("scoreboard"), bench="aime")
    assert (row["n"], row["variant_score"], row["test"]) == (8, pytest.approx(50.0), "paired-bootstrap")
    assert row["p_value"] < 0.01  # every problem lost half its repeats
    assert by(c.rows("tokens"), variant="v4")["n"] == 32  # token distributions count every sample
    # the spread across repeats: the baseline never moves, v4 scores 1, 0, 1, 0 on every problem
    assert (row["repeats"], row["baseline_repeat_var"]) == (4, 0.0)
    assert row["variant_repeat_var"] == pytest.approx(np.var([1, 0, 1, 0], ddof=1))  # 1/3
    assert row["repeat_se_pp"] == pytest.approx(100 * np.sqrt(8 * (1 / 3) / 4) / 8)
    assert "## Repeats" in to_markdown(c) and "| aime (8) | v4 | 4 | 0.0000 | 0.3333 |" in to_markdown(c)


def test_repeats_pair_the_per_problem_means(tmp_path):
    """Paired tests run on each problem's mean over its repeats, with the bootstrap over problems."""
    from helpers.samples import SAMPLED

    rng = np.random.default_rng(4)
    chance = {"base": rng.uniform(0.2, 0.9, 30)}
    chance["v4"] = np.clip(chance["base"] - 0.15, 0, 1)
    draws = {v: rng.random((30, 5)) < p[:, None] for v, p in chance.items()}
    rows = [sample(v, "math", f"d{i}", bool(draws[v][i, r]), recipe=SAMPLED, repeat=r)
            for v in draws for i in range(30) for r in range(5)]
    write_store(tmp_path, rows)
    row = by(compare(tmp_path, CompareOptions(baseline="base", resamples=400)).rows("scoreboard"), bench="math")
    means = {v: d.mean(axis=1) for v, d in draws.items()}
    diffs = means["v4"] - means["base"]
    assert row["delta_pp"] == pytest.approx(100 * diffs.mean())
    assert row["se_pp"] == pytest.approx(100 * diffs.std(ddof=1) / np.sqrt(30))
    assert row["baseline_repeat_var"] == pytest.approx(draws["base"].var(axis=1, ddof=1).mean())
    assert row["ci_method"] == "bootstrap-percentile" and (row["ci_low_pp"] > 0 or row["ci_high_pp"] < 0) == (row["p_value"] <= 0.05)


def test_a_sample_stored_twice_counts_once(tmp_path):
    rows = bench_rows("base", "b", [True, False, True]) + bench_rows("v", "b", [True, True, True])
    store = write_store(tmp_path, rows)
    from omk_ray.results.schema import rows_to_table

    store.write_shard(rows_to_table([sample("v", "b", "d1", True)]), "v", "b", "again")  # an overlapping shard
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    assert by(c.rows("scoreboard"), bench="b")["n"] == 3
    assert by(c.rows("tokens"), variant="v")["n"] == 3


def test_compare_command_writes_the_report(tmp_path):
    from typer.testing import CliRunner

    from omk_ray.cli import app

    rows = gpqa("128e", GPQA_BASE) + gsm8k("128e")
    for arm in ("v4", "v4-mean"):
        rows += gpqa(arm, GPQA_V4) + gsm8k(arm)
    write_store(tmp_path / "results", rows)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "results"), "--baseline", "128e", "--variants", "v4",
                                      "v4-mean", "--metric", "gsm8k=exact_match,flexible-extract", "--out", str(out),
                                      "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert "### Scores: v4-mean vs 128e" in result.output and f"report: {out / 'report.md'}" in result.output
    assert "gsm8k (20, exact_match,flexible-extract)" in (out / "report.md").read_text()
    assert {p.name for p in (out / "tables").iterdir()} == {
        f"{n}.parquet" for n in ("scoreboard", "agreement", "agreement_by_domain", "domains", "tokens", "anomalies", "problems",
                                 "headline", "facts")}
    bad = CliRunner().invoke(app, ["compare", str(tmp_path / "results"), "--baseline", "128e", "--metric", "gsm8k"])
    assert bad.exit_code == 2 and "BENCH=METRIC" in bad.output


def test_the_seed_cards_gpqa_tables_come_out(tmp_path):
    rows, i = [], 0
    for domain, subdomain, *counts in CARD_GPQA:
        for (base_ok, v4_ok), k in zip(((1, 1), (0, 0), (1, 0), (0, 1)), counts):
            for _ in range(k):
                rows.append(sample("128e", "GPQA-Diamond", f"gpqa/{i}", base_ok, domain=domain, subdomain=subdomain))
                rows.append(sample("v4", "GPQA-Diamond", f"gpqa/{i}", v4_ok, domain=domain, subdomain=subdomain))
                i += 1
    write_store(tmp_path, rows)
    markdown = to_markdown(compare(tmp_path, CompareOptions(baseline="128e", resamples=500)))
    expected = [
        "| GPQA-Diamond (198) | 73.23% | 69.19% | −4.04pp |",
        "| Physics | 86 | 88.4% | 88.4% | 0.0 | 4 | 4 |",
        "| Chemistry | 93 | 62.4% | 54.8% | −7.5 | 18 | 11 |",
        "| Biology | 19 | 57.9% | 52.6% | −5.3 | 1 | 0 |",
        "| High-energy particle physics | 14 | 100.0% | 100.0% | 0.0 |",
        "| Quantum Mechanics | 25 | 92.0% | 92.0% | 0.0 |",
        "| Physics (general) | 19 | 84.2% | 84.2% | 0.0 |",
        "| Astrophysics | 13 | 76.9% | 84.6% | +7.7 |",
        "| Electromagnetism and Photonics | 6 | 83.3% | 83.3% | 0.0 |",
        "| Molecular Biology | 15 | 60.0% | 60.0% | 0.0 |",
        "| Relativistic Mechanics | 7 | 85.7% | 71.4% | −14.3 |",
        "| Organic Chemistry | 72 | 58.3% | 51.4% | −6.9 |",
        "| Chemistry (general) | 20 | 75.0% | 65.0% | −10.0 |",
        "| GPQA-Diamond | v4 | 198 | 122 (61.6%) | 38 (19.2%) | 23 (v4 LOST) | 15 (v4 GAINED) |",
        "Of the 23 problems v4 lost: 18 Chemistry, 4 Physics, 1 Biology.",
        "Of the 15 problems v4 rescued: 11 Chemistry, 4 Physics.",
    ]
    for line in expected:
        assert line in markdown, line
    assert f"| {binomtest(15, 38).pvalue:.2f} (" in markdown  # McNemar on the 23 lost vs 15 gained
    # the card's hand-written "(1 problem, noise)" marks, computed: the verdict by the Holm-corrected McNemar test over
    # the three domains, and "below MDE" as power information beside it (nothing at that discordance is detectable)
    chemistry = binomtest(11, 29).pvalue
    assert holm([chemistry, 1.0, 1.0])[0] == pytest.approx(min(1.0, 3 * chemistry))
    assert ("| Biology | 19 | 57.9% | 52.6% | −5.3 | 1 | 0 | 1.00 (1.00) | not significant | 5.3 | ∞ | below MDE |"
            in markdown)
    assert ("| Relativistic Mechanics | 7 | 85.7% | 71.4% | −14.3 | 1 | 0 | 1.00 (1.00) | not significant | 14.3 | ∞ "
            "| below MDE |") in markdown
    assert (f"| Chemistry | 93 | 62.4% | 54.8% | −7.5 | 18 | 11 | {chemistry:.2f} ({3 * chemistry:.2f}) | not significant "
            f"| 5.8 | {100 * mcnemar_mde(29, 93):.1f} | below MDE |") in markdown
    low, high = (100 * b for b in mcnemar_interval(23, 15, 198))
    assert (f"| −4.04pp | [−{-low:.2f}, +{high:.2f}] | 0.26 (0.26) | not significant | 3.11 | "
            f"{100 * mcnemar_mde(38, 198):.2f} | below MDE |") in markdown
    assert "pass/fail benches (GPQA-Diamond) the exact interval compatible with McNemar's test" in markdown


def test_a_corrupt_shard_is_named(tmp_path):
    write_store(tmp_path, bench_rows("base", "b", [True]) + bench_rows("v", "b", [True]))
    bad = tmp_path / "samples" / "v" / "b" / "part-broken-0000.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(AnalysisError, match="cannot read the samples: .*part-broken-0000.parquet"):
        compare(tmp_path, CompareOptions(baseline="base"))


def test_error_rows_are_excluded_from_pairing_counted_and_marked(tmp_path):
    """20 engine failures in 200 samples are not 20 lost problems: they leave the statistics, counted."""
    outcomes = [i % 4 != 0 for i in range(200)]
    failed = [sample("v", "b", f"d{i}", False, response="", completion_tokens=0, finish_reason="error",
                     error="engine died", metrics={}) if i < 20 else sample("v", "b", f"d{i}", o)
              for i, o in enumerate(outcomes)]
    write_store(tmp_path, bench_rows("base", "b", outcomes) + failed)
    comparison = compare(tmp_path, CompareOptions(baseline="base"))
    [row] = comparison.rows("scoreboard")
    assert (row["n"], row["delta_pp"], row["lost"], row["gained"]) == (180, 0.0, 0, 0)  # was 200, -7.5 pp, 15 lost
    assert row["errors_excluded"] == 20
    assert row["p_value"] == 1.0 and row["marks"] == "§"
    [errors] = [a for a in comparison.rows("anomalies") if a["kind"] == "error"]
    assert errors["count"] == 20  # still listed as failures
    markdown = to_markdown(comparison)
    assert "§ b: 20 error samples of v excluded" in markdown and "b (180)§" in markdown
