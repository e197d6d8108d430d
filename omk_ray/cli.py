"""The `omk-ray` command: each area adds its own commands through `register(app)` (the farm's
plan, run, status, ... are in `omk_ray/farm/commands.py`)."""

from __future__ import annotations

import importlib
import sys

import typer

class _App(typer.Typer):
    """The command line: a full disk ends any command with one sentence and exit 2, not a traceback."""

    def __call__(self, *args, **kwargs):
        from omk_ray.exits import ExitCode, error
        from omk_ray.files import disk_full

        try:
            return super().__call__(*args, **kwargs)
        except OSError as err:
            if not disk_full(err):
                raise
            error(f"{err}: the command stopped; every file it wrote before is whole (each is written aside and "
                  "renamed into place)")
            sys.exit(int(ExitCode.REFUSED))


app = _App(
    name="omk-ray",
    help="Evaluation and ablation farm for expert-pruned MoE models, on Ray.\n\n"
    "Typical flow: `omk-ray plan GRID`, `omk-ray run GRID --results DIR`, `omk-ray status DIR`, "
    "`omk-ray compare DIR --baseline NAME`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="also show third-party notices and warnings "
                                          "(Ray's token-authentication notice, vLLM's Triton notice, "
                                          "library deprecations) that are hidden by default")) -> None:
    from omk_ray.console import quiet_third_parties

    quiet_third_parties(verbose)


AREAS = ("farm", "variants", "analysis", "benches", "results", "toy", "llamacpp", "view")

for _area in AREAS:
    importlib.import_module(f"omk_ray.{_area}.commands").register(app)


def main() -> None:  # pragma: no cover
    sys.exit(app())
