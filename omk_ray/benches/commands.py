"""`omk-ray fetch-data`; `omk_ray.cli` calls `register(app)` at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omk_ray.exits import ExitCode, fail


def register(app: typer.Typer) -> None:
    @app.command("fetch-data")
    def fetch_data(
        config: Optional[Path] = typer.Argument(None, help="grid config (YAML) whose benches to fetch; without "
                                                "one, --bench names lm-eval tasks whose scoring data to fetch"),
        cache: Optional[Path] = typer.Option(
            None, "--cache", help="data cache folder (default: $OMK_RAY_DATA_CACHE or ~/.cache/omk-ray/data)"),
        bench: Optional[list[str]] = typer.Option(None, "--bench", help="only these benches (repeatable)"),
    ) -> None:
        """Download every bench's data once (hub dataset split at its revision, NLTK data) into a cache.

        Run it where the Hugging Face hub is reachable; then point OMK_RAY_DATA_CACHE at the
        folder on every node, so runs read local files only. Gated datasets (GPQA) need HF_TOKEN.
        Benches with `source: file.jsonl|.parquet` are only checked. Exits 1 if any bench failed.

        Without a grid, `--bench TASK` fetches what scoring that lm-eval task needs (ifeval: NLTK's
        punkt_tab), e.g. to rescore imported lm-eval logs: `omk-ray fetch-data --bench ifeval --cache DIR`.
        """
        from rich.text import Text

        from omk_ray.benches import make_bench
        from omk_ray.benches.sources import DataError, default_cache, is_local_source, read_local
        from omk_ray.config import ConfigError, load_grid
        from omk_ray.console import print_table

        if config is None:
            _fetch_scoring_data(bench or [], cache)
            return
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


def _fetch_scoring_data(tasks: list[str], cache: Path | None) -> None:
    """What scoring the lm-eval `tasks` needs (NLTK data), with no grid: one line each; exit 1 if one failed."""
    from omk_ray.benches.lmeval import NLTK_NEEDS
    from omk_ray.benches.sources import DataError, default_cache, fetch_nltk

    if not tasks:
        fail("give a grid config, or --bench TASK to fetch what scoring an lm-eval task needs "
             f"(known: {', '.join(NLTK_NEEDS)})")
    unknown = [t for t in tasks if t not in NLTK_NEEDS]
    if unknown:
        fail(f"--bench {', '.join(unknown)}: without a grid, fetch-data knows the scoring data of "
             f"{', '.join(NLTK_NEEDS)} only; give the grid config to fetch a bench's dataset")
    cache = Path(cache or default_cache())
    failed = 0
    for task in tasks:
        for resource in NLTK_NEEDS[task]:
            try:
                typer.echo(f"{task}: nltk {resource}: {fetch_nltk(resource, cache)} (in {cache})")
            except DataError as err:
                failed += 1
                typer.echo(f"{task}: nltk {resource}: failed: {err}", err=True)
    if failed:
        raise typer.Exit(ExitCode.FAILED)
