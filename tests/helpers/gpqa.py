"""GPQA-Diamond-shaped lm-eval logs that reproduce the seed card's numbers, written by lm-eval itself.

No GPQA data ships here (the dataset is gated), so the 198 problems are stand-ins with GPQA's
columns (Question, Correct Answer, Incorrect Answer 1-3, High-level domain, Subdomain,
Record ID) and the card's domain mix. lm-eval's own evaluator runs its own
`gpqa_diamond_cot_zeroshot` task on them (its process_docs, prompt, filters and metrics, the
data read from a local JSON file) against a scripted model that answers each problem right or
wrong as the card's agreement matrix says, at a length chosen so that the chars / 4 token
estimates have the card's distribution. The logs are lm-eval's `--log_samples` output
(`samples_<task>_<date>.jsonl` + `results_<date>.json`), written by its EvaluationTracker.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np

TASK = "gpqa_diamond_cot_zeroshot"

# (domain, subdomain, both right, both wrong, only 128e right, only v4 right): the card's domain,
# subdomain and agreement tables (the four smallest subdomains are not in the card's table).
CARD_GPQA = [
    ("Physics", "High-energy particle physics", 14, 0, 0, 0),
    ("Physics", "Quantum Mechanics", 22, 1, 1, 1),
    ("Physics", "Physics (general)", 15, 2, 1, 1),
    ("Physics", "Astrophysics", 10, 2, 0, 1),
    ("Physics", "Electromagnetism and Photonics", 4, 0, 1, 1),
    ("Physics", "Relativistic Mechanics", 5, 1, 1, 0),
    ("Physics", "Condensed Matter Physics", 1, 0, 0, 0),
    ("Physics", "Optics and Acoustics", 1, 0, 0, 0),
    ("Chemistry", "Organic Chemistry", 29, 22, 13, 8),
    ("Chemistry", "Chemistry (general)", 10, 2, 5, 3),
    ("Chemistry", "Inorganic Chemistry", 1, 0, 0, 0),
    ("Biology", "Molecular Biology", 9, 6, 0, 0),
    ("Biology", "Genetics", 1, 2, 1, 0),
]
# The card's token distribution rows (p10, p50, p90, max, total over 198 responses).
CARD_TOKENS = {"128e": (492, 625, 799, 2814, 134_972), "v4": (501, 617, 760, 2662, 134_546)}
FILLER = ("Consider each option in turn and compare it with what the question states; "
          "the relevant quantities and mechanisms decide between them. ")


def problems() -> list[dict]:
    """The 198 stand-in problems with GPQA's columns, and who answers each right."""
    rows = []
    for domain, subdomain, *counts in CARD_GPQA:
        for (base_ok, v4_ok), k in zip(((True, True), (False, False), (True, False), (False, True)), counts):
            for _ in range(k):
                i = len(rows)
                rows.append({
                    "Record ID": f"rec{i:03d}",
                    "Question": f"Problem rec{i:03d} in {subdomain}: which statement holds?",
                    "Correct Answer": f"statement {i} that holds",
                    "Incorrect Answer 1": f"statement {i} off by a factor",
                    "Incorrect Answer 2": f"statement {i} with the wrong sign",
                    "Incorrect Answer 3": f"statement {i} about another system",
                    "High-level domain": domain,
                    "Subdomain": subdomain,
                    "right": {"128e": base_ok, "v4": v4_ok},
                })
    random.Random(0).shuffle(rows)  # domains interleaved, as in the dataset
    return rows


def lengths(p10: int, p50: int, p90: int, top: int, total: int, n: int = 198) -> list[int]:
    """n token counts whose numpy percentiles (linear) are exactly p10, p50, p90, with that max and sum."""
    at = {int(q * (n - 1)): v for q, v in ((0.1, p10), (0.5, p50), (0.9, p90))}
    values = np.zeros(n, dtype=np.int64)
    for i, v in at.items():
        values[i] = values[i + 1] = v  # a percentile between two equal neighbours is that value
    values[-1] = top
    bounds = [(0, int(0.1 * (n - 1)), p10 * 0.6, p10), (int(0.1 * (n - 1)) + 2, int(0.5 * (n - 1)), p10, p50),
              (int(0.5 * (n - 1)) + 2, int(0.9 * (n - 1)), p50, p90)]
    for start, stop, lo, hi in bounds:
        values[start:stop] = np.linspace(lo, hi, stop - start, endpoint=False).astype(np.int64)
    tail = slice(int(0.9 * (n - 1)) + 2, n - 1)
    left = total - values.sum()
    k = tail.stop - tail.start
    values[tail] = left // k
    values[tail.start : tail.start + left % k] += 1
    out = sorted(values.tolist())
    assert p90 <= out[tail.start] and out[n - 2] <= top and sum(out) == total, "unreachable distribution"
    return out


def response(letter: str, tokens: int) -> str:
    """A chain of thought ending in lm-eval's answer format, exactly 4 x tokens characters long."""
    end = f"\nThe answer is ({letter})."
    body = (FILLER * (4 * tokens // len(FILLER) + 1))[: 4 * tokens - len(end)]
    return body + end


def write_gpqa_logs(root: Path) -> dict[str, Path]:
    """One lm-eval log folder per variant (128e, v4) under `root`."""
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from omk_ray.benches.lmeval import find_task_yaml, load_task_config

    rows = problems()
    data = root / "gpqa_diamond.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "right"}) + "\n" for r in rows))
    by_id = {r["Record ID"]: r for r in rows}

    class Scripted(LM):
        def __init__(self, variant: str):
            super().__init__()
            self.variant = variant
            order = random.Random(variant).sample(sorted(by_id), len(by_id))
            self.tokens = dict(zip(order, lengths(*CARD_TOKENS[variant])))

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for request in requests:
                text = json.loads(request.args[0])[-1]["content"]  # the chat, as apply_chat_template renders it
                problem = by_id[re.search(r"rec\d{3}", text)[0]]
                choices = dict(re.findall(r"\(([ABCD])\) (.+)", text))
                right = next(k for k, v in choices.items() if v == problem["Correct Answer"])
                wrong = next(k for k in "ABCD" if k != right)
                letter = right if problem["right"][self.variant] else wrong
                out.append(response(letter, self.tokens[problem["Record ID"]]))
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        @property
        def tokenizer_name(self) -> str:
            return "scripted"

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            return json.dumps(chat_history)

    config = dict(load_task_config(find_task_yaml(TASK, ())))
    config.update(dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": {"train": str(data)}, "cache_dir": str(root / "hf-cache")})
    folders = {}
    tasks = TaskManager(include_defaults=False)  # the task is given whole: no need to index lm-eval's 10k YAMLs
    for variant in ("128e", "v4"):
        results = simple_evaluate(model=Scripted(variant), tasks=[dict(config)], apply_chat_template=True,
                                  log_samples=True, random_seed=0, task_manager=tasks)
        tracker = EvaluationTracker(output_path=str(root / variant))
        tracker.general_config_tracker.log_experiment_args(
            model_source="scripted", model_args=f"model=gemma-4-{variant}", system_instruction=None,
            chat_template=None, fewshot_as_multiturn=True)
        samples = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=samples)
        tracker.save_results_samples(task_name=TASK, samples=samples[TASK])
        folders[variant] = root / variant
    return folders
