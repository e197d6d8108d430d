"""The scheduler's decisions (omk_ray/farm/policies.py) from plain numbers: no Ray, no clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from omk_ray.farm.policies import (PROBE, EngineView, EngineWork, LoadTime, VariantQueue, VariantView, feed_size,
                                   in_flight_target, may_retry, next_engine, patience, reprices_at, room, round_robin,
                                   sibling_pays, stalled, start_overdue)


@dataclass(eq=False)
class Item:
    bench: str
    cost: float
    canary: bool = False
    seen: bool = False
    name: str = ""


def loaded(variant="serial", kind="simgpu", target=2, in_flight=0) -> EngineView:
    return EngineView(variant, kind, False, target, in_flight)


def loading(variant="serial", kind="simgpu") -> EngineView:
    return EngineView(variant, kind, True, 1, 0)


def view(name="serial", unsent=10, tokens=100.0, kind="simgpu", cost=1.0, failed=False, start_failures=0,
         accelerator=True) -> VariantView:
    return VariantView(name, kind, cost, unsent, tokens, failed, start_failures, accelerator)


# -- room and in-flight targets ---------------------------------------------------------------------


def test_room_counts_a_loaded_engines_free_requests():
    mine = [loaded(target=8, in_flight=3), loaded(target=8, in_flight=9)]
    assert room(mine, mine) == 5 + 0
    assert room([], mine) == 0


def test_a_loading_engine_counts_as_a_loaded_one_of_its_kind_else_one():
    wide = loaded("wide", target=22, in_flight=22)
    assert room([loading()], [loading(), wide]) == 22
    assert room([loading()], [loading(), loaded("other", kind="vllm", target=22)]) == 1
    assert room([loading(), loading()], [loading(), loading()]) == 2


@pytest.mark.parametrize("max_in_flight, capacity, target", [(None, 8, 9), (None, 1, 2), (None, 0, 1), (4, 100, 4)])
def test_in_flight_target(max_in_flight, capacity, target):
    assert in_flight_target(max_in_flight, capacity) == target


def test_feed_size_takes_a_chunk_or_with_siblings_loading_the_whole_room_strided():
    assert feed_size(target=10, in_flight=2, taken=0, most=16, siblings_loading=0) == (8, 1)
    assert feed_size(target=10, in_flight=2, taken=4, most=16, siblings_loading=0) == (4, 1)
    assert feed_size(target=40, in_flight=0, taken=0, most=16, siblings_loading=0) == (16, 1)
    assert feed_size(target=40, in_flight=0, taken=0, most=16, siblings_loading=2) == (40, 3)


# -- a sibling engine pays for its load --------------------------------------------------------------

# `serial` answers 50 tokens a second: 100 tokens in 2 busy seconds.
SERIAL = [EngineWork("serial", 100, 2.0)]


@pytest.mark.parametrize("remaining_tokens, load_s, engines, pays", [
    (50, 4.0, 1, False),  # ~1 s of work left, a load takes 4 s
    (400, 0.5, 1, True),  # ~8 s left and a 0.5 s load: one more engine
    (400, 11.7, 1, False),  # the same work on a loaded machine whose engines took 11.7 s to load
    (400, 3.0, 4, False),  # 8 s of work over 4 engines is 2 s each: less than a 3 s load
    (400, 3.0, 1, True),
])
def test_a_sibling_pays_when_the_work_left_outlasts_a_load(remaining_tokens, load_s, engines, pays):
    loads = [LoadTime("simgpu", "serial", load_s)]
    assert sibling_pays("serial", "simgpu", remaining_tokens, engines, loads, SERIAL) is pays


def test_before_any_load_every_free_slot_is_worth_an_engine():
    assert sibling_pays("serial", "simgpu", 1, 1, [], []) is True


def test_a_variant_not_measured_yet_waits_for_its_first_engine():
    """`wide` (same engine kind) loaded and finished while `serial` still loads: no speed for `serial`."""
    loads = [LoadTime("simgpu", "wide", 0.0)]
    work = [EngineWork("wide", 20, 0.2), EngineWork("serial", 0, 0.0)]
    assert sibling_pays("serial", "simgpu", 100, 1, loads, work) is False


def test_the_median_load_of_the_variants_own_engines_counts():
    loads = [LoadTime("simgpu", "serial", s) for s in (1.0, 2.0, 30.0)] + [LoadTime("simgpu", "wide", 100.0)]
    assert sibling_pays("serial", "simgpu", 150, 1, loads, SERIAL) is True  # 3 s of work > median 2 s
    assert sibling_pays("serial", "simgpu", 50, 1, loads, SERIAL) is False  # 1 s of work


def test_the_speed_is_summed_over_the_variants_engines_that_answered():
    work = [EngineWork("serial", 100, 2.0), EngineWork("serial", 100, 2.0), EngineWork("serial", 0, 5.0),
            EngineWork("wide", 10_000, 1.0)]
    loads = [LoadTime("simgpu", "serial", 2.5)]
    # 50 tokens/s (the idle engine's seconds are not counted), 2 engines: 300 tokens take 3 s > 2.5 s
    assert sibling_pays("serial", "simgpu", 300, 2, loads, work) is True
    assert sibling_pays("serial", "simgpu", 200, 2, loads, work) is False


# -- which variant gets a free slot ------------------------------------------------------------------


def test_the_free_slot_goes_to_the_most_work_left_per_engine():
    variants = [view("a", tokens=1000), view("b", tokens=600)]
    assert next_engine(variants, [], [], [], free=1, max_retries=1) == "a"
    # `a` has an engine (loaded, measured, full): 1000 over 2 engines is less than `b`'s 600 over 1
    engines = [loaded("a", target=2, in_flight=2)]
    loads, work = [LoadTime("simgpu", "a", 0.1)], [EngineWork("a", 100, 1.0)]
    assert next_engine(variants, engines, loads, work, free=1, max_retries=1) == "b"
    assert next_engine([view("a", tokens=1000)], engines, loads, work, free=1, max_retries=1) == "a"


def test_no_engine_when_nothing_fits_or_nothing_is_wanted():
    engines = [loaded("a", target=20, in_flight=0)]
    assert next_engine([view("a", unsent=20)], engines, [], [], 1, 1) is None  # its engine takes them all
    assert next_engine([view("a", cost=2.0)], [], [], [], free=1.5, max_retries=1) is None
    assert next_engine([view("a", cost=2.0), view("b", tokens=1)], [], [], [], 1.5, 1) == "b"
    assert next_engine([view("a", failed=True)], [], [], [], 1, 1) is None
    assert next_engine([view("a", start_failures=2)], [], [], [], 1, max_retries=1) is None
    assert next_engine([view("a", start_failures=1)], [], [], [], 1, max_retries=1) == "a"


def test_a_client_variant_gets_one_actor_and_an_unmeasured_one_waits():
    busy = [loaded("a", target=1, in_flight=1)]
    assert next_engine([view("a", accelerator=False)], busy, [], [], 4, 1) is None
    assert next_engine([view("a")], busy, [], [], 4, 1) == "a"  # first wave: no engine has loaded yet
    assert next_engine([view("a")], busy, [LoadTime("simgpu", "b", 1.0)], [], 4, 1) is None


def test_a_variant_others_wait_on_goes_first_whatever_its_share():
    """The baseline of a baseline-relative canary rule: its canary is what the arms' verdicts wait for."""
    variants = [view("arm", tokens=1000), view("base", tokens=10)]
    assert next_engine(variants, [], [], [], free=1, max_retries=1) == "arm"
    variants[1] = VariantView("base", "simgpu", 1.0, 10, 10.0, False, 0, True, first=True)
    assert next_engine(variants, [], [], [], free=1, max_retries=1) == "base"
    assert next_engine(variants, [], [], [], free=0.5, max_retries=1) is None  # first, but it must still fit


