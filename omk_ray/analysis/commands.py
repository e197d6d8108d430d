"""`omk-ray compare`, `omk-ray compare-serving` and `omk-ray canary`; `omk_ray.cli` calls `register(app)` at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omk_ray.analysis.tokens import DEFAULT_STATS
from omk_ray.exits import ExitCode, fail, validation_sentence

# CompareOptions / CardOptions fields -> the options that set them (for one-sentence errors)
OPTION_NAMES = {"correction": "--correction", "resamples": "--resamples", "stats": "--token-stats",
                "subdomain_min_n": "--min-subdomain-n", "metrics": "--metric", "benches": "--bench",
                "variants": "--variants", "baseline": "--baseline", "recipe": "--recipe"}


def _metric_options(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        bench, sep, key = value.partition("=")
        if not sep or not bench or not key:
            raise typer.BadParameter(f"{value!r}: expected BENCH=METRIC, e.g. gsm8k=exact_match,flexible-extract",
                                     param_hint="--metric")
        out[bench] = key
    return out


def _floor_options(values: list[str]) -> dict[str, float]:
    out = {}
    for value in values:
        bench, sep, number = value.partition("=")
        try:
            out[bench] = float(number)
        except ValueError:
            sep = ""
        if not sep or not bench:
            raise typer.BadParameter(f"{value!r}: expected BENCH=TOKENS, e.g. gsm8k=16", param_hint="--floor")
    return out


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True})
    def compare(
        ctx: typer.Context,
        results: Path = typer.Argument(..., help="results folder of one or more runs"),
        baseline: str = typer.Option(..., "--baseline", "-b", help="the variant every other is compared with"),
        variants: Optional[list[str]] = typer.Option(
            None, "--variants", "--variant", "-v",
            help="variants to compare (repeat the option or list them after it); default: all others"),
        benches: Optional[list[str]] = typer.Option(None, "--bench", help="only these benches (repeatable)"),
        out: Path = typer.Option(Path("report"), "--out", "-o",
                                 help="folder for report.md, card.md, report.html, tables/, summary.json"),
        metric: list[str] = typer.Option(
            [], "--metric", help="BENCH=KEY: the bench's primary metric from the samples' metrics map "
                                 "(e.g. ifeval=prompt_level_strict_acc); default: the stored score"),
        allow_mismatch: bool = typer.Option(
            False, "--allow-mismatch", help="build tables from different cohorts or undeclared recipes anyway, marked ‡ "
                                            "(a folder of several recipe sets: the latest one, said on stderr)"),
        recipe: Optional[str] = typer.Option(
            None, "--recipe", metavar="latest|HASH[,HASH]",
            help="a folder holding several recipe sets (a recipe changed between runs): compare the latest "
                 "of each variant x bench, or those whose recipe hash starts with HASH"),
        resamples: int = typer.Option(2000, help="bootstrap resamples for the confidence intervals"),
        correction: Optional[str] = typer.Option(
            None, "--correction", metavar="[grid|variant|none]",
            help="the family Holm corrects p-values over: grid (every variant x bench), variant (the benches of "
                 "each variant) or none; default: grid with more than one variant, else variant"),
        no_html: bool = typer.Option(False, "--no-html", help="skip the HTML report (and its plots)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="do not print the Markdown report"),
        output: str = typer.Option(
            "report", "--format", help="what to print: `report` (every table, with paired statistics) or `card` "
                                       "(the model card's evaluation section, also written to OUT/card.md)"),
        token_stats: str = typer.Option(
            ",".join(DEFAULT_STATS), "--token-stats",
            help="the card's token columns: pN, median, mean, min, max, total (e.g. median,mean,p95,max,total)"),
        no_stderr: bool = typer.Option(False, "--no-stderr", help="card: no ± standard error beside the scores"),
        no_counts: bool = typer.Option(False, "--no-counts", help="card: no k/n beside pass/fail scores"),
        abbreviate_totals: bool = typer.Option(False, "--abbreviate-totals",
                                               help="card: token totals as 54.9k, 112k (the seed's supplementary table)"),
        min_subdomain_n: int = typer.Option(5, "--min-subdomain-n", min=1,
                                            help="card: subdomains with fewer problems are named, not tabled"),
    ) -> None:
        """Compare variants with a baseline: scoreboard with paired statistics, token distributions, anomalies, domain breakdown and per-problem agreement.

        Writes OUT/report.md (every table), OUT/card.md (the model card's evaluation section: variant facts, scores side by side with standard errors, token distribution, anomalies, domains, agreement), OUT/report.html (self-contained, with plots), OUT/tables/*.parquet (every table, for DuckDB, pandas, polars) and OUT/summary.json, and prints the report (or with --format card the card). Refuses to mix cohorts (greedy vs sampled) or undeclared recipe differences in one table unless --allow-mismatch.

        Example: omk-ray compare results/ --baseline 128e --variants v4 v4-geomean --out report/ --format card
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from pydantic import ValidationError

        from omk_ray.analysis.card import CardOptions, to_card
        from omk_ray.analysis.compare import CompareOptions
        from omk_ray.analysis.compare import compare as run_compare
        from omk_ray.analysis.markdown import to_markdown
        from omk_ray.analysis.report import write_report
        from omk_ray.analysis.samples import AnalysisError

        if not results.is_dir():
            fail(f"{results}: no such results folder")
        if ctx.args and not variants:
            fail(f"unexpected arguments {ctx.args}: only RESULTS is positional (variants go after --variants)")
        variants = [*(variants or []), *ctx.args]  # `--variants a b c`: click hands over b and c as extra args
        if output not in ("report", "card"):
            fail(f"--format {output!r}: choose report or card")
        try:
            options = CompareOptions(baseline=baseline, variants=_split(variants), benches=_split(benches),
                                     metrics=_metric_options(metric), allow_mismatch=allow_mismatch, resamples=resamples,
                                     correction=correction, recipe=recipe)
            card = CardOptions(stats=tuple(s.strip() for s in token_stats.split(",") if s.strip()),
                               stderr=not no_stderr, subdomain_min_n=min_subdomain_n, counts=not no_counts,
                               abbreviate=abbreviate_totals)
        except ValidationError as err:
            fail(validation_sentence(err, OPTION_NAMES))
        try:
            comparison = run_compare(results, options)
        except AnalysisError as err:
            fail(str(err))
        if comparison.recipe_set:
            typer.echo(comparison.recipe_set, err=True)
        paths = write_report(comparison, out, html=not no_html, card=card)
        if not quiet:
            print(to_card(comparison, card) if output == "card" else to_markdown(comparison))
        print(f"report: {paths['markdown']}  card: {paths['card']}" + (f"  html: {paths['html']}" if "html" in paths else "")
              + f"  tables: {out / 'tables'}  summary: {paths['summary']}")

    @app.command("compare-serving")
    def compare_serving(
        results: Path = typer.Argument(..., help="results folder of one or more runs"),
        cohort: list[str] = typer.Option(..., "--cohort", "-c", help="NAME=BASELINE,VARIANT,...: one serving cohort "
                                         "(repeat; the i-th variants of all cohorts are one arm)"),
        benches: Optional[list[str]] = typer.Option(None, "--bench", help="only these benches (repeatable)"),
        resamples: int = typer.Option(2000, help="bootstrap resamples for the confidence intervals"),
    ) -> None:
        """The same arms served two ways side by side (e.g. vLLM NVFP4A16 and llama.cpp Q6_K), each against its own cohort's baseline, and each cohort's agreement with the first.

        Example: omk-ray compare-serving results/ -c "vLLM NVFP4A16=128e-nvfp4,v4-nvfp4" -c "llama.cpp Q6_K=128e-q6k,v4-q6k"
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from omk_ray.analysis.markdown import render
        from omk_ray.analysis.samples import AnalysisError
        from omk_ray.analysis.serving import ServingCohort, side_by_side

        cohorts = []
        for value in cohort:
            name, sep, variants = value.partition("=")
            if not sep or not name.strip() or not variants.strip():
                raise typer.BadParameter(f"{value!r}: expected NAME=BASELINE,VARIANT,...", param_hint="--cohort")
            cohorts.append(ServingCohort(name.strip(), [v.strip() for v in variants.split(",") if v.strip()]))
        if not results.is_dir():
            fail(f"{results}: no such results folder")
        try:
            side = side_by_side(results, cohorts, _split(benches), resamples)
        except AnalysisError as err:
            fail(str(err))
        print(render(side.sections()))

    @app.command()
    def experts(
        results: Path = typer.Argument(..., help="results folder with the baseline's routing (`omk-ray route`)"),
        baseline: str = typer.Option(..., "--baseline", "-b", help="the unpruned variant whose routing is measured"),
        variants: list[str] = typer.Option(..., "--variant", "-v", help="the pruned variant(s) (repeatable)"),
        drop_map: Optional[Path] = typer.Option(
            None, "--drop-map", help="the variant's drop map (JSON); default: its checkpoint's omk_ray_provenance.json"),
        benches: Optional[list[str]] = typer.Option(None, "--bench", help="only these benches (repeatable)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the whole report (with the heatmaps) here"),
        allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="as for compare"),
    ) -> None:
        """Dropped-expert exposure: per problem, the share of the baseline's routing weight that went to the experts the variant dropped; lost vs both-correct vs gained problems (Mann-Whitney U, rank-biserial r), by domain and subdomain, and the dropped experts behind the lost problems.

        Needs `omk-ray route RESULTS --variant BASELINE` first. Prints the tables as Markdown; `compare` shows the same section whenever the routing is there. Tables: OUT/tables/exposure*.parquet.

        Example: omk-ray experts results/ --baseline 128e --variant 98e-v4
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from pydantic import ValidationError

        from omk_ray.analysis.compare import CompareOptions
        from omk_ray.analysis.compare import compare as run_compare
        from omk_ray.analysis.markdown import render
        from omk_ray.analysis.report import write_report
        from omk_ray.analysis.samples import AnalysisError
        from omk_ray.analysis.sections import expert_sections

        if not results.is_dir():
            fail(f"{results}: no such results folder")
        variants = _split(variants) or []
        if drop_map and len(variants) != 1:
            fail("--drop-map needs exactly one --variant")
        try:
            options = CompareOptions(baseline=baseline, variants=variants, benches=_split(benches),
                                     allow_mismatch=allow_mismatch,
                                     drop_maps={variants[0]: str(drop_map)} if drop_map else {})
            comparison = run_compare(results, options)
        except ValidationError as err:
            fail(validation_sentence(err, OPTION_NAMES))
        except AnalysisError as err:
            fail(str(err))
        sections = expert_sections(comparison)
        if not sections:
            why = [n for n in comparison.notes if "exposure" in n]
            fail("no exposure to show: " + ("; ".join(why) if why else
                  f"{baseline} has no routing in {results} (run `omk-ray route {results} --variant {baseline}`)"))
        print(render(sections), end="")
        for note in (n for n in comparison.notes if "exposure" in n):
            print(f"note: {note}")
        if out:
            paths = write_report(comparison, out)
            print(f"report: {paths['markdown']}  html: {paths['html']}  tables: {out / 'tables'}")

    @app.command()
    def canary(
        config: Path = typer.Argument(..., help="grid config (YAML)"),
        variant: str = typer.Option(..., "--variant", "-v", help="the variant to check"),
        limit: int = typer.Option(8, min=1, help="problems per bench (a seeded sample, stratified by domain)"),
        results: Optional[Path] = typer.Option(
            None, "--results", "-r", help="keep the samples here (a full run resumes from them); default: a temp folder"),
        address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local Ray)"),
        floor: list[str] = typer.Option([], "--floor", help="BENCH=TOKENS: p10 completion-length floor of a bench"),
        max_empty_rate: float = typer.Option(0.05, help="largest share of empty answers that passes"),
    ) -> None:
        """Generation-mode gate: run a few problems per bench and apply structural rules.

        Fails (exit code 1) when a bench has more than 5% empty answers, a reasoning marker in an answer, a p10 completion length under its floor (bench option canary_min_p10_tokens, or --floor), a degenerate loop, or every score exactly 0. Exit code 0 when all pass.
        """  # noqa: E501 (typer keeps line breaks: one paragraph per line)
        from omk_ray.analysis.canary import rules_for
        from omk_ray.farm.runner import run_canary
        from omk_ray.config import ConfigError, load_grid

        try:
            grid = load_grid(config)
        except ConfigError as err:
            fail(str(err))
        if variant not in {v.name for v in grid.variants}:
            fail(f"{config}: no variant {variant!r} (variants: {', '.join(v.name for v in grid.variants)})")
        rules = rules_for(grid, variant, max_empty_rate=max_empty_rate)
        floors = {**rules.p10_floors, **_floor_options(floor)}
        rules = rules.model_copy(update={"p10_floors": floors})
        try:
            result = run_canary(grid, variant, results, docs=limit, address=address, rules=rules)
        except (ValueError, OSError) as err:
            fail(f"canary of {variant}: {err}")
        for b in result.benches:
            print(f"{b.bench}: n={b.n} empty={b.empty} leaks={b.leaks} loops={b.loops} "
                  f"p10={b.p10_tokens:.0f} (floor {b.floor:g}) mean score={b.mean_score:.2f}")
        print(result.summary())
        raise typer.Exit(ExitCode.OK if result.passed else ExitCode.FAILED)


def _split(values: Optional[list[str]]) -> Optional[list[str]]:
    """Accept `--variants a b`, `--variants a,b` and repeated options alike."""
    if not values:
        return None
    return [v for value in values for v in value.split(",") if v]
