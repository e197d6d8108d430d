"""The scheduler's loop with owners that are plain Python objects: no Ray, no clock.

The engine pool here is a fake (named so): engines load when asked, answer every request in flight
on their next poll (the doc's target, or nothing for an `empty` variant) and fail as a test scripts.
The plan, the queues, the canary gate, the rows and their scores are the real ones (the scoring
pool scores in this process with the bench's own scorer); the run's events go to a real run log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from omk_ray.benches import make_bench
from omk_ray.config import parse_grid
from omk_ray.engines import Completion
from omk_ray.farm.actor import Generated
from omk_ray.farm.events import FailedToStart, Finished, Loaded, Lost, Scored
from omk_ray.farm.gate import CanaryGate, RuleVerdict, StructuralRule, canary_gate
from omk_ray.farm.planner import make_plan
from omk_ray.farm.policies import LoadTime
from omk_ray.farm.rows import score_all
from omk_ray.farm.progress import FarmProgress
from omk_ray.farm.scheduler import Scheduler
from omk_ray.farm.stage_tracker import stage_tracker
from omk_ray.results.run_records import EventKind, RunManifest
from omk_ray.results.store import ResultsStore


def grid_of(tmp_path, variants=("a",), docs=12, canary=False, max_retries=1, max_engines=None, canary_docs=4,
            stages=None):
    bench = tmp_path / "b.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"copy {100 + i}", "target": str(100 + i),
                                         "domain": "even" if i % 2 == 0 else "odd"}) + "\n" for i in range(docs)))
    return parse_grid({
        "name": "loop", "recipe": {"max_gen_toks": 8},
        "variants": [{"name": v, "model": "none", "engine": "echo"} for v in variants],
        "benches": [{"name": "b", "kind": "jsonl", "source": str(bench)}],
        "farm": {"max_retries": max_retries, "max_engines": max_engines, "max_in_flight": 4,
                 "canary": {"enabled": canary, "docs": canary_docs}, "stages": stages or {}},
    })


@dataclass(eq=False)
class FakeSlot:
    name: str
    variant: str
    kind: str
    loading: bool = True
    target: int = 4
    inflight: dict = field(default_factory=dict)
    samples: int = 0

    @property
    def state(self) -> str:
        return "loading" if self.loading else f"{len(self.inflight)} in flight"


class FakeEngines:
    """A fake engine pool: `fail_start` and `lose` name engines (by their start number) that fail to start or
    die on their first poll; `empty` variants answer nothing."""

    def __init__(self, capacity=2, fail_start=(), lose=(), empty=(), load_rounds=None, wrong=None):
        self.capacity, self.fail_start, self.lose, self.empty = capacity, set(fail_start), set(lose), set(empty)
        self.wrong = dict(wrong or {})  # variant -> doc ids it answers wrong
        self.load_rounds = dict(load_rounds or {})  # variant -> rounds its engines take to load (else one)
        self.slots: list[FakeSlot] = []
        self.started: list[str] = []
        self.retired: list[str] = []
        self.loads: list[LoadTime] = []
        self.submitted: list[int] = []  # sample ids, each time handed to an engine

    def cost(self, variant): return 1.0
    def accelerates(self, variant): return True
    def free(self): return self.capacity - len(self.slots)
    def work(self): return []
    def stats(self): return []

    def start(self, variant):
        self.started.append(variant.name)
        slot = FakeSlot(f"e{len(self.started)}", variant.name, variant.engine)
        self.slots.append(slot)
        return slot

    def submit(self, slot, samples):
        self.submitted += [s.id for s in samples]
        slot.inflight.update({s.id: s for s in samples})

    def retire(self, slot):
        self.slots.remove(slot)
        self.retired.append(slot.name)

    def keep_polling(self, slot):
        pass  # every engine with requests in flight is polled (`waiting`)

    def close(self):
        for slot in list(self.slots):
            self.retire(slot)

    def waiting(self):
        return [("load" if s.loading else "poll", s.name) for s in self.slots if s.loading or s.inflight]

    def collect(self, ready):
        events = []
        for what, name in ready:
            slot = next((s for s in self.slots if s.name == name), None)
            if slot is None:  # not one of the pool's (a scoring call)
                continue
            if what == "load" and int(name[1:]) in self.fail_start:
                self.retire(slot)
                events.append(FailedToStart(name, slot.variant, "CUDA error: out of memory"))
            elif what == "load" and self.load_rounds.get(slot.variant, 0) > 1:
                self.load_rounds[slot.variant] -= 1  # still loading
            elif what == "load":
                slot.loading = False
                self.loads.append(LoadTime(slot.kind, slot.variant, 1.0))
                events.append(Loaded(name, slot.variant, {"engine": "echo-fake"}, slot.target))
            elif what != "poll":
                continue
            elif int(name[1:]) in self.lose:
                lost = list(slot.inflight.values())
                self.retire(slot)
                events.append(Lost(name, slot.variant, EventKind.ENGINE_DIED, "RayActorError: died", lost))
            else:
                done = [(s, Generated(s.id, self._answer(s), datetime.now(timezone.utc)))
                        for s in slot.inflight.values()]
                slot.inflight.clear()
                events.append(Finished(name, slot.variant, {"engine": "echo-fake"}, done))
        return events

    def overdue(self):
        return []

    def _answer(self, sample) -> Completion:
        text = "" if sample.variant in self.empty else sample.doc.target
        if sample.doc.id in self.wrong.get(sample.variant, ()):
            text = "999"
        return Completion(text=text, prompt_tokens=3, completion_tokens=len(text.split()), finish_reason="stop")


class InProcessScoring:
    """The scoring pool's contract, scored here with the bench's own scorer."""

    def __init__(self, grid):
        self.benches = {b.name: make_bench(b) for b in grid.benches}
        self.items = []

    def add(self, sample, generated, made_by):
        self.items.append((sample, generated, made_by))

    def dispatch(self): pass
    def waiting(self): return [("score", 0)] if self.items else []
    def close(self): pass

    def collect(self, ready):
        if ("score", 0) not in ready:
            return []
        items, self.items = self.items, []
        events = []
        for s, g, made_by in items:
            [(score, error)] = score_all(self.benches[s.bench], [(s.doc, g.completion)])
            events.append(Scored(s, g, made_by, score, error, "v1"))
        return events


class Rows:
    def __init__(self):
        self.rows = []

    def add(self, rows): self.rows += rows
    def maybe_flush(self): pass
    def flush(self): pass


def run_loop(tmp_path, grid, engines, gate=None, stages=None, progress=None):
    plan = make_plan(grid, gpu=False)
    runlog = ResultsStore(tmp_path / "results").new_run("r1")
    runlog.folder.mkdir(parents=True)
    runlog.write_manifest(RunManifest(run_id="r1"))
    rows = Rows()
    scheduler = Scheduler(plan, engines=engines, scoring=InProcessScoring(grid), rows=rows, runlog=runlog,
                          wait=lambda refs: refs, gate=gate, stages=stages, progress=progress)
    scheduler.run()
    return scheduler, rows.rows, runlog.records().events


def keys(rows) -> list[tuple]:
    return [(r["variant"], r["doc_id"], r["repeat"]) for r in rows]


def test_every_sample_is_written_exactly_once_and_idle_engines_retire(tmp_path):
    scheduler, rows, events = run_loop(tmp_path, grid_of(tmp_path, ("a", "b")), FakeEngines(capacity=2))
    assert sorted(keys(rows)) == sorted((v, f"q{i}", 0) for v in "ab" for i in range(12))
    assert all(r["score"] == 1.0 and r["error"] is None for r in rows)
    assert scheduler.generated == 24 and scheduler.failed_samples == 0
    assert [e.event for e in events].count(EventKind.ENGINE_STARTED) == 2
    assert scheduler.engines.slots == [] and sorted(scheduler.engines.retired) == ["e1", "e2"]


def test_an_engine_lost_mid_flight_requeues_its_samples_exactly_once(tmp_path):
    engines = FakeEngines(capacity=1, lose={1})
    scheduler, rows, events = run_loop(tmp_path, grid_of(tmp_path), engines)
    died = [e for e in events if e.event == EventKind.ENGINE_DIED]
    assert len(died) == 1 and died[0].model_extra["in_flight"] == 4  # it held its target when it died
    assert engines.started == ["a", "a"]  # a replacement
    assert sorted(keys(rows)) == [("a", f"q{i}", 0) for i in sorted(range(12), key=lambda i: f"q{i}")]
    assert len(rows) == 12 and scheduler.failed_samples == 0
    lost = {s for s in engines.submitted if engines.submitted.count(s) == 2}
    assert len(lost) == 4 and len(engines.submitted) == 12 + 4  # the lost four handed out once more, no other
    assert scheduler.queue.attempts == dict.fromkeys(lost, 1)


def test_a_sample_lost_more_often_than_its_retries_is_an_error_row(tmp_path):
    engines = FakeEngines(capacity=1, lose={1, 2})
    scheduler, rows, events = run_loop(tmp_path, grid_of(tmp_path, docs=4, max_retries=1), engines)
    assert len(rows) == 4 and all(r["error"].startswith("failed 2 times") for r in rows)
    assert all(r["score"] is None for r in rows) and scheduler.failed_samples == 4
    [given_up] = [e for e in events if e.event == EventKind.SAMPLES_FAILED]
    assert sorted(given_up.doc_ids) == [f"q{i}#0" for i in range(4)]


def test_a_slot_freed_while_a_variants_only_engine_loads_is_not_given_a_second_copy(tmp_path):
    """`wide` loads at once, answers everything and frees its slot while `serial` still loads: `serial` has
    no speed measured yet, so a sibling does not pay (`policies.sibling_pays`); its one engine does the work."""
    engines = FakeEngines(capacity=2, load_rounds={"serial": 5})
    scheduler, rows, _ = run_loop(tmp_path, grid_of(tmp_path, ("serial", "wide"), docs=4), engines)
    assert sorted(engines.started) == ["serial", "wide"] and len(rows) == 8
    assert engines.retired.index("e2") < engines.retired.index("e1")  # `wide` was done first


def test_a_failed_start_frees_the_slot_for_the_next_engine(tmp_path):
    engines = FakeEngines(capacity=1, fail_start={1})
    scheduler, rows, events = run_loop(tmp_path, grid_of(tmp_path), engines)
    assert engines.started == ["a", "a"] and scheduler.start_failures == {"a": 1}
    assert len(rows) == 12 and all(r["error"] is None for r in rows)
    assert [e.event for e in events][:4] == [EventKind.ENGINE_STARTING, EventKind.ENGINE_START_FAILED,
                                            EventKind.ENGINE_STARTING, EventKind.ENGINE_STARTED]


def test_a_variant_whose_engines_never_start_fails_and_the_others_go_on(tmp_path):
    engines = FakeEngines(capacity=1, fail_start={1, 2})
    scheduler, rows, events = run_loop(tmp_path, grid_of(tmp_path, ("a", "b"), docs=3, max_retries=1), engines)
    assert engines.started == ["a", "a", "b"]  # `a` first (ties go to the first variant), then `b`
    assert {r["variant"]: r["error"] is None for r in rows} == {"a": False, "b": True} and len(rows) == 6
    assert [e.variant for e in events if e.event == EventKind.VARIANT_FAILED] == ["a"]


def test_a_failed_canary_stops_its_variants_queue_and_frees_its_engine(tmp_path):
    grid = grid_of(tmp_path, ("good", "empty"), canary=True)
    plan = make_plan(grid, gpu=False)
    gate = canary_gate(plan, None, {v: StructuralRule().rules for v in ("good", "empty")}, stop_on_fail=True)
    engines = FakeEngines(capacity=2, empty={"empty"})
    scheduler, rows, events = run_loop(tmp_path, grid, engines, gate)
    canary_ids = set(plan.work[0].canary_ids)
    assert len(canary_ids) == 4
    assert {k for k in keys(rows) if k[0] == "empty"} == {("empty", d, 0) for d in canary_ids}  # the canary only
    assert len([k for k in keys(rows) if k[0] == "good"]) == 12
    assert scheduler.skipped_samples == 8 and not scheduler.canary["empty"].passed
    assert scheduler.canary["empty"].stopped and scheduler.canary["good"].passed
    assert any("4 of 4 answers empty" in r for r in scheduler.canary["empty"].reasons)
    skipped = [e for e in events if e.event == EventKind.VARIANT_SKIPPED]
    assert [(e.variant, e.model_extra["samples"]) for e in skipped] == [("empty", 8)]
    assert sorted(engines.retired) == ["e1", "e2"] and engines.started.count("empty") == 1


def test_a_canary_that_only_records_lets_the_variant_run(tmp_path):
    grid = grid_of(tmp_path, ("empty",), canary=True)
    plan = make_plan(grid, gpu=False)
    gate = canary_gate(plan, None, {"empty": StructuralRule().rules}, stop_on_fail=False)
    scheduler, rows, _ = run_loop(tmp_path, grid, FakeEngines(empty={"empty"}), gate)
    assert len(rows) == 12 and not scheduler.canary["empty"].passed and not scheduler.canary["empty"].stopped
    canary_rows = {r["doc_id"] for r in rows[:4]}
    assert canary_rows == set(plan.work[0].canary_ids)  # the canary sample went out first


def test_an_arm_60_pp_worse_than_the_baseline_on_the_canary_is_stopped_and_an_equal_arm_passes(tmp_path):
    """The baseline's canary goes first; `bad` answers 60% of the canary wrong (the baseline none): the
    exact paired test's bound falls below -20 pp and the arm stops; `same` answers like the baseline."""
    grid = grid_of(tmp_path, ("base", "bad", "same"), docs=60, canary=True, canary_docs=24)
    plan = make_plan(grid, gpu=False)
    canary_ids = plan.work[0].canary_ids
    wrong = set(canary_ids[i] for i in range(24) if i % 5 < 3)  # 15 of 24: -62.5 pp
    gate = canary_gate(plan, None, {v: StructuralRule().rules for v in ("base", "bad", "same")}, stop_on_fail=True,
                       baseline=grid.baseline_variant, max_loss_pp=grid.farm.canary.max_loss_pp)
    assert grid.baseline_variant == "base" and gate.first() == {"base"}
    engines = FakeEngines(capacity=1, wrong={"bad": wrong})
    scheduler, rows, events = run_loop(tmp_path, grid, engines, gate)
    assert engines.started[0] == "base"  # the baseline's canary is scheduled first
    bad, same = scheduler.canary["bad"], scheduler.canary["same"]
    assert bad.stopped and not bad.passed and same.passed and not same.stopped and scheduler.canary["base"].passed
    assert [(r.rule, r.passed) for r in bad.rules] == [("structural", True), ("baseline", False)]
    test = bad.rules[1].numbers["tests"]["b"]
    assert (test["n"], test["lost"], test["gained"], test["delta"]) == (24, 15, 0, -0.625)
    assert test["upper"] < -0.20 and test["alpha"] == 0.05 and test["worse"]
    assert same.rules[1].numbers["tests"]["b"]["lost"] == 0 and not same.rules[1].numbers["tests"]["b"]["worse"]
    assert bad.reasons == [f"b: -62 pp against the baseline on 24 problems (lost 15, gained 0); exact 95.0% upper "
                           f"bound {100 * test['upper']:+.0f} pp < -20 pp"]
    assert sorted(k[1] for k in keys(rows) if k[0] == "bad") == sorted(canary_ids)  # the canary only
    assert len([k for k in keys(rows) if k[0] == "same"]) == 60 and scheduler.skipped_samples == 36
    [skipped] = [e for e in events if e.event == EventKind.VARIANT_SKIPPED]
    assert skipped.variant == "bad" and "against the baseline" in skipped.reason
    manifest = RunManifest.model_validate({"run_id": "r1", "canary": {v: x.record() for v, x in scheduler.canary.items()}})
    assert manifest.canary["bad"].rules[1].numbers["tests"]["b"]["lost"] == 15 and manifest.canary["bad"].stopped


