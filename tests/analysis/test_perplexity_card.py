"""The card's perplexity table for lm-eval's rolling benches: lm-eval's corpus values per variant,
the ratio to the baseline, a paired interval over documents; the bench leaves the scores table."""

from __future__ import annotations

import math

import pytest

from helpers.samples import bench_rows, sample, write_store
from omk_ray.analysis.card import to_card
from omk_ray.analysis.compare import CompareOptions, compare
from omk_ray.analysis.perplexity import paired_bpb, perplexity_rows
from omk_ray.benches.lmeval import aggregate, finish_aggregate, metric_values

# (log-likelihood, words, bytes) per document: the baseline's, then the pruned variant's (worse)
BASE = [(-100.0, 20, 100), (-300.0, 50, 260), (-40.0, 9, 45), (-220.0, 31, 170)]
PRUNED = [(-110.0, 20, 100), (-330.0, 50, 260), (-41.0, 9, 45), (-260.0, 31, 170)]


def rolling_rows(variant: str, docs: list[tuple]) -> list[dict]:
    rows = []
    for i, (ll, words, size) in enumerate(docs):
        metrics = {**metric_values("word_perplexity,none", (ll, words)), **metric_values("byte_perplexity,none", (ll, size)),
                   **metric_values("bits_per_byte,none", (ll, size))}
        row = sample(variant, "wikitext", f"w{i}", 0.0, metrics=metrics, choice_logprobs=[ll], response=None)
        rows.append(row | {"score": -ll / size / math.log(2), "correct": None, "finish_reason": "scored"})  # as the farm's
    return rows


def test_perplexity_table_and_scores_table(tmp_path):
    write_store(tmp_path, rolling_rows("base", BASE) + rolling_rows("pruned", PRUNED)
                + bench_rows("base", "mc", [True] * 8 + [False] * 2) + bench_rows("pruned", "mc", [True] * 6 + [False] * 4))
    c = compare(tmp_path, CompareOptions(baseline="base", resamples=200))
    rows = {r["variant"]: r for r in perplexity_rows(c.root, "base", ["pruned"], c.benches)}
    # lm-eval's corpus values: exp(-Σll/Σwords), -Σll/Σbytes/ln 2, as its aggregate of the stored per-doc values
    for variant, docs in (("base", BASE), ("pruned", PRUNED)):
        lls, words, sizes = (sum(d[k] for d in docs) for k in range(3))
        assert rows[variant]["word_ppl"] == pytest.approx(math.exp(-lls / words), rel=1e-12)
        assert rows[variant]["bpb"] == pytest.approx(-lls / sizes / math.log(2), rel=1e-12)
        maps = [r["metrics"] for r in rolling_rows(variant, docs)]
        assert finish_aggregate("bits_per_byte,none", aggregate(maps, "bits_per_byte,none")) == \
            pytest.approx(rows[variant]["bpb"], rel=1e-12)
    pruned = rows["pruned"]
    assert pruned["ratio"] == pytest.approx(pruned["word_ppl"] / rows["base"]["word_ppl"])
    assert pruned["delta_bpb"] == pytest.approx(pruned["bpb"] - rows["base"]["bpb"])  # all docs paired
    assert 0 < pruned["low"] < pruned["delta_bpb"] < pruned["high"]  # worse on every document
    card = to_card(c)
    assert "### Perplexity" in card
    assert f"| wikitext (4) | pruned | {pruned['word_ppl']:.4g} | {pruned['bpb']:.4f} | {pruned['ratio']:.4f} |" in card
    scores = card.split("### Scores")[1].split("###")[0]
    assert "| mc (10)" in scores and "wikitext" not in scores  # bits per byte is no percentage
    assert "wikitext" not in card.split("### Anomalies")[1]  # scored rows are no empty answers, no agreement table


def test_the_paired_interval_is_the_bytes_weighted_difference():
    n, delta, low, high = paired_bpb([(0, 0, -2.0, 10), (0, 0, -1.0, 30)], [(0, 0, -1.0, 10), (0, 0, -1.0, 30)])
    assert n == 2 and delta == pytest.approx(10 / 40 / math.log(2))
    assert low < delta < high
    assert paired_bpb([], [])[0] == 0
