"""Fixtures every area shares: a real local Ray, a tiny real Gemma 4 MoE built once per session.

Area fixtures live in tests/<area>/conftest.py; plain helpers that tests import, in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def local_ray():
    """A real local Ray with 2 CPUs, shut down after the test."""
    from omk_ray.farm import NAMESPACE

    ray.init(address="local", num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_gemma4(tmp_path_factory) -> Path:
    from omk_ray.toy.tiny import build_tiny_gemma4

    return build_tiny_gemma4(tmp_path_factory.mktemp("models") / "tiny-gemma4", seed=0)