# -- the gate on its own -----------------------------------------------------------------------------


def row(variant, doc, response="x", score=1.0):
    return {"variant": variant, "bench": "b", "doc_id": doc, "repeat": 0, "response": response,
            "completion_tokens": 3, "score": score, "correct": score == 1.0}


@dataclass(frozen=True)
class LossAgainstBaseline:
    """A baseline-relative rule as issue 23 will plug one in (this one: the arm's mean score may be at most
    `max_loss` below the baseline's on the same problems)."""

    max_loss: float
    name: str = "loss"
    needs_baseline: bool = True

    def __call__(self, arm: pa.Table, baseline: pa.Table | None) -> RuleVerdict:
        delta = pa.compute.mean(arm["score"]).as_py() - pa.compute.mean(baseline["score"]).as_py()
        return RuleVerdict(self.name, delta >= -self.max_loss, [] if delta >= -self.max_loss else
                           [f"{delta:+.2f} against the baseline"], {"delta": delta, "n": arm.num_rows})


def test_a_baseline_relative_rule_waits_for_the_baselines_canary_and_records_its_numbers():
    missing = {"base": {("b", "q0", 0), ("b", "q1", 0)}, "arm": {("b", "q0", 0), ("b", "q1", 0)}}
    gate = CanaryGate(missing, {"base": [StructuralRule()], "arm": [StructuralRule(), LossAgainstBaseline(0.2)]},
                      baseline="base")
    assert gate.first() == {"base"}
    assert gate.add(row("arm", "q0", score=0.0)) == [] and gate.add(row("arm", "q1")) == []  # waits for base
    assert gate.add(row("base", "q0")) == []
    [base, arm] = gate.add(row("base", "q1"))
    assert (base.variant, base.passed, arm.variant, arm.passed, arm.stopped) == ("base", True, "arm", False, True)
    assert arm.reasons == ["-0.50 against the baseline"] and gate.first() == set()
    record = arm.record()
    assert [(r["rule"], r["passed"]) for r in record["rules"]] == [("structural", True), ("loss", False)]
    assert record["rules"][1]["numbers"] == {"delta": -0.5, "n": 2} and record["benches"][0]["n"] == 2


