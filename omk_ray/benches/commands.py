"""`omk-ray fetch-data`; `omk_ray.cli` calls `register(app)` at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omk_ray.exits import ExitCode, fail


def register(app: typer.Typer) -> None:
    @app.command("fetch-data")
    def fetch_data(
        config: Path = typer.Argument(..., help="grid config (YAML) whose benches to fetch"),
        cache: Optional[Path] = typer.Option(
            None, "--cache", help="data cache folder (default: $OMK_RAY_DATA_CACHE or ~/.cache/omk-ray/data)"),
        bench: Optional[list[str]] = typer.Option(None, "--bench", help="only these benches (repeatable)"),
    ) -> None:
        """Download every bench's data once (hub dataset split at its revision, NLTK data) into a cache.

        Run it where the Hugging Face hub is reachable; then point OMK_RAY_DATA_CACHE at the
        folder on every node, so runs read local files only. Gated datasets (GPQA) need HF_TOKEN.
        Benches with `source: file.jsonl|.parquet` are only checked. Exits 1 if any bench failed.
        """
        from rich.text import Text

        from omk_ray.benches import make_bench
        from omk_ray.benches.sources import DataError, default_cache, is_local_source, read_local
        from omk_ray.config import ConfigError, load_grid
        from omk_ray.console import print_table

        try:
            grid = load_grid(config)
        except ConfigError as err:
            fail(str(err))
        unknown = set(bench or []) - {b.name for b in grid.benches}
        if unknown:
            fail(f"unknown benches {sorted(unknown)}; the grid has {[b.name for b in grid.benches]}")
        cache = Path(cache or default_cache())
        cache.mkdir(parents=True, exist_ok=True)
        rows = []
        for spec in grid.benches:
            if bench and spec.name not in bench:
                continue
            try:
                runner = make_bench(spec)
                if hasattr(runner, "fetch_data"):
                    lines = runner.fetch_data(cache)
                elif is_local_source(spec.source):
                    lines = [f"local data: {len(read_local(spec.source).rows)} rows"]
                else:
                    lines = ["nothing to fetch: the bench loads its own data"]
                rows.append({"bench": spec.name, "status": "ok", "detail": "\n".join(lines)})
            except (DataError, OSError, ValueError, KeyError) as err:
                rows.append({"bench": spec.name, "status": Text("failed", style="red"), "detail": str(err)})
        print_table(rows, f"bench data in {cache}")
        if any(isinstance(row["status"], Text) for row in rows):
            raise typer.Exit(ExitCode.FAILED)
