"""Stage decisions (farm/stages.py) on thousands of simulated grids (farm/stage_sim.py; no engine): arms
equal to the baseline are stopped at most at the nominal rate, arms at -5, -10, -30 and -70 pp stop at
the looks docs/farm.md claims, and every stop carries its rule and numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from omk_ray.farm.stage_sim import simulate
from omk_ray.farm.stages import Verdict, decide

ARMS = {"equal": 0.0, "equal-2": 0.0, "at-5": -5.0, "at-10": -10.0, "at-30": -30.0, "at-70": -70.0}
SHAPES = {  # the seed's HumanEval (164 problems, baseline 90%), the demo grid's toy bench (400, 85%)
    "humaneval-164": ({"humaneval": (164, 0.90)}, 1500),
    "toy-400": ({"toy": (400, 0.85)}, 600),
}


def rate(stopped: int, trials: int, nominal: float, what: str) -> None:
    ci = binomtest(stopped, trials).proportion_ci(0.95, method="exact")
    print(f"  {what}: {stopped}/{trials} = {stopped / trials:.4f}, 95% CI [{ci.low:.4f}, {ci.high:.4f}] "
          f"(nominal <= {nominal})")
    assert ci.low <= nominal


@pytest.fixture(scope="module", params=list(SHAPES))
def sim(request):
    benches, grids = SHAPES[request.param]
    result = simulate(ARMS, benches, grids=grids, seed=7)
    print(f"\n{request.param}: {grids} grids")
    for arm in ARMS:
        print(f"  {arm:8} stops {result.stop_rate(arm):.3f}: {result.stages(arm)}")
    print(f"  samples saved: {result.saved():.1%} of the grid (baseline included), "
          f"{result.saved(baseline=False):.1%} of the arms'")
    return request.param, result


def test_arms_equal_to_the_baseline_or_within_the_threshold_stop_at_most_at_the_nominal_rate(sim):
    shape, result = sim
    grids = len(result.stage["equal"])
    any_equal = (result.stage["equal"] >= 0) | (result.stage["equal-2"] >= 0)
    rate(int(any_equal.sum()), grids, 0.05, f"{shape}: grids with an equal arm stopped")
    rate(int((result.stage["at-5"] >= 0).sum()), grids, 0.05, f"{shape}: the arm at the threshold (-5 pp) stopped")


def test_losing_arms_stop_at_the_looks_the_docs_claim(sim):
    shape, result = sim
    assert result.stages("at-70").get("canary", 0) >= 0.95  # the seed's collapse: at the canary
    by_half = sum(result.stages("at-30").get(k, 0) for k in ("canary", "25%", "50%"))
    assert by_half >= 0.95  # -30 pp: by half of the bench
    if shape == "toy-400":
        assert result.stages("at-30").get("25%", 0) + result.stages("at-30").get("canary", 0) >= 0.85
    assert result.stop_rate("at-10") <= 0.25  # -10 pp: too close to -5 pp to tell apart here; runs on
    assert result.saved() > 0.15


def test_a_collapsed_arm_stops_at_the_canary_with_its_rule_and_numbers():
    diffs = np.r_[-np.ones(16), np.zeros(8), -np.ones(100), np.zeros(276)]  # 16 of the first 24 lost
    verdicts = decide({"geomean": {"toy": diffs}, "twin": {"toy": np.zeros(400)}}, {"toy": 400})
    stop = verdicts["geomean"]
    assert (stop.action, stop.rule, stop.stage, stop.n, stop.of, stop.bound) == ("stop", "canary", "canary", 24, 400, "exact")
    assert stop.delta_pp == pytest.approx(-100 * 16 / 24) and stop.upper_pp < -20
    assert stop.text().startswith("stopped at 24/400: Δ <= ") and "95% exact (canary, bench toy)" in stop.text()
    assert verdicts["twin"] == Verdict("twin", "continue", "100%", 3)  # judged at every look, never stopped
    assert stop.to_dict()["text"] == stop.text()
    # the same verdict whatever arrives later: each look is judged on its own prefix
    assert decide({"geomean": {"toy": diffs[:24]}}, {"toy": 400})["geomean"] == stop


def test_futility_stops_pooled_and_per_bench_and_waits_for_every_bench():
    rng = np.random.default_rng(1)
    sizes = {"a": 400, "b": 200}
    losing = {"a": np.where(rng.random(400) < 0.3, -1.0, 0.0), "b": np.where(rng.random(200) < 0.3, -1.0, 0.0)}
    stop = decide({"arm": losing}, sizes, stages=[0.25, 0.5, 1.0])["arm"]
    assert stop.stopped and stop.rule == "futility" and stop.upper_pp < -5 and stop.stage == "25%"
    assert stop.alpha == pytest.approx(0.05 / 3)  # one arm; two benches and the pooled difference
    early = decide({"arm": {"a": losing["a"], "b": losing["b"][:10]}}, sizes, stages=[0.25, 0.5, 1.0])["arm"]
    assert early == Verdict("arm", "continue", "", -1)  # bench b has not reached the first look yet


def test_race_stops_an_arm_surely_behind_the_best_that_futility_keeps():
    rng = np.random.default_rng(4)
    n = 400
    base = rng.random(n) < 0.4
    better = base | (rng.random(n) < 0.5)  # +30 pp over a weak baseline
    outcomes = {"better": {"b": better - base.astype(float)}, "same": {"b": np.zeros(n)}}
    futility = decide(outcomes, {"b": n})
    race = decide(outcomes, {"b": n}, mode="race")
    assert not futility["same"].stopped and not futility["better"].stopped
    assert race["same"].stopped and race["same"].rule == "race" and race["same"].target == "vs better"
    assert not race["better"].stopped


def test_graded_scores_skip_the_exact_canary_and_are_judged_by_the_bounds():
    graded = np.full(400, -0.5)  # half of every problem's credit lost: no pass/fail pairs to count
    stop = decide({"arm": {"g": graded}}, {"g": 400})["arm"]
    assert stop.stopped and (stop.rule, stop.stage, stop.bound) == ("futility", "canary", "anytime-valid")