def test_stored_canary_rows_are_judged_at_once_and_a_new_row_replaces_a_stored_one():
    stored = [row("a", "q0", response=""), row("a", "q1")]
    assert not CanaryGate({"a": set()}, {"a": [StructuralRule()]}, stored=stored).due()[0].passed
    gate = CanaryGate({"a": {("b", "q0", 0)}}, {"a": [StructuralRule()]}, stored=stored)
    assert gate.due() == []  # q0 is generated again in this run (its stored row is an error)
    [verdict] = gate.add(row("a", "q0"))
    assert verdict.passed and verdict.benches[0].n == 2 and verdict.benches[0].empty == 0


# -- stages in the loop (farm.stages) ---------------------------------------------------------------


def staged_run(tmp_path, wrong_share, docs=200, capacity=2, mode="futility"):
    """base, same (answers like base) and the arms of `wrong_share` (arm -> share of the order answered wrong,
    spread evenly over it), stages on, the canary gate off (the stages' own canary look judges)."""
    variants = ("base", "same", *wrong_share)
    grid = grid_of(tmp_path, variants, docs=docs, canary_docs=24, stages={"enabled": True, "mode": mode})
    plan = make_plan(grid, gpu=False)
    order = plan.orders["b"].ids[:docs]
    wrong = {arm: {d for i, d in enumerate(order) if (i * share) % 1 + share >= 1} for arm, share in wrong_share.items()}
    tracker = stage_tracker(plan, None)
    engines = FakeEngines(capacity=capacity, wrong=wrong)
    progress = FarmProgress(plan.missing, enabled=False)
    scheduler, rows, events = run_loop(tmp_path, grid, engines, stages=tracker, progress=progress)
    assert progress.stops == {arm: stop["stage"] for arm, stop in scheduler.stops.items()}
    assert progress.skipped == scheduler.skipped_samples and progress.look == tracker.look_label()
    return scheduler, rows, events, engines, order, wrong