def test_ties_go_to_the_first_variant_and_empty_guesses_still_count():
    assert next_engine([view("a", tokens=0), view("b", tokens=0)], [], [], [], 2, 1) == "a"


# -- stalls and retries ------------------------------------------------------------------------------


def test_patience_is_the_timeout_or_three_times_the_longest_answer_at_the_engines_speed():
    assert patience(60, longest_budget=0, latency_s=0, tokens=0) == 60
    assert patience(60, longest_budget=16_000, latency_s=10.0, tokens=1000) == pytest.approx(480)
    assert patience(60, longest_budget=256, latency_s=10.0, tokens=1000) == 60


def test_stalled_and_overdue():
    assert stalled(idle_s=61, in_flight=1, patience_s=60)
    assert not stalled(idle_s=61, in_flight=0, patience_s=60)
    assert not stalled(idle_s=60, in_flight=3, patience_s=60)
    assert start_overdue(age_s=301, timeout_s=300) and not start_overdue(age_s=300, timeout_s=300)
    assert may_retry(1, max_retries=1) and not may_retry(2, max_retries=1)


# -- a variant's queue -------------------------------------------------------------------------------


def names(items) -> list[str]:
    return [i.name for i in items]


def test_never_seen_benches_are_probed_round_robin_then_longest_first():
    a = [Item("a", 100, name=f"a{i}") for i in range(6)]
    b = [Item("b", 50, name=f"b{i}") for i in range(2)]
    seen = [Item("c", c, seen=True, name=f"c{c}") for c in (10, 500)]
    assert names(round_robin([*a, *b, *seen], 2)) == ["a0", "b0", "a1", "b1"]
    queue = VariantQueue([*a, *b, *seen], canary=False)
    assert 2 <= PROBE <= len(a)
    assert names(queue.take(100)) == ["a0", "b0", "a1", "b1", *names(a[2:PROBE]),  # the probes
                                      "c500", *names(a[PROBE:]), "c10"]  # then the longest expected first


