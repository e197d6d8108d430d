"""`omk-ray toy train`: a short run through the CLI, and a full retraining that reproduces the shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from omk_ray.toy.data import BENCH_FILE, MODEL_DIR, PROFILE_FILE, REPORT_FILE, shipped
from omk_ray.toy.tasks import CLASSES

REPRODUCE_TOLERANCE = 0.10  # per class, absolute held-out accuracy


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omk_ray", "toy", "train", *args],
                          capture_output=True, text=True, timeout=600)


def test_cli_train_writes_a_loadable_checkpoint_and_refuses_to_overwrite(tmp_path):
    done = run_cli("--out", str(tmp_path), "--steps", "3", "--no-eval", "--seed", "5")
    assert done.returncode == 0, done.stderr
    for name in (MODEL_DIR, BENCH_FILE, PROFILE_FILE, REPORT_FILE):
        assert (tmp_path / name).exists(), name
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["recipe"]["steps"] == 3 and report["recipe"]["seed"] == 5

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / MODEL_DIR)
    assert type(model).__name__ == "Gemma4ForCausalLM"
    assert AutoTokenizer.from_pretrained(tmp_path / MODEL_DIR).chat_template

    again = run_cli("--out", str(tmp_path), "--steps", "3", "--no-eval")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert json.loads((tmp_path / REPORT_FILE).read_text()) == report, "a refused run changed the report"


@pytest.mark.slow
def test_retraining_with_the_same_seed_reproduces_the_shipped_scores(tmp_path):
    """The full recipe (several minutes on 2 CPU cores, longer on a busy machine)."""
    from omk_ray.toy.build import build_toy
    from omk_ray.toy.train import ToyRecipe

    shipped_report = json.loads(shipped(REPORT_FILE).read_text())
    started = time.perf_counter()
    report = build_toy(tmp_path, ToyRecipe(**shipped_report["recipe"]), log=lambda *a: None)
    print(f"retrained in {time.perf_counter() - started:.0f} s; bitwise-equal weights: "
          f"{report['weights_sha256'] == shipped_report['weights_sha256']}")
    want, got = shipped_report["heldout_accuracy"], report["heldout_accuracy"]
    off = {c: (want[c], got[c]) for c in CLASSES if abs(want[c] - got[c]) > REPRODUCE_TOLERANCE}
    assert not off, f"(shipped, retrained) held-out accuracy differ by more than {REPRODUCE_TOLERANCE}: {off}"