def test_stages_stop_a_losing_arm_at_its_look_free_its_engine_and_record_the_rule_and_numbers(tmp_path):
    scheduler, rows, events, engines, order, wrong = staged_run(tmp_path, {"bad": 1.0, "worse40": 0.4})
    assert len(wrong["bad"]) == 200 and len(wrong["worse40"]) == 80
    done = {v: [r for r in rows if r["variant"] == v] for v in ("base", "same", "bad", "worse40")}
    assert len(done["base"]) == len(done["same"]) == 200 and "same" not in scheduler.stops
    bad = scheduler.stops["bad"]
    assert (bad["rule"], bad["stage"], bad["n"], bad["of"], bad["delta_pp"]) == ("canary", "canary", 24, 200, -100.0)
    assert bad["upper_pp"] < -20 and bad["bound"] == "exact" and bad["text"].startswith("stopped at 24/200: Δ <= ")
    worse = scheduler.stops["worse40"]
    assert worse["rule"] in ("canary", "futility") and worse["upper_pp"] < worse["threshold_pp"] < 0
    assert worse["n"] in (24, 50, 100) and worse["n"] < 200
    # the stop freed the arm: its queue drained, its engines retired, nothing of it after the stop
    for arm in ("bad", "worse40"):
        assert len(done[arm]) + scheduler.stops[arm]["skipped_samples"] == 200
        assert len(done[arm]) < 200 and not any(s.variant == arm for s in engines.slots)
    assert scheduler.skipped_samples == sum(s["skipped_samples"] for s in scheduler.stops.values())
    stops = [e for e in events if e.event == EventKind.STAGE_STOP]
    assert sorted(e.variant for e in stops) == ["bad", "worse40"]
    assert all(e.reason == scheduler.stops[e.variant]["text"] and e.model_extra["verdict"]["rule"] for e in stops)
    manifest = RunManifest.model_validate({"run_id": "r1", "stops": scheduler.stops})
    assert manifest.stops["bad"].rule == "canary" and manifest.stops["bad"].n == 24


