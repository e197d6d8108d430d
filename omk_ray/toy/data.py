"""The toy model's files: bench and profiling-prompt JSONL, and where the shipped copies live.

`omk_ray/_data/toy/` (package data, written by `omk-ray toy train --out omk_ray/_data/toy`):

    model/                   the trained checkpoint (Gemma4ForCausalLM, tokenizer, chat template)
    bench.jsonl              held-out test problems for the `jsonl` bench:
                             {"id", "prompt", "target", "domain" (class), "subdomain" (subclass)}
    toy_profile_prompts.jsonl  held-out profiling prompts: {"id", "class", "subclass", "prompt"}
    report.json              recipe, training time and held-out accuracy per class and subclass
    calibration.txt          chat-formatted training-distribution problems: the text GGUF builds
                             compute their importance matrix on (`gguf: {imatrix: calibration.txt}`)
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from omk_ray.files import write_text_atomic
from omk_ray.toy.tasks import TrainingStream, heldout_problems

MODEL_DIR = "model"
BENCH_FILE = "bench.jsonl"
PROFILE_FILE = "toy_profile_prompts.jsonl"
REPORT_FILE = "report.json"
CALIBRATION_FILE = "calibration.txt"
CALIBRATION_SEED, CALIBRATION_PROBLEMS = 5_000_011, 400


def assets_dir() -> Path:
    return Path(str(resources.files("omk_ray") / "_data" / "toy"))


def shipped(name: str = MODEL_DIR) -> Path:
    """Path of a shipped asset (`model`, `bench.jsonl`, ...); a clear error if it is missing."""
    path = assets_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rebuild the toy assets with `omk-ray toy train --out {assets_dir()}`")
    return path


def bench_rows() -> list[dict]:
    return [
        {"id": p["id"], "prompt": p["prompt"], "target": p["target"], "domain": p["class"], "subdomain": p["subclass"]}
        for p in heldout_problems("test")
    ]


def profile_rows() -> list[dict]:
    return [{"id": p["id"], "class": p["class"], "subclass": p["subclass"], "prompt": p["prompt"]}
            for p in heldout_problems("profile")]


def calibration_text() -> str:
    """Problems and answers as the model saw them in training (none from a held-out set)."""
    return "".join(f"<|turn>user\n{p['prompt']}<turn|>\n<|turn>model\n{p['target']}<turn|>\n"
                   for p in TrainingStream(CALIBRATION_SEED).batch(CALIBRATION_PROBLEMS))


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_data(out_dir: str | Path) -> dict[str, Path]:
    """Write the bench, the profiling prompts and the calibration text into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CALIBRATION_FILE).write_text(calibration_text())
    return {
        "bench": write_jsonl(out / BENCH_FILE, bench_rows()),
        "profile": write_jsonl(out / PROFILE_FILE, profile_rows()),
        "calibration": out / CALIBRATION_FILE,
    }
