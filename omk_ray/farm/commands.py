"""`omk-ray` subcommands of this area; `omk_ray.cli` calls `register(app)` at start-up."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
