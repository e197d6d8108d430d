"""`omk-ray import lm-eval|lcb` and `omk-ray rescore`; `omk_ray.cli` calls `register(app)` at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omk_ray.console import output_console
from omk_ray.exits import ExitCode, fail

BULK = 10  # `rescore` writes more score changes than this only with --yes


def _warn(message: str) -> None:
    from rich.markup import escape

    from omk_ray.console import output_console

    output_console(stderr=True).print(f"[yellow]{escape(message)}[/]", highlight=False)


def _print_rows(rows: list[dict], title: str) -> None:
    from omk_ray.console import print_table

    print_table(rows, title, empty=False)


def _load_grid(path: Path | None):
    if path is None:
        return None
    from omk_ray.config import ConfigError, load_grid

    try:
        return load_grid(path)
    except ConfigError as err:
        fail(str(err))


def _pairs(values: list[str], option: str, example: str = "TASK=METRIC,FILTER, e.g. gsm8k=exact_match,flexible-extract"
           ) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, metric = value.partition("=")
        if not sep or not key or not metric:
            raise typer.BadParameter(f"{value!r}: expected {example}", param_hint=option)
        out[key] = metric
    return out


def _print_changes(reports) -> None:
    """Every score a rescoring changes (and keeps), one line each."""
    from omk_ray.console import output_console

    out = output_console()
    for r in reports:
        for c in r.changes:
            out.print(f"{r.variant}/{r.bench} {c.doc_id}#{c.repeat}: {_score(c.old)} -> {_score(c.new)} ({c.why})",
                      highlight=False, markup=False)
        for c in r.kept:
            out.print(f"kept {r.variant}/{r.bench} {c.doc_id}#{c.repeat}: {_score(c.old)} (the same scorer now gives "
                      f"{_score(c.new)} for the same inputs)", highlight=False, markup=False)


def _score(value: float | None) -> str:
    return "error" if value is None else f"{value:g}"


def _recipe_fields(values: list[str]) -> dict | None:
    """--recipe KEY=VALUE (repeatable; values read as YAML: true, 12288, 0.95) -> recipe fields, checked."""
    if not values:
        return None
    import yaml

    from omk_ray.config import RECIPE_KEYS

    fields = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r}: expected KEY=VALUE, e.g. enable_thinking=true", param_hint="--recipe")
        if key not in RECIPE_KEYS:
            raise typer.BadParameter(f"{key!r} is not a recipe key (keys: {', '.join(sorted(RECIPE_KEYS))})",
                                     param_hint="--recipe")
        fields[key] = yaml.safe_load(raw)
    return fields


RECIPE_HELP = ("KEY=VALUE: the recipe the log ran under, over what the log and the grid say (repeatable), e.g. "
               "--recipe enable_thinking=true --recipe thinking_budget=12288")


def _report_imports(reports) -> None:
    rows = []
    for r in reports:
        domains = f"{' / '.join(f for f in r.domain_fields if f)} ({r.with_domain} rows)" if r.with_domain else "-"
        for key, (logged, ours) in (r.aggregates or {"-": (float("nan"), float("nan"))}).items():
            rows.append({"bench": r.bench, "task": r.task, "samples": r.rows, "metric": key,
                         "logged": f"{logged:.4f}", "from rows": f"{ours:.4f}",
                         "reproduced": "yes" if r.reproduced else "NO", "domains": domains})
    _print_rows(rows, "imported")
    if not all(r.reproduced for r in reports):
        fail("some imported aggregates differ from the run's own results file (see 'reproduced')", ExitCode.FAILED)


def register(app: typer.Typer) -> None:
    importer = typer.Typer(
        help="Bring past runs (lm-eval logs, LiveCodeBench runner output) into a results folder as a variant.",
        no_args_is_help=True,
    )

    @importer.command("lm-eval")
    def import_lm_eval(
        folder: Path = typer.Argument(..., help="folder with lm-eval samples_<task>_<date>.jsonl + results_<date>.json "
                                                "(searched recursively)"),
        variant: str = typer.Option(..., "--variant", "-v", help="variant name the imported rows get"),
        results: Path = typer.Option(..., "--results", "-r", help="results folder to import into"),
        config: Optional[Path] = typer.Option(
            None, "--config", help="grid whose benches name the tasks (bench options.task), primary metrics and ids"),
        primary_metric: list[str] = typer.Option(
            [], "--primary-metric", help="TASK=METRIC,FILTER: the metric that becomes `score` (repeatable)"),
        domain_field: list[str] = typer.Option(
            [], "--domain-field", help="TASK=FIELD: the doc field holding each problem's domain (repeatable; "
                                       "GPQA tasks: 'High-level domain' by default)"),
        subdomain_field: list[str] = typer.Option(
            [], "--subdomain-field", help="TASK=FIELD: the doc field holding each problem's subdomain (GPQA: "
                                          "'Subdomain' by default)"),
        model: Optional[str] = typer.Option(
            None, "--model", help="the variant's checkpoint folder or hub id: its facts (parameters, experts, drop "
                                  "map) are read from the safetensors headers and provenance, never the weights"),
        revision: Optional[str] = typer.Option(None, "--revision", help="hub revision of --model"),
        wait: bool = typer.Option(False, "--wait", help="wait for the run writing RESULTS instead of refusing"),
        recipe: list[str] = typer.Option([], "--recipe", help=RECIPE_HELP),
    ) -> None:
        """Import lm-eval per-sample logs: one row per doc, every metric of every filter in its metric map.

        Prints each aggregate of the run's results file next to the same aggregate recomputed from the imported rows; exits 1 if any differs. Domains come from the doc fields named by --domain-field / --subdomain-field, else by the grid's bench options domain_field / subdomain_field, else by the task's defaults (GPQA: High-level domain, Subdomain).
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from omk_ray.results.folder_lock import FolderBusy
        from omk_ray.results.importers import LogImportError, import_lmeval

        grid = _load_grid(config)
        fields = "TASK=FIELD, e.g. my_task=category"
        try:
            reports = import_lmeval(folder, variant, results, grid, _pairs(primary_metric, "--primary-metric"),
                                    _pairs(domain_field, "--domain-field", fields),
                                    _pairs(subdomain_field, "--subdomain-field", fields), model, revision, wait=wait,
                                    recipe=_recipe_fields(recipe))
        except (LogImportError, FolderBusy, OSError, ValueError) as err:
            fail(str(err))
        _report_imports(reports)

    @importer.command("lcb")
    def import_lcb_cmd(
        file: Path = typer.Argument(..., help="the LCB runner's <name>.samples.jsonl (or its <name>.json)"),
        variant: str = typer.Option(..., "--variant", "-v", help="variant name the imported rows get"),
        results: Path = typer.Option(..., "--results", "-r", help="results folder to import into"),
        bench: Optional[str] = typer.Option(None, "--bench", help="bench name of the rows (default: the grid's "
                                                                  "livecodebench bench, else lcb_medium)"),
        config: Optional[Path] = typer.Option(
            None, "--config", help="grid whose livecodebench bench names the rows and whose recipe for the variant "
                                   "is recorded (the runner logs none)"),
        model: Optional[str] = typer.Option(None, "--model", help="the variant's checkpoint folder or hub id (facts)"),
        revision: Optional[str] = typer.Option(None, "--revision", help="hub revision of --model"),
        wait: bool = typer.Option(False, "--wait", help="wait for the run writing RESULTS instead of refusing"),
        recipe: list[str] = typer.Option([], "--recipe", help=RECIPE_HELP),
    ) -> None:
        """Import the upstream LiveCodeBench runner's per-problem samples (pass/fail, tokens, finish reason).

        The runner logs no recipe: give it with --config (the variant's recipe there) or --recipe, else the card says the recipe is not recorded.
        """  # noqa: E501
        from omk_ray.results.folder_lock import FolderBusy
        from omk_ray.results.importers import LogImportError, import_lcb

        grid = _load_grid(config)
        try:
            report = import_lcb(file, variant, results, bench, model, revision, wait=wait, grid=grid,
                                recipe=_recipe_fields(recipe))
        except (LogImportError, FolderBusy, OSError, ValueError) as err:
            fail(str(err))
        _report_imports([report])

    app.add_typer(importer, name="import")

    @app.command()
    def doctor(
        results: Path = typer.Argument(..., help="results folder"),
        quarantine: bool = typer.Option(False, "--quarantine", help="move the unreadable files to "
                                        "RESULTS/quarantine/<time>/: the next run generates their samples again"),
        wait: bool = typer.Option(False, "--wait", help="with --quarantine: wait for the run writing RESULTS "
                                                        "instead of refusing"),
    ) -> None:
        """Read every shard and run manifest of RESULTS whole and list those that cannot be read, with what is wrong.

        Exit code 0 when every file reads (or every bad one was moved aside with --quarantine); 1 when bad
        files remain.
        """
        from contextlib import nullcontext

        from omk_ray.console import output_console
        from omk_ray.results.folder_lock import FolderBusy, writing
        from omk_ray.results.store import ResultsStore

        store = ResultsStore(results)
        if not store.root.is_dir():
            fail(f"{results}: no such results folder")
        try:  # moving files aside: only while no run or import writes the folder
            with writing(results, "doctor --quarantine", wait=wait) if quarantine else nullcontext():
                bad = store.check()
                shards, runs = len(store.shard_paths()), len(list(store.runs_dir.glob("*/manifest.json")))
                _print_rows([{"file": str(b.path), "problem": b.problem} for b in bad], "unreadable")
                out = output_console()
                out.print(f"checked {shards} shards and {runs} run manifests: {len(bad)} unreadable", highlight=False)
                if bad and quarantine:
                    out.print(f"moved {len(bad)} file(s) to {store.quarantine(bad)}", highlight=False)
        except FolderBusy as err:
            fail(str(err))
        if bad and not quarantine:
            _warn("rerun with --quarantine to move them aside (the next `omk-ray run` generates their samples again)")
            raise typer.Exit(ExitCode.FAILED)

    @app.command()
    def rescore(
        results: Path = typer.Argument(..., help="results folder"),
        bench: Optional[str] = typer.Option(None, "--bench", help="only this bench"),
        config: Optional[Path] = typer.Option(None, "--config", help="grid that defines the benches (default: the "
                                                                     "grids recorded by runs and imports)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="list what would change; write nothing"),
        yes: bool = typer.Option(False, "--yes", help=f"write even when more than {BULK} scores change"),
        force: bool = typer.Option(False, "--force", help="also change scores that the same scorer version now "
                                   "gives differently from the same inputs (kept otherwise)"),
        variant: list[str] = typer.Option([], "--variant", "-v", help="only this variant (repeatable); the "
                                          "others' shards are not touched"),
        wait: bool = typer.Option(False, "--wait", help="wait for the run writing RESULTS instead of refusing"),
    ) -> None:
        """Score stored responses again with the current scorers (no generation).

        A stored score changes only when its scorer (version) or its inputs (document, target) changed,
        or it was a scorer error; every change is printed before anything is written, and more than 10 are written only with --yes (else nothing is: a dry run). A sample whose score changes keeps its previous score in its metric map as `score@<previous scorer version>`. Each imported variant is scored under the bench record of its own import (its primary metric); --config overrides that.
        """  # noqa: E501
        from omk_ray.benches.sources import DataError
        from omk_ray.results.folder_lock import FolderBusy
        from omk_ray.results.rescore import RescoreError, rescore as run_rescore

        grid = _load_grid(config)
        refused: list[int] = []

        def confirm(reports) -> bool:
            _print_changes(reports)
            total = sum(r.changed for r in reports)
            if total > BULK and not yes:
                refused.append(total)
                return False
            return True

        try:
            reports = run_rescore(results, bench, grid, dry_run=dry_run, variants=variant or None, wait=wait,
                                  force=force, confirm=confirm)
        except (RescoreError, DataError, FolderBusy) as err:
            fail(str(err))
        if dry_run:
            _print_changes(reports)
        written = not dry_run and not refused
        _print_rows([{"bench": r.bench, "variant": r.variant, "samples": r.rows, "changed": r.changed,
                      "kept": len(r.kept), "restamped": r.restamped, "scorer errors": r.errors,
                      "previous scorers": ", ".join(sorted(r.scorer_versions)),
                      "shards rewritten": r.shards} for r in reports if not r.skipped],
                    "rescored" if written else "rescored (dry run: nothing written)")
        changed = sum(r.changed for r in reports)
        kept = sum(len(r.kept) for r in reports)
        output_console().print(
            f"{changed} score(s) {'changed' if written else 'would change'}"
            + (f", {kept} kept (same scorer and inputs; --force writes them)" if kept else "")
            + ("" if written else "; nothing written"), highlight=False)
        if refused:
            fail(f"{refused[0]} stored scores would change (more than {BULK}): nothing written; check the "
                 "changes above, then rerun with --yes to write them")
        skipped = [r for r in reports if r.skipped]
        for r in skipped:
            _warn(f"skipped {r.bench} ({r.variant}): {r.skipped}")
        if skipped:
            raise typer.Exit(ExitCode.FAILED)