def test_stages_go_out_in_order_and_nothing_stops_without_a_record(tmp_path):
    scheduler, rows, events, engines, order, _ = staged_run(tmp_path, {"close": 0.02}, docs=120)
    assert scheduler.stops == {} and scheduler.skipped_samples == 0
    assert sorted(r["variant"] for r in rows) == sorted(["base", "close", "same"] * 120)
    stage = {d: scheduler.stages.stage_of("b", d) for d in order}
    assert [stage[d] for d in order] == sorted(stage[d] for d in order)  # the looks are prefixes of the order
    assert [stage[order[i]] for i in (0, 23, 24, 29, 30, 59, 60, 119)] == [0, 0, 1, 1, 2, 2, 3, 3]
    sent = {v: [stage[s.doc.id] for s in scheduler.queue.samples if s.variant == v] for v in ("base", "close")}
    by_id = {s.id: s for s in scheduler.queue.samples}
    for v in ("base", "close"):
        handed = [stage[by_id[i].doc.id] for i in engines.submitted if by_id[i].variant == v]
        assert handed == sorted(handed) and len(handed) == len(sent[v]) == 120
    assert {arm: v.stage for arm, v in scheduler.stages.verdicts.items()} == {"close": "100%", "same": "100%"}
    assert not [e for e in events if e.event == EventKind.STAGE_STOP]


