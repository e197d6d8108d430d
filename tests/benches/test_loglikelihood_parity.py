"""Loglikelihood tasks at parity with lm-eval itself: lm-eval's `hf` backend and omk-ray's
transformers engine on the shipped toy and omk-ray's toy tasks (multiple_choice, loglikelihood,
loglikelihood_rolling; offline JSON data) give the same per-document log-probabilities (float32,
within 1e-4 absolute), the same is_greedy, acc / acc_norm / perplexity per document, and the same
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
