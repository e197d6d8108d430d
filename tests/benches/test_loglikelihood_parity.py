"""Loglikelihood tasks at parity with lm-eval itself: lm-eval's `hf` backend and omk-ray's
transformers engine on the shipped toy and omk-ray's toy tasks (multiple_choice, loglikelihood,
loglikelihood_rolling; offline JSON data) give the same per-document log-probabilities (float32,
within 1e-4 absolute or 1e-6 relative), the same is_greedy, acc / acc_norm / perplexity per document, and the same
aggregates (word/byte perplexity, bits per byte). The vLLM twin is tests/engines/test_vllm_scoring.py."""

from __future__ import annotations

import pytest

pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (the bench extra)")

from helpers.lmeval_scoring import MAX_LENGTH, TOLERANCE, TOY, check_engine_parity  # noqa: E402

pytestmark = pytest.mark.slow


def test_transformers_engine_scores_as_lmeval_hf():
    from omk_ray.config import VariantSpec
    from omk_ray.engines.transformers_engine import TransformersEngine

    variant = VariantSpec(name="toy", model=str(TOY), engine="transformers",
                          engine_args={"dtype": "float32", "max_model_len": MAX_LENGTH, "batch_size": 8})
    engine = TransformersEngine(variant, str(TOY))
    worst = check_engine_parity(engine)
    print(f"largest |Δ log-likelihood| vs lm-eval hf (tolerance {TOLERANCE}):", worst)


def test_lmeval_logs_of_loglikelihood_tasks_import_and_reproduce_their_aggregates(tmp_path):
    from helpers.lmeval_scoring import TASKS, lmeval_reference, logged_loglikelihoods
    from omk_ray.results.importers import import_lmeval
    from omk_ray.results.store import ResultsStore

    reference = lmeval_reference()
    reports = import_lmeval(reference["logs"], "toy-lmeval", tmp_path / "results")
    assert sorted(r.task for r in reports) == sorted(TASKS)
    for report in reports:
        assert report.reproduced, report.aggregates  # lm-eval's acc, perplexity, word/byte perplexity, bits per byte
        assert len(report.aggregates) == {"toy_mc": 2, "toy_ll": 2, "toy_rolling": 3}[report.task]
    rows = ResultsStore(tmp_path / "results").read().to_pylist()
    assert len(rows) == 24 + 16 + 12
    for row in rows:
        sample = reference[row["bench"]]["samples"][row["doc_id"]]
        assert row["choice_logprobs"] == [ll for ll, _ in logged_loglikelihoods(sample)]
        if row["bench"] == "toy_mc":
            lls = row["choice_logprobs"]
            assert row["chosen"] == lls.index(max(lls)) and row["score"] == sample["acc"]
        if row["bench"] == "toy_rolling":  # a rolling document's score: its own bits per byte
            ll, n = sample["bits_per_byte"]
            assert row["score"] == pytest.approx(-ll / n / 0.6931471805599453, rel=1e-12) and row["correct"] is None

    from omk_ray.results.rescore import rescore

    # rescoring the imported rows from their logged log-likelihoods (no engine) gives lm-eval's values back
    reports = rescore(tmp_path / "results")
    assert sorted(r.bench for r in reports) == sorted(TASKS)
    assert all((r.rows, r.changed, r.kept, r.errors, r.skipped) == (r.rows, 0, [], 0, None) for r in reports), reports
    assert ResultsStore(tmp_path / "results").read().to_pylist() == rows
