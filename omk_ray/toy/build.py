"""`omk-ray toy train`: train the toy model and write everything the tests and the demo use.

    OUT/model/                 the checkpoint
    OUT/bench.jsonl            held-out bench problems
    OUT/toy_profile_prompts.jsonl  held-out profiling prompts
    OUT/report.json            recipe, training time, weights hash, held-out accuracy per class

The checkpoint is trained into a temporary folder and renamed into place at the end, so an
interrupted run leaves the previous model untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from omk_ray.toy.data import BENCH_FILE, MODEL_DIR, PROFILE_FILE, REPORT_FILE, write_data
from omk_ray.toy.train import ToyRecipe, train


class ToyBuildError(ValueError):
    """An output folder the build refuses to use; the message says why."""


def build_toy(out_dir: str | Path, recipe: ToyRecipe = ToyRecipe(), *, force: bool = False,
              evaluate: bool = True, log=print) -> dict:
    """Train, write the data files, score the held-out problems; returns the report."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ToyBuildError(f"{out} is a file, not a folder")
    model_dir = out / MODEL_DIR
    if model_dir.exists() and not force:
        raise ToyBuildError(f"{model_dir} already exists; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{MODEL_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    try:
        train(partial, recipe, log=log)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    train_seconds = time.perf_counter() - started
    if model_dir.exists():
        shutil.rmtree(model_dir)
    partial.rename(model_dir)
    write_data(out)

    report = {
        "recipe": recipe.model_dump(),
        "train_seconds": round(train_seconds, 1),
        "weights_sha256": weights_hash(model_dir),
        "files": [MODEL_DIR, BENCH_FILE, PROFILE_FILE],
    }
    if evaluate:
        from omk_ray.toy.evaluate import evaluate as score

        log("scoring the held-out bench with the transformers engine")
        report["heldout_accuracy"] = {"engine": "transformers", **score(str(model_dir))}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report


def weights_hash(model_dir: str | Path) -> str:
    """sha256 of the safetensors files, in name order: equal hashes mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()
