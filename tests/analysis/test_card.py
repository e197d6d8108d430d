"""The model card from one command: `import lm-eval` then `compare --format card` prints every number of
the seed card's GPQA tables; the card's shape for farm runs (several variants, canary, facts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.samples import bench_rows, write_store
from helpers.bench_data import LOGS
from helpers.gpqa import CARD_TOKENS, TASK, lengths, write_gpqa_logs
from omk_ray.analysis.card import CardOptions, to_card
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.cli import app
from omk_ray.results.store import ResultsStore

CANONICAL = Path(__file__).resolve().parents[2] / "configs" / "canonical.yaml"
runner = CliRunner()

# Every number of the seed card's GPQA-Diamond tables, as the card prints them (bench named by the task, with its
# metric and k/n); where the seed hand-marked "(1 problem)", the computed verdict: no Δ here is significant by the
# Holm-corrected McNemar test, and every nonzero one is below its MDE (power information).
CARD_LINES = [
    f"| {TASK} (198, exact match/flexible-extract) | 73.23% ±3.15 (145/198) | 69.19% ±3.29 (137/198) | "
    "−4.04pp (not significant; below MDE) |",
    # the card prints the means 681 / 679: it truncates 134,972 / 198 = 681.7 and 134,546 / 198 = 679.5
    f"| {TASK} | ≈128e | 492 | 625 | 799 | 2,814 | 682 | 134,972 |",
    f"| {TASK} | ≈v4 | 501 | 617 | 760 | 2,662 | 680 | 134,546 |",
    "| Physics | 86 | 88.4% | 88.4% | 0.0 |",
    "| Chemistry | 93 | 62.4% | 54.8% | −7.5 (not significant; below MDE) |",
    "| Biology | 19 | 57.9% | 52.6% | −5.3 (not significant; below MDE) |",
    "| High-energy particle physics | 14 | 100.0% | 100.0% | 0.0 |",
    "| Quantum Mechanics | 25 | 92.0% | 92.0% | 0.0 |",
    "| Physics (general) | 19 | 84.2% | 84.2% | 0.0 |",
    "| Astrophysics | 13 | 76.9% | 84.6% | +7.7 (not significant; below MDE) |",
    "| Electromagnetism and Photonics | 6 | 83.3% | 83.3% | 0.0 |",
    "| Molecular Biology | 15 | 60.0% | 60.0% | 0.0 |",
    "| Relativistic Mechanics | 7 | 85.7% | 71.4% | −14.3 (not significant; below MDE) |",
    "| Organic Chemistry | 72 | 58.3% | 51.4% | −6.9 (not significant; below MDE) |",
    "| Chemistry (general) | 20 | 75.0% | 65.0% | −10.0 (not significant; below MDE) |",
    "| | both correct | both wrong | only 128e right | only v4 right |",
    "| count | 122 (61.6%) | 38 (19.2%) | 23 (v4 LOST) | 15 (v4 GAINED) |",
    "Of the 23 problems v4 lost: 18 Chemistry, 4 Physics, 1 Biology.",
    "Of the 15 problems v4 rescued: 11 Chemistry, 4 Physics.",
    "Chemistry −7 (18 lost, 11 gained), Physics 0 (4 lost, 4 gained), Biology −1 (1 lost, 0 gained)",
]


@pytest.fixture(scope="module")
def gpqa_logs(tmp_path_factory):
    return write_gpqa_logs(tmp_path_factory.mktemp("gpqa-logs"))


def import_both(logs: dict[str, Path], root: Path, *extra: str) -> None:
    for variant, folder in logs.items():
        done = runner.invoke(app, ["import", "lm-eval", str(folder), "--variant", variant, "--results", str(root), *extra])
        assert done.exit_code == 0, done.output
        assert "High-level domain / Subdomain (198 rows)" in done.output


@pytest.mark.slow
def test_the_cards_gpqa_tables_from_imported_lm_eval_logs(gpqa_logs, tmp_path):
    import_both(gpqa_logs, tmp_path / "results")  # no grid: GPQA's domain fields are mapped by default
    card = runner.invoke(app, ["compare", str(tmp_path / "results"), "--baseline", "128e", "--format", "card",
                               "--out", str(tmp_path / "report"), "--resamples", "200"])
    assert card.exit_code == 0, card.output
    for line in CARD_LINES:
        assert line.replace("| |", "|  |") in card.output, line
    assert "Fewer than 5 problems, not shown: Genetics (4), Inorganic Chemistry (1), Condensed Matter Physics (1), " \
           "Optics and Acoustics (1)." in card.output
    # clean logs: no anomaly at all (the importer's tokens_missing flag is not a score)
    assert "None found (silent-empty outputs" in card.output
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["anomalies"] == []
    assert (tmp_path / "report" / "card.md").read_text() in card.output

    # the supplementary table's statistics; the percentiles are numpy's on the token counts written
    supplementary = runner.invoke(app, ["compare", str(tmp_path / "results"), "--baseline", "128e", "--format", "card",
                                        "--out", str(tmp_path / "report2"), "--token-stats", "median,mean,p95,max,total",
                                        "--no-stderr", "--no-html", "--abbreviate-totals", "--no-counts"])
    assert supplementary.exit_code == 0, supplementary.output
    p95 = np.percentile(lengths(*CARD_TOKENS["v4"]), 95)
    assert "| Bench | Variant | median | mean | p95 | max | total tokens |" in supplementary.output
    assert f"| {TASK} | ≈v4 | 617 | 680 | {p95:,.0f} | 2,662 | 135k |" in supplementary.output  # 134,546 abbreviated
    assert f"| {TASK} (198, exact match/flexible-extract) | 73.23% | 69.19% | −4.04pp (" in supplementary.output
    bad = runner.invoke(app, ["compare", str(tmp_path / "results"), "--baseline", "128e", "--token-stats", "p50,p200"])
    assert bad.exit_code == 2 and "unknown token statistic 'p200'" in bad.output


@pytest.mark.slow
def test_the_canonical_grid_names_the_bench_its_ids_and_domain_fields(gpqa_logs, tmp_path):
    import_both(gpqa_logs, tmp_path / "results", "--config", str(CANONICAL))
    rows = ResultsStore(tmp_path / "results").read().to_pylist()
    assert {r["bench"] for r in rows} == {"gpqa_diamond"} and all(r["doc_id"].startswith("rec") for r in rows)
    c = compare(tmp_path / "results", CompareOptions(baseline="128e", resamples=200))
    card = to_card(c, CardOptions())
    assert "| gpqa_diamond (198, exact match/flexible-extract) | 73.23% ±3.15 (145/198) | 69.19% ±3.29 (137/198) |" in card
    assert "| Chemistry | 93 | 62.4% | 54.8% | −7.5 (not significant; below MDE) |" in card and c.rows("anomalies") == []


@pytest.mark.slow
def test_clean_gpqa_logs_raise_no_scorer_anomaly(gpqa_logs, tmp_path):
    """On the old code: "scorer suspect: exact_match,strict-match 73.2% vs tokens_missing 100.0%", −26.77pp."""
    import_both(gpqa_logs, tmp_path)
    row = ResultsStore(tmp_path).read().to_pylist()[0]
    assert dict(row["metrics"])["tokens_missing"] == 1.0  # the flag is still there, for whoever reads it
    assert compare(tmp_path, CompareOptions(baseline="128e", resamples=200)).rows("anomalies") == []


def test_domain_fields_named_on_the_command_line_or_in_the_grid(tmp_path):
    log = LOGS / "arc_challenge_full"
    done = runner.invoke(app, ["import", "lm-eval", str(log), "--variant", "a", "--results", str(tmp_path / "r"),
                               "--domain-field", "arc_challenge_full_chat=answerKey"])
    assert done.exit_code == 0, done.output
    assert "answerKey (1172 rows)" in done.output
    rows = ResultsStore(tmp_path / "r").read(columns=["doc_id", "domain", "subdomain"]).to_pylist()
    assert {r["doc_id"]: r["domain"] for r in rows}["0"] == "C" and {r["domain"] for r in rows} >= {"A", "B", "C", "D"}
    assert all(r["subdomain"] is None for r in rows)

    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({"variants": [{"name": "a", "model": "m"}], "benches": [
        {"name": "arc", "kind": "lmeval", "options": {"task": "arc_challenge_full_chat", "id_field": "id",
                                                      "domain_field": "answerKey"}}]}))
    done = runner.invoke(app, ["import", "lm-eval", str(log), "--variant", "a", "--results", str(tmp_path / "g"),
                               "--config", str(grid)])
    assert done.exit_code == 0, done.output
    rows = ResultsStore(tmp_path / "g").read(columns=["bench", "doc_id", "domain"]).to_pylist()
    assert {r["doc_id"]: r["domain"] for r in rows}["Mercury_7175875"] == "C" and rows[0]["bench"] == "arc"

    bad = runner.invoke(app, ["import", "lm-eval", str(log), "--variant", "a", "--results", str(tmp_path / "x"),
                              "--domain-field", "arc_challenge_full_chat=Subject"])
    assert bad.exit_code == 2
    assert "no doc has the field 'Subject' named for the domain of bench 'arc_challenge_full_chat'" in bad.output
    assert "doc fields: answerKey, choices, id, question" in bad.output
    assert not (tmp_path / "x" / "samples").exists()  # nothing written
    worse = runner.invoke(app, ["import", "lm-eval", str(log), "-v", "a", "-r", str(tmp_path / "x"), "--domain-field", "x"])
    assert worse.exit_code == 2 and "expected TASK=FIELD" in worse.output


def test_bookkeeping_is_never_a_score(tmp_path):
    """Flags and counts in the metrics map (the importer's, the sandbox's, rescore's) are no metric."""
    from omk_ray.results.schema import is_score_key

    assert [k for k in ("exact_match,strict-match", "pass@1", "prompt_level_strict_acc,none", "tokens_missing",
                        "thinking_budget_hit", "sandbox_fail", "tests_total", "score@lm-eval-0.4.11:gsm8k@3.0",
                        "inst_level_strict_acc,none/n") if is_score_key(k)] == [
        "exact_match,strict-match", "pass@1", "prompt_level_strict_acc,none"]
    # a code bench that fails everything: sandbox_fail = 1 on every row would read as a 100% "metric"
    rows = [dict(r, metrics={"pass@1": r["score"], **({} if r["correct"] else {"sandbox_fail": 1.0}),
                             "tokens_missing": 1.0, "tests_total": 3.0})
            for r in bench_rows("base", "code", [True] * 2 + [False] * 18) + bench_rows("v", "code", [False] * 20)]
    write_store(tmp_path, rows)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    assert [r["kind"] for r in c.rows("anomalies")] == ["scorer-zero"]  # v scores 0 everywhere: that one is real
    with pytest.raises(ValueError, match="'tokens_missing' is bookkeeping, not a score .*scores present: pass@1"):
        compare(tmp_path, CompareOptions(baseline="base", metrics={"code": "tokens_missing"}))


def test_several_variants_side_by_side_with_a_stopped_one(tmp_path):
    from test_report_canary import REASON, demo_like_store

    demo_like_store(tmp_path)
    card = to_card(compare(tmp_path, CompareOptions(baseline="toy", resamples=200)),
                   CardOptions(stats=("median", "mean", "p95", "max", "total")))
    assert "| Bench (n) | toy | geomean | max | Δ geomean | Δ max |" in card
    # k/n beside pass/fail scores; Δ with its verdict (McNemar 9 lost vs 3 gained: p = 0.146) and its power (MDE 24.2pp)
    assert ("| toy (40) | 90.00% ±4.80 (36/40) | stopped by canary | 75.00% ±6.93 (30/40) | — | "
            "−15.00pp (not significant; below MDE) |") in card
    assert f"Stopped: geomean stopped by its canary before its full run ({REASON})." in card
    assert "| Bench | Variant | median | mean | p95 | max | total tokens |" in card
    token_rows = [line.split(" | ")[1] for line in card.splitlines() if line.startswith("| toy | ")]
    assert token_rows == ["toy", "max"]  # the stopped arm's canary samples are no distribution either


def test_a_farm_gpqa_bench_maps_the_domain_fields_by_default(tmp_path):
    """The same default for a GPQA task run by the farm: no domain_field option needed."""
    from helpers.gpqa import problems

    from omk_ray.benches import make_bench
    from omk_ray.config import BenchSpec

    data = tmp_path / "gpqa.jsonl"
    data.write_text("".join(json.dumps({k: v for k, v in p.items() if k != "right"}) + "\n" for p in problems()[:6]))
    docs = make_bench(BenchSpec(name="gpqa", kind="lmeval", source=str(data), options={"task": TASK})).docs()
    raw = problems()[:6]
    assert [(d.domain, d.subdomain) for d in docs] == [(p["High-level domain"], p["Subdomain"]) for p in raw]
    named = make_bench(BenchSpec(name="gpqa", kind="lmeval", source=str(data),
                                 options={"task": TASK, "domain_field": "Subdomain", "subdomain_field": "Record ID"}))
    assert [(d.domain, d.subdomain) for d in named.docs()] == [(p["Subdomain"], p["Record ID"]) for p in raw]


def test_the_cards_domain_marks_are_the_computed_resolution(tmp_path):
    """A domain the variant loses 15 of 20 problems in is detectable; one lost problem of 20 is below the MDE."""
    base = bench_rows("base", "b", [True] * 40)
    var = bench_rows("v", "b", [i >= 15 for i in range(20)] + [i != 0 for i in range(20)])
    for rows in (base, var):
        for i, r in enumerate(rows):
            r["domain"] = "a" if i < 20 else "z"
    write_store(tmp_path, base + var)
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    domains = {r["domain"]: r for r in c.rows("domains") if r["level"] == "domain"}
    assert (domains["a"]["detectable"], domains["z"]["detectable"]) == (True, False)
    card = to_card(c)
    # a: 15 lost, 0 gained (McNemar p = 2^-14, Holm x2); z: 1 lost (p = 1): the verdict, then power information
    assert (domains["a"]["p_holm"], domains["z"]["p_holm"]) == (pytest.approx(2 * 2 ** -14), 1.0)
    assert "| a | 20 | 100.0% | 25.0% | −75.0 (significant) |" in card
    assert "| z | 20 | 100.0% | 95.0% | −5.0 (not significant; below MDE) |" in card
    assert "1 problem" not in card and "detectable" not in card
