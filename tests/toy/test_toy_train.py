"""`omk-ray toy train`: a short run through the CLI, determinism, and a retraining that reproduces the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from omk_ray.toy.data import BENCH_FILE, MODEL_DIR, PROFILE_FILE, REPORT_FILE, shipped

SHORT_STEPS = 12
PREFIX_STEPS = 20
# weights after the shipped recipe's first PREFIX_STEPS steps (warm-up: the same in a PREFIX_STEPS run)
# on a CPU where the full recipe reproduces the shipped weights bitwise (AMD EPYC Zen 4, AVX-512, torch 2.13.0+cpu)
SHIPPED_PREFIX_SHA256 = "4cd8d7d597885e08169c7791f265ff3481a78b63f8ee03e6938031eb555cd2c1"


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


def weights_of(out, *args: str, env: dict | None = None) -> str:
    """Train in a fresh process (as users do) and return the weights' sha256 from its report."""
    done = subprocess.run([sys.executable, "-m", "omk_ray", "toy", "train", "--out", str(out), "--no-eval", *args],
                          capture_output=True, text=True, timeout=3600, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / REPORT_FILE).read_text())["weights_sha256"]


@pytest.mark.slow
def test_training_is_deterministic_whatever_the_process_threads_or_hash_seed(tmp_path):
    """The same seed gives bitwise-equal weights here (a busy test process with 2 torch threads) and in a
    fresh process (1 OpenMP thread, another PYTHONHASHSEED); another seed gives other weights."""
    import torch

    from omk_ray.toy.build import weights_hash
    from omk_ray.toy.train import ToyRecipe, train

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = weights_hash(train(tmp_path / "here", ToyRecipe(seed=0, steps=SHORT_STEPS), log=lambda *a: None))
        other_seed = weights_hash(train(tmp_path / "seed1", ToyRecipe(seed=1, steps=SHORT_STEPS), log=lambda *a: None))
    finally:
        torch.set_num_threads(threads)
    fresh = weights_of(tmp_path / "fresh", "--seed", "0", "--steps", str(SHORT_STEPS),
                       env={"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "12345"})
    assert here == fresh != other_seed


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_weights_bitwise_where_the_cpu_runs_the_same_kernels(tmp_path):
    """The full recipe, in a fresh process (5 minutes on 2 idle cores, up to half an hour on a busy one).

    Which kernels torch and MKL run depends on the CPU (AVX-512 or AVX2, vendor), and any difference in
    the last bit grows over 2,000 steps into another model. The first steps tell whether this CPU runs
    the kernels that trained the shipped toy (as an AMD EPYC Zen 4 with AVX-512 does): if they give other
    bits, the shipped weights cannot be reproduced here and the test says so (determinism is checked above)."""
    import torch

    from omk_ray.toy.train import ToyRecipe, cpu_name

    shipped_report = json.loads(shipped(REPORT_FILE).read_text())
    recipe = ToyRecipe(**shipped_report["recipe"])
    assert recipe == ToyRecipe(seed=recipe.seed, steps=recipe.steps)  # the CLI's defaults, as weights_of runs it
    assert recipe.warmup_steps >= PREFIX_STEPS  # so a PREFIX_STEPS run is the full run's first steps
    prefix = weights_of(tmp_path / "prefix", "--seed", str(recipe.seed), "--steps", str(PREFIX_STEPS))
    if prefix != SHIPPED_PREFIX_SHA256:
        pytest.skip(f"this CPU ({cpu_name()}, torch kernels "
                    f"{torch.backends.cpu.get_cpu_capability()}) gives other bits from the first {PREFIX_STEPS} steps "
                    "than the CPUs that reproduce the shipped toy: its weights cannot be reproduced bitwise here")
    full = weights_of(tmp_path / "full", "--seed", str(recipe.seed), "--steps", str(recipe.steps))
    assert full == shipped_report["weights_sha256"], "same CPU kernels, same first steps, other final weights"
