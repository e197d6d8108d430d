"""The canary gate: a variant's canary sample runs first and is judged, from the rows the gate holds in
memory, as soon as its last row is made; a failed verdict stops the variant (`farm.canary.on_fail:
skip`) or is only recorded (`continue`).

One gate per run, built by `canary_gate` from the plan: for each gated variant it knows which canary
keys (bench, doc_id, repeat) the run still has to generate, and holds the canary rows stored by
earlier runs (read once, at the start) and those this run makes (`add`). When none is missing it
applies the variant's rules in order and returns a `Verdict` holding every rule's own verdict and
numbers; the scheduler records it (events, manifest) and opens or drains the variant's queue.

**Rules** are callables `rule(arm, baseline) -> RuleVerdict` over pyarrow tables of canary rows:
`arm` the variant's, `baseline` the baseline variant's on the same canary problems (None where the
gate has no baseline). Two rules ship, in this order: `StructuralRule`, the structural rules of
`omk_ray.analysis.canary` (`evaluate_canary`, thresholds from `farm.canary` and the benches, see
`rules_for`), and `BaselineRule`, the exact paired test of `stats.canary_test` against
`canary.max_loss_pp` (docs/comparison.md, "Stopping arms early"). A rule that compares an arm with the
baseline has `needs_baseline = True`: the gate then judges an arm only once the baseline's canary
rows are all in as well, and `first()` names the baseline so that the scheduler gives its canary the
first free slots.

`omk-ray canary` (`farm/runner.run_canary`) is the same gate stopped after the verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from omk_ray.analysis.canary import BenchCanary, CanaryRules, evaluate_canary
from omk_ray.analysis.stats import canary_test
from omk_ray.farm.planner import Plan
from omk_ray.results.schema import rows_to_table

Key = tuple[str, str, int]  # (bench, doc_id, repeat) of a canary sample


@dataclass
class RuleVerdict:
    """One rule's verdict on a variant's canary, with the numbers it judged by."""

    rule: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


class Rule(Protocol):
    name: str
    needs_baseline: bool  # judged only once the baseline's canary rows are all in

    def __call__(self, arm: pa.Table, baseline: pa.Table | None) -> RuleVerdict: ...


@dataclass(frozen=True)
class StructuralRule:
    """Empty answers, marker leaks, p10 length floors, loops, all-zero scores (`analysis.canary.evaluate_canary`)."""

    rules: CanaryRules = CanaryRules()
    name: str = "structural"
    needs_baseline: bool = False

    def __call__(self, arm: pa.Table, baseline: pa.Table | None = None) -> RuleVerdict:
        result = evaluate_canary(arm, self.rules)
        return RuleVerdict(self.name, result.passed, result.reasons,
                           {"benches": [asdict(b) for b in result.benches]})


@dataclass(frozen=True)
class BaselineRule:
    """The arm against the baseline on the canary's paired problems, bench by bench (pass/fail scores;
    an error row scores 0; graded benches are left to the stages' bounds): worse than the baseline by
    more than `max_loss_pp` by the exact one-sided test `stats.canary_test`, at level `alpha` split
    over the benches judged, fails."""

    max_loss_pp: float = 20.0
    alpha: float = 0.05
    name: str = "baseline"
    needs_baseline: bool = True

    def __call__(self, arm: pa.Table, baseline: pa.Table | None) -> RuleVerdict:
        if baseline is None:
            return RuleVerdict(self.name, True, [], {"benches": {}, "skipped": "no baseline"})
        ours, theirs = _scores(arm), _scores(baseline)
        by_bench: dict[str, list[tuple[float, float]]] = {}
        for key in sorted(ours.keys() & theirs.keys()):
            by_bench.setdefault(key[0], []).append((ours[key], theirs[key]))
        binary = {b: pairs for b, pairs in by_bench.items() if all(x in (0.0, 1.0) for p in pairs for x in p)}
        alpha = self.alpha / max(len(binary), 1)
        numbers, reasons = {}, []
        for bench, pairs in binary.items():
            lost = sum(1 for a, b in pairs if b > a)
            gained = sum(1 for a, b in pairs if a > b)
            test = canary_test(lost, gained, len(pairs), self.max_loss_pp / 100, alpha)
            numbers[bench] = asdict(test)
            if test.worse:
                reasons.append(f"{bench}: {100 * test.delta:+.0f} pp against the baseline on {test.n} problems "
                               f"(lost {lost}, gained {gained}); exact {100 * (1 - alpha):.1f}% upper bound "
                               f"{100 * test.upper:+.0f} pp < -{self.max_loss_pp:g} pp")
        return RuleVerdict(self.name, not reasons, reasons,
                           {"benches": {}, "tests": numbers, "max_loss_pp": self.max_loss_pp, "alpha": self.alpha,
                            "graded": sorted(set(by_bench) - set(binary))})


def _scores(table: pa.Table) -> dict[Key, float]:
    """(bench, doc_id, repeat) -> score, an error row (no score) as 0."""
    rows = table.select(["bench", "doc_id", "repeat", "score"]).to_pylist()
    return {(r["bench"], r["doc_id"], r["repeat"]): float(r["score"] or 0.0) for r in rows}


@dataclass
class Verdict:
    """A variant's canary verdict: every rule's, and whether the run stops the variant."""

    variant: str
    rules: list[RuleVerdict]
    stopped: bool = False  # failed, and the run skips the variant's full run (`on_fail: skip`)
    passed: bool = field(init=False)  # every rule passed
    reasons: list[str] = field(init=False)  # every rule's, in order

    def __post_init__(self) -> None:
        self.passed = all(r.passed for r in self.rules)
        self.reasons = [reason for r in self.rules for reason in r.reasons]

    @property
    def benches(self) -> list[BenchCanary]:
        """The structural rule's per-bench numbers."""
        return [BenchCanary(**b) for r in self.rules for b in _bench_numbers(r)]

    def record(self) -> dict:
        """As the run manifest keeps it (`results.run_records.CanaryRecord`)."""
        return {"passed": self.passed, "reasons": self.reasons, "stopped": self.stopped,
                "benches": [b for r in self.rules for b in _bench_numbers(r)],
                "rules": [asdict(r) for r in self.rules]}

    def summary(self) -> str:
        head = "canary PASSED" if self.passed else "canary FAILED"
        benches = self.benches
        lines = [f"{head} ({sum(b.n for b in benches)} samples, {len(benches)} benches)"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def _bench_numbers(rule: RuleVerdict) -> list[dict]:
    benches = rule.numbers.get("benches", [])
    return benches if isinstance(benches, list) else []


class CanaryGate:
    """`missing`: variant -> canary keys this run still generates; `rules`: variant -> its rules (a variant
    without rules is not gated); `stored`: canary rows of earlier runs; `baseline`: the variant that
    baseline-relative rules compare with."""

    def __init__(self, missing: dict[str, set[Key]], rules: dict[str, list[Rule]], stop_on_fail: bool = True,
                 stored: list[dict] | None = None, baseline: str | None = None):
        self.rules = rules
        self.missing = {v: set(missing.get(v, ())) for v in rules}
        self.stop_on_fail = stop_on_fail
        self.baseline = baseline
        self.record_only: set[str] = set()  # judged and recorded, never stopped
        self.rows: dict[str, dict[Key, dict]] = {v: {} for v in rules}
        self.verdicts: dict[str, Verdict] = {}
        for row in stored or []:
            if row["variant"] in self.rows:
                self.rows[row["variant"]][_key(row)] = row

    @property
    def variants(self) -> set[str]:
        return set(self.rules)

    def first(self) -> set[str]:
        """Variants whose canary others wait on (the baseline of a baseline-relative rule, until its rows are in)."""
        waiting = any(r.needs_baseline for v, rs in self.rules.items() if v != self.baseline for r in rs)
        return {self.baseline} if waiting and self.baseline in self.missing and self.missing[self.baseline] else set()

    def add(self, row: dict) -> list[Verdict]:
        """A canary row made in the run (it replaces a stored one of the same key); the verdicts now due."""
        variant = row["variant"]
        if variant not in self.rows:
            return []
        key = _key(row)
        self.rows[variant][key] = row
        self.missing[variant].discard(key)
        return self.due()

    def due(self) -> list[Verdict]:
        """Judge every variant whose canary rows (and, for a baseline-relative rule, the baseline's) are all in."""
        out = []
        for variant, rules in self.rules.items():
            if variant in self.verdicts or self.missing[variant]:
                continue
            relative = any(r.needs_baseline for r in rules) and self.baseline in self.rows and variant != self.baseline
            if relative and self.missing[self.baseline]:
                continue  # waits for the baseline's canary
            arm = rows_to_table(list(self.rows[variant].values()))
            baseline = rows_to_table(list(self.rows[self.baseline].values())) if relative else None
            verdict = Verdict(variant, [rule(arm, baseline) for rule in rules])
            verdict.stopped = not verdict.passed and self.stop_on_fail and variant not in self.record_only
            self.verdicts[variant] = verdict
            out.append(verdict)
        return out


def _key(row: dict) -> Key:
    return row["bench"], row["doc_id"], row["repeat"]


def missing_canary_keys(plan: Plan, variant: str) -> set[Key]:
    """The keys of a variant's canary sample that the plan still generates."""
    keys = set()
    for w in plan.work:
        if w.variant == variant and w.canary_ids:
            ids = set(w.canary_ids)
            keys.update((w.bench, d.id, r) for d, r in w.samples if d.id in ids)
    return keys


def stored_canary_rows(store, plan: Plan, variants: list[str]) -> list[dict]:
    """The newest stored row of every canary sample of `variants` (same fingerprint and recipe): read once."""
    where = None
    for w in plan.work:
        if w.variant in variants and w.canary_ids:
            part = (pc.field("bench") == w.bench) & pc.field("doc_id").isin(w.canary_ids)
            part &= (pc.field("recipe_hash") == w.recipe.hash) & \
                (pc.field("variant_fingerprint") == plan.fingerprints[w.variant])
            where = part if where is None else where | part
    return store.read(filter=where).to_pylist() if where is not None and store is not None else []


def canary_gate(plan: Plan, store, rules: dict[str, CanaryRules], stop_on_fail: bool,
                variants: list[str] | None = None, baseline: str | None = None,
                max_loss_pp: float | None = None, record_only: set[str] = frozenset()) -> CanaryGate:
    """The run's gate over `variants` (default: those of `rules` with samples to generate). With a
    `baseline` and `max_loss_pp`, every other variant also gets the `BaselineRule`; the baseline's
    canary rows are then read (stored) or generated (first) whether or not it is gated itself.
    `record_only`: variants whose verdicts are recorded but stop nothing (`run --resume-stopped`)."""
    if variants is None:
        variants = [v for v in rules if any(w.variant == v and w.samples for w in plan.work)]
    chosen: dict[str, list[Rule]] = {v: [StructuralRule(rules[v])] for v in variants if v in rules}
    if baseline is not None and max_loss_pp is not None and baseline in plan.fingerprints:
        for v in chosen:
            if v != baseline:
                chosen[v].append(BaselineRule(max_loss_pp))
        if any(len(rs) > 1 for rs in chosen.values()):
            chosen.setdefault(baseline, [StructuralRule(rules.get(baseline, CanaryRules()))])
    else:
        baseline = None
    missing = {v: missing_canary_keys(plan, v) for v in chosen}
    gate = CanaryGate(missing, chosen, stop_on_fail, stored_canary_rows(store, plan, list(chosen)), baseline)
    gate.record_only = set(record_only)
    return gate