def test_the_canary_sample_goes_first_and_alone_until_judged():
    items = [Item("a", 10, name="x"), Item("a", 30, canary=True, name="k1"), Item("a", 20, canary=True, name="k2")]
    queue = VariantQueue(items, canary=True)
    assert queue.gated and queue.unsent == 3 and queue.remaining_tokens == 60
    assert names(queue.take(5)) == ["k1", "k2"]
    assert queue.take(5) == []  # the rest waits for the verdict
    queue.put_back([items[2]])  # a canary sample whose engine died goes back before the verdict
    assert names(queue.take(5)) == ["k2"]
    queue.open()
    assert not queue.gated and names(queue.take(5)) == ["x"]


def test_reprice_sets_guessed_costs_of_a_bench_and_sorts_again():
    guess = [Item("a", 256, name=f"g{i}") for i in range(PROBE + 2)]
    other = Item("b", 100, seen=True, name="b")
    own = Item("a", 40, seen=True, name="own")
    queue = VariantQueue([*guess, other, own], canary=False)
    queue.take(PROBE)  # the probes of bench a
    queue.reprice("a", 20.0)
    assert [(i.name, i.cost) for i in queue.pending] == [("b", 100), ("own", 40)] + [
        (g.name, 20.0) for g in guess[PROBE:]]


def test_take_with_a_stride_leaves_the_ones_between_for_loading_siblings():
    queue = VariantQueue([Item("a", c, seen=True, name=str(c)) for c in range(10, 0, -1)], canary=False)
    assert names(queue.take(3, stride=2)) == ["10", "8", "6"]
    assert names(queue.take(100)) == ["9", "7", "5", "4", "3", "2", "1"]


def test_put_back_failed_and_drain():
    items = [Item("a", c, seen=True, name=str(c)) for c in (5, 3, 1)]
    queue = VariantQueue(items, canary=False)
    out = queue.take(2)
    queue.put_back(out)
    assert names(queue.pending) == ["5", "3", "1"]
    queue.failed = True
    assert queue.take(3) == [] and names(queue.drain()) == ["5", "3", "1"] and queue.unsent == 0


def test_reprices_at_powers_of_two():
    assert [n for n in range(1, 20) if reprices_at(n)] == [1, 2, 4, 8, 16]
