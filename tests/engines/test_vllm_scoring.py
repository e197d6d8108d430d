"""vLLM scores text at parity with lm-eval's `hf` backend (the transformers twin is
tests/benches/test_loglikelihood_parity.py): the toy's multiple-choice, loglikelihood and rolling
tasks give lm-eval's per-document log-probabilities (float32, within 1e-4 absolute or 1e-6 relative), is_greedy,
per-document metrics and aggregates. vLLM's `max_model_len` is the window + 2 (engines/scoring.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (the bench extra)")

from helpers.lmeval_scoring import MAX_LENGTH, TOLERANCE, TOY, check_engine_parity  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_vllm_engine_scores_as_lmeval_hf():
    from omk_ray.config import VariantSpec
    from omk_ray.engines.vllm_engine import VLLMEngine

    variant = VariantSpec(name="toy", model=str(TOY), engine="vllm",
                          engine_args={"dtype": "float32", "max_model_len": MAX_LENGTH + 2,
                                       "extra": {"enforce_eager": True}})
    engine = VLLMEngine(variant, str(TOY))
    try:
        assert engine.score_max_length == MAX_LENGTH
        worst = check_engine_parity(engine)
    finally:
        engine.close()
    print(f"largest |Δ log-likelihood| vs lm-eval hf (tolerance {TOLERANCE}):", worst)
