"""The card's perplexity table: benches of lm-eval's `loglikelihood_rolling` tasks (WikiText-2 ...).

A rolling document's row holds, under lm-eval's keys, its log-likelihood per word and per byte
with the counts under `/n` (benches/lmeval.py). Per bench and variant, on the documents it
scored: word perplexity exp(-Σ ll / Σ words) and bits per byte -Σ ll / Σ bytes / ln 2 (lm-eval's
corpus values), the ratio of the word perplexity to the baseline's, and the paired difference of
bits per byte to the baseline over the documents both scored: Σ bytes·Δbpb / Σ bytes (the
corpus difference), with a 95% interval from the documents' spread (ratio estimator, t with n-1
degrees of freedom). Such benches leave the scores table, whose cells are percentages.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow.compute as pc
from scipy import stats

from omk_ray.analysis.sections import Section, Table, signed
from omk_ray.results.store import ResultsStore

WORD = "word_perplexity,none"
BYTE = "bits_per_byte,none"


def document_values(results: str, benches: list[str], variants: list[str]) -> dict[str, dict[str, dict[str, tuple]]]:
    """bench -> variant -> doc id -> (ll per word, words, ll per byte, bytes), for benches with rolling rows."""
    table = ResultsStore(results).read(columns=["variant", "bench", "doc_id", "metrics", "error"],
                                       filter=pc.field("bench").isin(benches) & pc.field("variant").isin(variants))
    out: dict[str, dict[str, dict[str, tuple]]] = {}
    for row in table.to_pylist():
        metrics = dict(row["metrics"] or {})
        if row["error"] is not None or f"{BYTE}/n" not in metrics or f"{WORD}/n" not in metrics:
            continue
        out.setdefault(row["bench"], {}).setdefault(row["variant"], {})[row["doc_id"]] = (
            metrics[WORD], metrics[f"{WORD}/n"], metrics[BYTE], metrics[f"{BYTE}/n"])
    return out


def perplexity_rows(results: str, baseline: str, variants: list[str], benches: list[str]) -> list[dict]:
    """One row per rolling bench and variant (the baseline first): n, word_ppl, bpb, ratio, delta_bpb, low, high."""
    found = document_values(results, benches, [baseline, *variants])
    rows = []
    for bench in benches:
        per = found.get(bench, {})
        base = per.get(baseline)
        if not base:
            continue
        base_ppl = _word_ppl(base.values())
        for variant in [baseline, *variants]:
            docs = per.get(variant)
            if not docs:
                continue
            row = {"bench": bench, "variant": variant, "n": len(docs), "word_ppl": _word_ppl(docs.values()),
                   "bpb": _bpb(docs.values())}
            row["ratio"] = row["word_ppl"] / base_ppl
            shared = sorted(set(docs) & set(base))
            row.update(zip(("paired_n", "delta_bpb", "low", "high"),
                           paired_bpb([docs[d] for d in shared], [base[d] for d in shared])))
            rows.append(row)
    return rows


def paired_bpb(variant: list[tuple], baseline: list[tuple]) -> tuple[int, float, float, float]:
    """(n, Δ bits per byte, 95% low, high) over the documents both scored, weighted by bytes."""
    n = len(variant)
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    weights = np.array([v[3] for v in variant], dtype=float)
    diff = (np.array([b[2] for b in baseline]) - np.array([v[2] for v in variant])) / math.log(2)  # bpb_v - bpb_b
    delta = float(np.sum(weights * diff) / np.sum(weights))
    if n < 2:
        return n, delta, math.nan, math.nan
    se = math.sqrt(float(np.sum((weights * (diff - delta)) ** 2)) * n / (n - 1)) / float(np.sum(weights))
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return n, delta, delta - half, delta + half


def _word_ppl(docs) -> float:
    docs = list(docs)
    return math.exp(-sum(d[0] * d[1] for d in docs) / sum(d[1] for d in docs))


def _bpb(docs) -> float:
    docs = list(docs)
    return -sum(d[2] * d[3] for d in docs) / sum(d[3] for d in docs) / math.log(2)


def perplexity_section(c) -> Section | None:
    """The card's perplexity table (a `Comparison` in), None when no bench is a rolling one."""
    rows = perplexity_rows(c.root or c.results, c.baseline, c.variants, c.benches)
    if not rows:
        return None
    cells = []
    for r in rows:
        base = r["variant"] == c.baseline
        interval = "—" if base else f"{signed(r['delta_bpb'], 4, '')} [{r['low']:+.4f}, {r['high']:+.4f}]" + (
            f" on {r['paired_n']}" if r["paired_n"] != r["n"] else "")
        cells.append([f"{r['bench']} ({r['n']})", r["variant"] + (" (baseline)" if base else ""),
                      f"{r['word_ppl']:.4g}", f"{r['bpb']:.4f}", "1" if base else f"{r['ratio']:.4f}", interval])
    table = Table(["Bench (documents)", "Variant", "Word perplexity", "Bits per byte", "Ratio to baseline",
                   "Δ bits per byte [95%]"], cells, [False, False, True, True, True, True])
    return Section("Perplexity", level=3, tables=[table], paragraphs=[
        "lm-eval's corpus values over each variant's documents (word perplexity exp(-Σ log-likelihood / Σ words), "
        "bits per byte -Σ log-likelihood / Σ bytes / ln 2); ratio: the word perplexity over the baseline's; Δ: the "
        "paired difference in bits per byte over the documents both scored, weighted by their bytes, with a 95% "
        "interval over documents (lower is better)."])


def perplexity_benches(c) -> set[str]:
    return {r["bench"] for r in perplexity_rows(c.root or c.results, c.baseline, [], c.benches)}
