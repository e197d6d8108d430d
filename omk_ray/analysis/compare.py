"""`compare`: every table of the report, for one baseline and any number of variants."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from omk_ray.analysis import agreement as agreement_mod
from omk_ray.analysis.anomalies import AnomalyRules, anomalies, text_features
from omk_ray.analysis import recipes
from omk_ray.analysis.cohort import CohortMismatch, Guard, check_cohorts
from omk_ray.analysis.declared import CanaryVerdict, Declared, StageStop, read_declared
from omk_ray.analysis.domains import domain_breakdown
from omk_ray.analysis.errors import error_notes, excluded, split_errors, with_error_rows
from omk_ray.analysis.experts import expert_tables
from omk_ray.analysis.headline import headline
from omk_ray.analysis.samples import (
    SCORE_COLUMN, AnalysisError, Pair, load_rows, pairs, per_problem, with_primary_score,
)  # fmt: skip
from omk_ray.analysis.scoreboard import Correction, scoreboard
from omk_ray.analysis.tokens import token_distributions, token_lengths
from omk_ray.analysis.variant_facts import variant_facts
from omk_ray.benches.code_bench import rlimits_notes
from omk_ray.results.store import ResultsStore


class CompareOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: str
    variants: list[str] | None = Field(None, description="default: every other variant in the store")
    benches: list[str] | None = Field(None, description="default: every bench the baseline ran")
    metrics: dict[str, str] = Field(default_factory=dict, description="bench -> primary metric key")
    allow_mismatch: bool = False
    recipe: str | None = Field(None, description="latest, or recipe hash prefixes: the recipe set to compare "
                                                 "(analysis/recipes.py); default: the folder's only one")
    resamples: int = Field(2000, ge=100, description="bootstrap resamples for the confidence intervals")
    correction: Correction | None = Field(
        None, description="Holm family: grid (every variant x bench), variant (each variant's benches) or none; "
                          "default: grid for more than one variant")
    anomaly: AnomalyRules = AnomalyRules()
    drop_maps: dict[str, str] = Field(default_factory=dict, description="variant -> drop-map file (default: provenance)")


# Parquet schemas of the tables, so that empty tables keep their columns and types.
_STR, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()
_PRECISION = [("se_pp", _F), ("correlation", _F), ("mde_pp", _F), ("detectable", _B)]  # inf MDE: nothing is
SCHEMAS = {
    "scoreboard": pa.schema([
        ("bench", _STR), ("variant", _STR), ("n", _I), ("baseline_docs", _I), ("variant_docs", _I),
        ("baseline_score", _F), ("variant_score", _F), ("delta_pp", _F), ("ci_low_pp", _F), ("ci_high_pp", _F),
        ("test", _STR), ("p_value", _F), ("p_holm", _F), ("significant", _B), ("lost", _I), ("gained", _I),
        ("baseline_correct", _I), ("variant_correct", _I), ("binary", _B),
        ("primary_metric", _STR), ("cohort", _STR), ("marks", _STR), ("canary", _STR), ("errors_excluded", _I),
        ("ci_method", _STR), ("correction", _STR), *_PRECISION,
        ("repeats", _I), ("baseline_repeat_var", _F), ("variant_repeat_var", _F), ("repeat_se_pp", _F),
    ]),
    "facts": pa.schema([
        ("variant", _STR), ("role", _STR), ("model", _STR), ("total_params", _F), ("expert_params", _F),
        ("active_params", _F), ("moe_layers", _I), ("experts_per_layer", _I), ("base_experts", _I),
        ("dropped_per_layer", _I), ("top_k", _I), ("quantization", _STR), ("drop_map", _STR), ("source", _STR),
        ("capacity_removed_pct", _F), ("recipe", _STR), ("basis", pa.list_(_STR)),
    ]),
    "headline": pa.schema([
        ("bench", _STR), ("variant", _STR), ("role", _STR), ("n", _I), ("score", _F), ("stderr_pp", _F),
        ("correct", _I), ("binary", _B), ("status", _STR), ("canary", _STR), ("canary_reasons", pa.list_(_STR)),
    ]),
    "agreement": pa.schema([
        ("bench", _STR), ("variant", _STR), ("n", _I), ("both_correct", _I), ("both_wrong", _I), ("lost", _I),
        ("gained", _I), ("both_correct_pct", _F), ("both_wrong_pct", _F), ("lost_pct", _F), ("gained_pct", _F),
        ("lost_ids", pa.list_(_STR)), ("gained_ids", pa.list_(_STR)),
    ]),
    "agreement_by_domain": pa.schema([
        ("bench", _STR), ("variant", _STR), ("domain", _STR), ("n", _I),
        ("both_correct", _I), ("both_wrong", _I), ("lost", _I), ("gained", _I),
    ]),
    "domains": pa.schema([
        ("bench", _STR), ("variant", _STR), ("level", _STR), ("domain", _STR), ("subdomain", _STR), ("n", _I),
        ("baseline_score", _F), ("variant_score", _F), ("delta_pp", _F), ("lost", _I), ("gained", _I),
        ("p_value", _F), ("p_holm", _F), ("significant", _B), *_PRECISION,
    ]),
    "tokens": pa.schema([
        ("bench", _STR), ("variant", _STR), ("measure", _STR), ("n", _I), ("p10", _F), ("p50", _F), ("p90", _F),
        ("max", _F), ("mean", _F), ("total", _F), ("estimated", _I), ("source", _STR),
    ]),
    "anomalies": pa.schema([
        ("bench", _STR), ("variant", _STR), ("kind", _STR), ("count", _I), ("n", _I),
        ("examples", pa.list_(_STR)), ("impact_pp", _F), ("detail", _STR),
    ]),
}  # fmt: skip


@dataclass
class Comparison:
    baseline: str
    variants: list[str]
    benches: list[str]
    primary: dict[str, str]  # bench -> primary metric ("score": the row's score column)
    guard: Guard
    tables: dict[str, pa.Table]
    correction: Correction = "variant"  # the family the scoreboard's p-values are Holm-corrected over
    notes: list[str] = field(default_factory=list)  # general footnotes
    results: str = ""  # the results folder's name, as reports show it
    root: str = ""  # the results folder itself, for sections that read more of it (never printed)
    canary: dict[str, CanaryVerdict] = field(default_factory=dict)  # variant -> newest canary verdict
    lengths: pa.Table | None = None  # per sample and measure: tokens (tokens.token_lengths), for other statistics
    recipe_set: str | None = None  # which recipe set was compared, when the folder holds several (recipes.py)
    recipes: dict[tuple[str, str], dict | None] = field(default_factory=dict)  # (variant, bench) -> recipe fields
    unpaired: list[str] = field(default_factory=list)  # benches the baseline lacks: own scores only, no Δ
    metric_names: dict[str, str] = field(default_factory=dict)  # bench -> the primary metric's key, where known
    stops: dict[str, StageStop] = field(default_factory=dict)  # arm -> its stop by `farm.stages` (scored on its prefix)
    cost: EngineCost | None = None  # engine time spent against a full evaluation of the compared variants

    def rows(self, name: str) -> list[dict]:
        return self.tables[name].to_pylist()

    @property
    def stopped(self) -> list[str]:
        """Variants stopped by their canary: shown as stopped, never scored."""
        return [v for v in self.variants if v in self.canary and self.canary[v].stopped]


@dataclass
class EngineCost:
    """Engine time of the compared variants over every run, against a full evaluation of each (its time per
    sample x the baseline's samples): what stopping arms early saved."""

    spent: float
    full: float
    unit: str  # "GPU hours", or "engine hours" on a cluster without GPUs

    @property
    def saved(self) -> float:
        return 1 - self.spent / self.full if self.full else 0.0


def engine_cost(times: dict, variants: list[str], full_samples: int) -> EngineCost | None:
    """`times`: variant -> `declared.EngineTime`; None when no run recorded engines for them."""
    chosen = [times[v] for v in variants if v in times and times[v].samples]
    if not chosen or not full_samples:
        return None
    gpu = any(t.gpu_hours for t in chosen)
    spent = [t.gpu_hours if gpu else t.engine_hours for t in chosen]
    full = [h / t.samples * max(full_samples, t.samples) for h, t in zip(spent, chosen)]
    return EngineCost(sum(spent), sum(full), "GPU hours" if gpu else "engine hours")


def _refuse_mixed_metrics(store: ResultsStore, baseline: str, variants: list[str], benches: list[str],
                          primary: dict[str, str]) -> None:
    """Refuse to pair the `score` columns of variants imported under different primary metrics (each
    import records its own, results/importers.py); a --metric reads one metric from every row instead."""
    from omk_ray.results.importers import LogImportError, variant_bench_specs

    try:
        recorded = variant_bench_specs(store.root)
    except LogImportError as err:
        raise AnalysisError(str(err)) from None
    for bench in (b for b in benches if primary[b] == SCORE_COLUMN):
        metric = {v: spec.options.get("primary_metric") for (v, b), spec in recorded.items() if b == bench}
        base = metric.get(baseline)
        for variant in variants:
            other = metric.get(variant)
            if base and other and base != other:
                raise AnalysisError(
                    f"{bench}: baseline {baseline} was scored by {base} but {variant} by {other} (each as imported); "
                    f"their scores do not compare. Give --metric {bench}=METRIC to compare one metric of every "
                    f"row's metrics map, e.g. --metric {bench}={base}")


def shot_count(scorer_version: str | None) -> int:
    """The few-shot examples per context a row was asked with, as its scorer version records them
    (`lm-eval-0.4.13:arc_challenge@1.0:25-shot`; none named: zero-shot)."""
    match = re.search(r":(\d+)-shot$", scorer_version or "")
    return int(match.group(1)) if match else 0


def _refuse_mixed_shots(rows: pa.Table, baseline: str, variants: list[str],
                        benches: list[str]) -> dict[tuple[str, str], set[int]]:
    """Refuse to pair a bench's rows asked with different numbers of few-shot examples (num_fewshot);
    the shot counts per (variant, bench)."""
    shots: dict[tuple[str, str], set[int]] = {}
    for variant, bench, version in zip(rows["variant"].to_pylist(), rows["bench"].to_pylist(),
                                       rows["scorer_version"].to_pylist()):
        shots.setdefault((variant, bench), set()).add(shot_count(version))

    def said(counts: set[int]) -> str:
        return " and ".join(f"{n}-shot" for n in sorted(counts))

    for bench in benches:
        base = shots.get((baseline, bench), set())
        for variant in variants:
            mine = shots.get((variant, bench), set())
            if base and mine and (base != mine or len(base) > 1):
                raise AnalysisError(f"{bench}: baseline {baseline} was asked {said(base)} but {variant} {said(mine)} "
                                    f"(num_fewshot); their scores do not compare: run the bench again with one "
                                    f"num_fewshot for both")
    return shots


def compare(results: str | Path, options: CompareOptions) -> Comparison:
    store = ResultsStore(results)
    if not store.shard_paths():
        raise AnalysisError(f"{results}: no samples (expected Parquet shards under {store.samples_dir})")
    if options.benches:
        stored = {p.parent.name for p in store.shard_paths()}
        unknown = [b for b in options.benches if b not in stored]
        if unknown:
            raise AnalysisError(f"--bench {', '.join(unknown)}: no such bench in {results} "
                                f"(benches there: {', '.join(sorted(stored))})")
    declared = read_declared(store)
    wanted = None if options.variants is None else [options.baseline, *options.variants]
    features = partial(text_features, markers=declared.markers, rules=options.anomaly)
    rows = load_rows(store, wanted, options.benches, features)
    present = set(pc.unique(rows["variant"]).to_pylist())
    if options.baseline not in present:
        raise AnalysisError(f"baseline {options.baseline!r} has no samples in {results} (variants there: {_stored(store)})")
    missing = [v for v in options.variants or [] if v not in present]
    if missing:
        raise AnalysisError(f"no samples for variants {missing} in {results} (variants there: {_stored(store)})")
    rows, recipe_set = recipes.choose(rows, options.recipe, options.allow_mismatch)
    variants = options.variants or sorted(present - {options.baseline})
    if not variants:
        raise AnalysisError(f"{results}: nothing to compare with baseline {options.baseline!r}: it is the only variant")

    notes = [f"runs {', '.join(declared.unreadable)}: grid config unreadable, their declared overrides are unknown"] if declared.unreadable else []
    benches, base_benches = _benches(rows, options)
    notes.extend(rlimits_notes(store, [options.baseline, *variants], benches))
    for bench in benches:
        if bench not in base_benches:
            notes.append(f"{bench}: the baseline {options.baseline} has no samples: each variant's own score, tokens "
                         "and anomalies are shown, with no Δ (no baseline)")
    paired_benches = [b for b in benches if b in base_benches]
    unknown = sorted(set(options.metrics) - set(benches))
    if unknown:
        raise AnalysisError(f"--metric names benches {unknown} that are not compared (benches: {', '.join(benches)})")
    rows = rows.filter(pc.field("bench").isin(benches))

    canary = {v: declared.canary[v] for v in [options.baseline, *variants] if v in declared.canary}
    rows, stopped_samples = _without_stopped(rows, options.baseline, variants, canary, notes)
    scored = [v for v in variants if not (v in canary and canary[v].stopped)]

    try:
        guard = check_cohorts(rows, options.baseline, scored, paired_benches, declared, options.allow_mismatch)
    except CohortMismatch as err:
        if recipes.mixed_cells(rows):
            raise CohortMismatch(f"{err}\nThis folder holds {len(recipes.recipe_sets(rows))} recipe sets "
                                 f"({recipes.describe_sets(rows)}): compare one with --recipe latest or "
                                 "--recipe HASH.") from None
        raise
    if recipe_set:
        notes.append(recipe_set)
    all_rows, (rows, errors) = rows, split_errors(rows)  # failures leave the statistics, counted and marked
    guard.notes.extend(error_notes(errors, options.baseline, scored, benches))
    primary = {b: options.metrics.get(b) or declared.primary_metrics.get(b) or SCORE_COLUMN for b in benches}
    _refuse_mixed_metrics(store, options.baseline, scored, benches, primary)
    shots = _refuse_mixed_shots(all_rows, options.baseline, scored, paired_benches)
    notes.extend(f"{bench}: asked {n}-shot (num_fewshot: each context holds {n} examples)"
                 for bench in benches if (n := max(shots.get((options.baseline, bench), {0}))))
    rows = with_primary_score(rows, primary)
    one_row_each = not guard.mixed and (pc.max(rows["repeat"]).as_py() or 0) == 0
    problems = per_problem(rows, one_row_each)
    paired = list(pairs(problems, options.baseline, scored, paired_benches))
    correction = options.correction or ("grid" if len(scored) > 1 else "variant")
    notes.extend(_coverage_notes(paired, options.baseline))
    have = {(p.variant, p.bench) for p in paired}
    notes.extend(f"{b}: no samples of {v}" for v in scored for b in paired_benches if (v, b) not in have)
    lengths = token_lengths(rows)
    bench_recipes = _recipes(rows, declared)
    caps = {key: r["max_gen_toks"] for key, r in bench_recipes.items()  # only a cap someone stated (log, grid, --recipe)
            if r and r.get("max_gen_toks") and "max_gen_toks" not in (r.get("unstated") or [])}
    tables = _tables(rows, paired, guard, primary, declared, options, canary, lengths, correction, all_rows, errors,
                     caps)
    tables["headline"] = pa.Table.from_pylist(
        headline(problems, options.baseline, variants, benches, canary, stopped_samples), schema=SCHEMAS["headline"])
    tables["facts"] = pa.Table.from_pylist(variant_facts(store, declared, options.baseline, variants),
                                           schema=SCHEMAS["facts"])
    exposure, exposure_notes = expert_tables(store, rows, paired, options.baseline, variants, options.drop_maps)
    tables.update(exposure)
    notes.extend(exposure_notes)
    return Comparison(
        baseline=options.baseline,
        variants=variants,
        benches=benches,
        primary=primary,
        guard=guard,
        tables=tables,
        correction=correction,
        notes=notes,
        results=Path(results).name,  # its name only: a report shows no machine's folders
        root=str(results),
        canary=canary,
        lengths=lengths,
        recipe_set=recipe_set,
        recipes=bench_recipes,
        unpaired=[b for b in benches if b not in base_benches],
        metric_names=_metric_names(store, options.baseline, benches, primary),
        stops={v: declared.stops[v] for v in variants if v in declared.stops},
        cost=engine_cost(declared.engine_time, [options.baseline, *scored],
                         all_rows.filter(pc.field("variant") == options.baseline).num_rows),
    )


def _metric_names(store: ResultsStore, baseline: str, benches: list[str], primary: dict[str, str]) -> dict[str, str]:
    """bench -> the key of the metric its scores are: --metric or the grid's, else the one its import recorded
    (the baseline's, else a variant's)."""
    from omk_ray.results.importers import LogImportError, variant_bench_specs

    try:
        recorded = variant_bench_specs(store.root)
    except LogImportError:
        recorded = {}
    out = {}
    for bench in benches:
        if primary[bench] != SCORE_COLUMN:
            out[bench] = primary[bench]
            continue
        specs = sorted(((v != baseline, v), spec) for (v, b), spec in recorded.items() if b == bench)
        metric = next((s.options.get("primary_metric") for _, s in specs if s.options.get("primary_metric")), None)
        if metric:
            out[bench] = metric
    return out


def _recipes(rows: pa.Table, declared: Declared) -> dict[tuple[str, str], dict | None]:
    """(variant, bench) -> the fields of the recipe its rows ran (None: not recorded or not known); a variant
    whose rows mix recipes on a bench is left out (the cohort guard has said so)."""
    keys = rows.select(["variant", "bench", "recipe_hash"]).group_by(["variant", "bench", "recipe_hash"],
                                                                      use_threads=False).aggregate([])
    found: dict[tuple[str, str], list[str | None]] = {}
    for r in keys.to_pylist():
        found.setdefault((r["variant"], r["bench"]), []).append(r["recipe_hash"])
    return {key: declared.recipe(*key, hashes[0]) for key, hashes in found.items() if len(hashes) == 1}


def _without_stopped(rows: pa.Table, baseline: str, variants: list[str], canary: dict[str, CanaryVerdict],
                     notes: list[str]) -> tuple[pa.Table, dict[tuple[str, str], int]]:
    """The rows without those of the variants their canary stopped (canary samples are no score), and
    how many each of those left per bench. A stopped baseline leaves nothing to compare with."""
    if baseline in canary and canary[baseline].stopped:
        raise AnalysisError(f"the baseline {baseline!r} was stopped by its canary (run {canary[baseline].run_id}: "
                            f"{'; '.join(canary[baseline].reasons)}): it has no full run to compare with")
    stopped = [v for v in variants if v in canary and canary[v].stopped]
    if not stopped:
        return rows, {}
    mine = rows.filter(pc.field("variant").isin(stopped)).select(["variant", "bench"])
    counts = mine.group_by(["variant", "bench"], use_threads=False).aggregate([([], "count_all")]).to_pylist()
    left = {(r["variant"], r["bench"]): r["count_all"] for r in counts}
    for v in stopped:
        notes.append(f"{v} was stopped by its canary (run {canary[v].run_id}): {'; '.join(canary[v].reasons)}; "
                     f"its {sum(n for (sv, _), n in left.items() if sv == v)} canary samples are not scored")
    return rows.filter(~pc.field("variant").isin(stopped)), left


def _tables(rows: pa.Table, paired: list[Pair], guard: Guard, primary: dict[str, str], declared: Declared,
            options: CompareOptions, canary: dict[str, CanaryVerdict], lengths: pa.Table,
            correction: Correction, all_rows: pa.Table, errors,
            caps: dict[tuple[str, str], int] | None = None) -> dict[str, pa.Table]:
    board = scoreboard(paired, options.resamples, correction)
    for row in board:
        row.update(primary_metric=primary[row["bench"]], cohort=guard.cohorts.get(row["bench"], ""),
                   marks=guard.mark(row["bench"], row["variant"]),
                   canary=canary[row["variant"]].label if row["variant"] in canary else "",
                   errors_excluded=excluded(errors, options.baseline, row["variant"], row["bench"]))
    built = {
        "scoreboard": board,
        "agreement": agreement_mod.agreement(paired),
        "agreement_by_domain": agreement_mod.agreement_by_domain(paired),
        "domains": domain_breakdown(paired, options.resamples),
        "tokens": token_distributions(lengths),
        "anomalies": anomalies(with_error_rows(rows, all_rows), options.anomaly, caps),  # errors listed, not hidden
    }
    tables = {name: pa.Table.from_pylist(data, schema=SCHEMAS[name]) for name, data in built.items()}
    tables["problems"] = agreement_mod.problems_table(paired)
    return tables


def _benches(rows: pa.Table, options: CompareOptions) -> tuple[list[str], set[str]]:
    base_rows = rows.filter(pc.equal(rows["variant"], options.baseline))
    base_benches = set(pc.unique(base_rows["bench"]).to_pylist())
    found = set(pc.unique(rows["bench"]).to_pylist())
    if options.benches is not None:
        absent = [b for b in options.benches if b not in found]
        if absent:
            raise AnalysisError(f"no samples for benches {absent} (benches there: {_names(found)})")
        return list(options.benches), base_benches
    return sorted(found), base_benches


def _coverage_notes(paired: list[Pair], baseline: str) -> list[str]:
    notes = []
    for p in paired:
        if p.n < p.baseline_docs or p.n < p.variant_docs:
            notes.append(
                f"{p.bench}: {p.variant} and {baseline} share {p.n} problems ({baseline} has {p.baseline_docs}, "
                f"{p.variant} {p.variant_docs}); paired statistics use the shared ones"
            )
    return notes


def _stored(store: ResultsStore) -> str:
    return _names(set(pc.unique(store.read(columns=["variant"])["variant"]).to_pylist()))


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"
