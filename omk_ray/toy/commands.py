"""`omk-ray toy ...`: the toy MoE that has learned synthetic tasks (see omk_ray/toy/train.py).

    omk-ray toy train --out omk_ray/_data/toy [--seed 0] [--steps N] [--force]
    omk-ray toy data  --out DIR
    omk-ray toy eval  [--model DIR] [--engine transformers|vllm]
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omk_ray.exits import fail


def _print_accuracy(scores: dict[str, float], title: str) -> None:
    from omk_ray.console import print_table

    print_table([{"class": name, "held-out accuracy": f"{value:.3f}"} for name, value in scores.items()
                 if name != "engine"], title, right={"held-out accuracy"})


def register(app: typer.Typer) -> None:
    toy = typer.Typer(help="The toy Gemma 4 MoE: synthetic tasks, CPU training, the shipped checkpoint.",
                      no_args_is_help=True)
    app.add_typer(toy, name="toy")

    @toy.command("train")
    def train_cmd(
        out: Path = typer.Option(..., "--out", help="Folder for model/, bench.jsonl, toy_profile_prompts.jsonl, "
                                 "report.json (omk_ray/_data/toy refreshes the shipped copy)."),
        seed: int = typer.Option(0, "--seed", help="Seeds the weights, the training stream and the specialists."),
        steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps (default: the recipe's)."),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (results depend on it slightly)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing OUT/model."),
        no_eval: bool = typer.Option(False, "--no-eval", help="Skip scoring the held-out bench."),
    ):
        """Train the toy MoE on CPU (a few minutes) and score it on held-out problems."""
        from omk_ray.toy.build import ToyBuildError, build_toy
        from omk_ray.toy.train import ToyRecipe

        recipe = ToyRecipe(seed=seed, threads=threads, **({"steps": steps} if steps else {}))
        try:
            report = build_toy(out, recipe, force=force, evaluate=not no_eval, log=typer.echo)
        except ToyBuildError as err:
            fail(str(err))
        typer.echo(f"wrote {out}: trained {recipe.steps} steps in {report['train_seconds']:.0f} s")
        if "heldout_accuracy" in report:
            _print_accuracy(report["heldout_accuracy"], "held-out accuracy (transformers engine, greedy)")

    @toy.command("data")
    def data_cmd(out: Path = typer.Option(..., "--out", help="Folder for bench.jsonl and toy_profile_prompts.jsonl.")):
        """Write the held-out bench and profiling prompts (no training)."""
        from omk_ray.toy.data import write_data

        if out.exists() and not out.is_dir():
            fail(f"{out} is a file, not a folder")
        for kind, path in write_data(out).items():
            typer.echo(f"{kind}: {path}")

    @toy.command("eval")
    def eval_cmd(
        model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint folder (default: the shipped toy model)."),
        engine: str = typer.Option("transformers", "--engine", help="transformers or vllm"),
    ):
        """Held-out accuracy per class of a toy checkpoint (a pruned one, say)."""
        from omk_ray.toy.data import shipped
        from omk_ray.toy.evaluate import evaluate

        if engine not in ("transformers", "vllm"):
            raise typer.BadParameter(f"unknown engine {engine!r}: choose transformers or vllm", param_hint="--engine")
        try:
            path = model or shipped()
        except FileNotFoundError as err:
            fail(str(err))
        if not (path / "config.json").is_file():
            fail(f"{path} is not a checkpoint folder (no config.json)")
        _print_accuracy(evaluate(str(path), engine=engine), f"{path}: held-out accuracy ({engine})")