def test_an_arm_the_canary_stops_is_not_stopped_again_by_the_stages(tmp_path):
    grid = grid_of(tmp_path, ("base", "bad", "same"), docs=120, canary=True, canary_docs=24,
                   stages={"enabled": True})
    plan = make_plan(grid, gpu=False)
    gate = canary_gate(plan, None, {v: StructuralRule().rules for v in ("base", "bad", "same")}, stop_on_fail=True,
                       baseline=grid.baseline_variant, max_loss_pp=grid.farm.canary.max_loss_pp)
    tracker = stage_tracker(plan, None)
    engines = FakeEngines(capacity=2, wrong={"bad": set(plan.orders["b"].ids)})
    scheduler, rows, events = run_loop(tmp_path, grid, engines, gate, stages=tracker)
    assert scheduler.canary["bad"].stopped and scheduler.stops == {} and tracker.arms == ["same"]
    assert len([r for r in rows if r["variant"] == "bad"]) == 24 and scheduler.skipped_samples == 96
    assert [e.variant for e in events if e.event in (EventKind.VARIANT_SKIPPED, EventKind.STAGE_STOP)] == ["bad"]


def test_a_rerun_judges_the_stored_rows_at_once_and_stops_the_arm_at_the_same_look(tmp_path):
    """Rows stored by an earlier run count: the loop stops `bad` before handing out anything of it."""
    from omk_ray.config import StagesSpec
    from omk_ray.farm.stage_tracker import StageTracker

    grid = grid_of(tmp_path, ("base", "bad"), docs=120, canary_docs=24, stages={"enabled": True})
    plan = make_plan(grid, gpu=False)
    first = plan.orders["b"].ids[:24]
    stored = [{"variant": v, "bench": "b", "doc_id": d, "repeat": 0, "score": 1.0 if v == "base" else 0.0}
              for v in ("base", "bad") for d in first]
    tracker = StageTracker(plan, StagesSpec(enabled=True), "base", 24, 20.0, stored)
    engines = FakeEngines(capacity=2)
    scheduler, rows, events = run_loop(tmp_path, grid, engines, stages=tracker)
    stop = scheduler.stops["bad"]
    assert (stop["rule"], stop["stage"], stop["n"], stop["delta_pp"]) == ("canary", "canary", 24, -100.0)
    assert "bad" not in engines.started and not [r for r in rows if r["variant"] == "bad"]
    assert stop["skipped_samples"] == 120  # the plan (no store here) still lists every sample of it
