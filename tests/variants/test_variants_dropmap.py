"""Drop-map strategies on hand-made CD scores whose answers are worked out by hand below."""

from __future__ import annotations

import json

import pytest

from omk_ray.variants.cdscores import CDScoresError, load_cd, merge_cd
from omk_ray.variants.dropmap import (
    DropMapError, build_drop_map, compare_drop_maps, plan_drop_map, summarize_plan, validate_drop_map,
)


def cd_from(per_class: dict[str, list[float]], wnorm: dict[str, list[float]] | None = None, layers=("0",), key="categories"):
    """CD scores whose raw score is tc (plus wnorm * alpha where given); every layer identical."""
    num_experts = len(next(iter(per_class.values())))
    groups = {
        name: {
            layer: [
                {"id": e, "wnorm": (wnorm or {}).get(name, [0] * num_experts)[e], "rnorm": 0, "wsum": 0, "tc": tc, "cc": 1}
                for e, tc in enumerate(values)
            ]
            for layer in layers
        }
        for name, values in per_class.items()
    }
    return {"metadata": {"num_layers": len(layers), "num_experts": num_experts}, key: groups}


# Raw scores (tc) of one layer, 4 experts. Expert 3 is a math specialist.
#   math     [2, 2, 2, 6]  mean 3 -> normalized [0.667, 0.667, 0.667, 2.0]
#   code     [3, 4, 5, 0]  mean 3 -> [1.0, 1.333, 1.667, 0]
#   creative [5, 3, 4, 0]  mean 3 -> [1.667, 1.0, 1.333, 0]
# max:      [1.667, 1.333, 1.667, 2.0]   -> drops 1 (keeps the specialist 3)
# mean:     [1.111, 1.0, 1.222, 0.667]   -> drops 3
# geomean:  expert 3 has zeros -> ~0     -> drops 3
# sum:      3 x mean                     -> drops 3
# second:   [1.0, 1.0, 1.333, 0]         -> drops 3; drop 2 -> 0/1 tie, the higher id goes: [1, 3]
# topk-mean k=2: [1.333, 1.167, 1.5, 1.0] -> drops 3; drop 2 -> [1, 3]
# lp p=2:   [2.055, 1.795, 2.236, 2.0]   -> drops 1; drop 2 -> [1, 3]
# pooled (raw sums): [10, 9, 11, 6]      -> drops 3
SPECIALIST = cd_from({"math": [2, 2, 2, 6], "code": [3, 4, 5, 0], "creative": [5, 3, 4, 0]}, layers=("0", "1"))


@pytest.mark.parametrize("strategy, params, drop, expected", [
    ("max", {}, 1, [1]),
    ("mean", {}, 1, [3]),
    ("geomean", {}, 1, [3]),
    ("sum", {}, 1, [3]),
    ("pooled", {}, 1, [3]),
    ("second", {}, 1, [3]),
    ("second", {}, 2, [1, 3]),
    ("topk-mean", {"k": 2}, 1, [3]),
    ("topk-mean", {"k": 2}, 2, [1, 3]),
    ("lp", {"p": 2}, 1, [1]),
    ("lp", {"p": 2}, 2, [1, 3]),
    ("lp", {"p": 1}, 1, [3]),            # p = 1 is the sum
    ("lp", {"p": 60}, 1, [1]),           # large p approaches max
    ("softmax", {"temperature": 0.01}, 1, [1]),   # cold: max
    ("softmax", {"temperature": 1000}, 1, [3]),   # hot: mean
])
def test_each_strategy_has_the_hand_computed_answer(strategy, params, drop, expected):
    drop_map = build_drop_map(SPECIALIST, strategy, drop=drop, **params)
    assert drop_map == {"0": expected, "1": expected}


def test_max_keeps_the_single_class_specialist_that_geomean_and_mean_drop():
    kept = {s: {0, 1, 2, 3} - set(build_drop_map(SPECIALIST, s, target=3)["0"]) for s in ("max", "geomean", "mean")}
    assert 3 in kept["max"]
    assert 3 not in kept["geomean"] and 3 not in kept["mean"]


def test_rank_normalization():
    # ranks / 4: math [0.5, 0.5, 0.5, 1.0], code [0.5, 0.75, 1.0, 0.25], creative [1.0, 0.5, 0.75, 0.25]
    assert build_drop_map(SPECIALIST, "max", drop=1, normalize="rank")["0"] == [1]   # [1, .75, 1, 1]
    assert build_drop_map(SPECIALIST, "mean", drop=1, normalize="rank")["0"] == [3]  # [.667, .583, .75, .5]


def test_pooled_ignores_class_scale_but_normalized_strategies_do_not():
    cd = cd_from({"math": [100, 100, 110, 90], "code": [1, 1, 1, 9]})
    assert build_drop_map(cd, "pooled", drop=1)["0"] == [3]  # raw sums [101, 101, 111, 99]
    assert build_drop_map(cd, "mean", drop=1)["0"] == [1]    # [.667, .667, .717, 1.95]: tie 0/1, higher id goes


def test_pooled_v3_questions_form():
    cd = cd_from({"q1": [100, 100, 110, 90], "q2": [1, 1, 1, 9]}, key="questions")
    assert build_drop_map(cd, "pooled", drop=1) == {"0": [3]}


def test_alpha_weighs_wnorm_against_token_counts():
    cd = cd_from({"all": [0, 15, 4]}, wnorm={"all": [10, 0, 4]})
    assert build_drop_map(cd, "pooled", drop=1)["0"] == [2]             # [20, 15, 12]
    assert build_drop_map(cd, "pooled", drop=1, alpha=0.5)["0"] == [0]  # [5, 15, 6]


def test_protection_top_and_per_class_floor():
    # mean ranking: 2 (1.222), 0 (1.111), 1 (1.0), 3 (0.667)
    assert build_drop_map(SPECIALIST, "mean", drop=3, protect_top=1)["0"] == [0, 1, 3]
    # each class's best (math 3, code 2, creative 0) is protected: the specialist survives mean
    assert build_drop_map(SPECIALIST, "mean", drop=1, protect_per_class=1)["0"] == [1]
    plan = plan_drop_map(SPECIALIST, "mean", drop=1, protect_per_class=1)
    assert plan.protected["0"] == [0, 2, 3]
    with pytest.raises(DropMapError, match="at most 2 can be dropped, not 3"):
        build_drop_map(SPECIALIST, "mean", drop=3, protect_top=2)


def test_class_weights_choose_and_merge_classes():
    # math x3: mean = [1.556, 1.444, 1.667, 2.0] -> drops 1
    assert build_drop_map(SPECIALIST, "mean", drop=1, weights={"math": 3})["0"] == [1]
    # without math, expert 3 scores 0 everywhere
    assert build_drop_map(SPECIALIST, "max", drop=1, classes=["code", "creative"])["0"] == [3]
    # math+code merged raw [5, 6, 7, 6] -> [.833, 1, 1.167, 1]; max with creative: [1.667, 1, 1.333, 1]:
    # an exact tie between 1 and 3, broken by id (the higher id is dropped)
    assert build_drop_map(SPECIALIST, "max", drop=1, classes=["math+code", "creative"])["0"] == [3]


def test_split_science_into_subclasses_keeps_the_chemistry_specialist():
    cd = cd_from({
        "math": [4, 4, 4, 4],
        "science": [10, 10, 10, 10],
        "science/chemistry": [0, 0, 0, 8],
        "science/physics": [10, 10, 10, 2],
    })
    # pooled science is flat: everything ties at 1, the highest id goes
    assert build_drop_map(cd, "max", drop=1)["0"] == [3]
    # split: chemistry [0, 0, 0, 4], physics [1.25, 1.25, 1.25, .25] -> 3 is the best expert
    split = plan_drop_map(cd, "max", drop=1, split_classes=["science"])
    assert split.drop_map["0"] == [2]
    assert list(split.params["classes"]) == ["math", "science/chemistry", "science/physics"]
    assert build_drop_map(cd, "max", drop=1, split_classes={"science": ["chemistry"]})["0"] == [2]


def test_same_count_in_every_layer_and_target_equals_drop():
    assert build_drop_map(SPECIALIST, "max", target=2) == build_drop_map(SPECIALIST, "max", drop=2)
    assert {len(v) for v in build_drop_map(SPECIALIST, "mean", target=2).values()} == {2}


def test_summary_reports_boundary_and_near_ties():
    plan = plan_drop_map(SPECIALIST, "second", drop=2)  # second: [1.0, 1.0, 1.333, 0]
    layer = summarize_plan(plan)["layers"]["0"]
    assert layer["dropped"] == [1, 3]
    assert layer["kept_min"] == pytest.approx(1.0) and layer["dropped_max"] == pytest.approx(1.0)
    assert layer["margin"] == pytest.approx(0.0)
    assert {t["id"]: t["dropped"] for t in layer["near_ties"]} == {0: False, 1: True}
    clear = summarize_plan(plan_drop_map(SPECIALIST, "mean", drop=1))["layers"]["0"]
    assert clear["near_ties"] == [] and clear["margin"] == pytest.approx(1.0 - 2 / 3)


def test_compare_lists_differences_and_overlap():
    a = {"0": [1, 2], "1": [0, 3]}
    b = {"0": [1, 3], "1": [0, 3]}
    c = compare_drop_maps(a, b)
    assert c["layers"]["0"] == {"only_a": [2], "only_b": [3], "overlap": 0.5}
    assert c["layers"]["1"]["overlap"] == 1.0
    assert c["overlap"] == 0.75 and c["differing_experts"] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "median", "drop": 1}, "unknown strategy"),
    ({"normalize": "zscore", "drop": 1}, "unknown normalization"),
    ({}, "exactly one of"),
    ({"drop": 1, "target": 3}, "exactly one of"),
    ({"drop": 4}, "at least one expert must stay"),
    ({"target": 0}, "at least one expert must stay"),
    ({"drop": 1, "p": 2}, "takes no parameter"),
    ({"strategy": "lp", "drop": 1, "p": 0}, "p must be > 0"),
    ({"drop": 1, "classes": ["math", "poetry"]}, "'poetry' is not in the CD scores"),
    ({"drop": 1, "split_classes": ["math"]}, "no `math/...` subclasses"),
    ({"drop": 1, "weights": {"poetry": 2}}, "not selected"),
    ({"strategy": "second", "drop": 1, "classes": ["math"]}, "at least two classes"),
    ({"strategy": "topk-mean", "drop": 1, "k": 4}, "k=4 must be in 1..3"),
    ({"drop": 1, "protect_top": -1}, "protect_top must be"),
])
def test_bad_requests_name_the_problem(kwargs, message):
    with pytest.raises(DropMapError, match=message):
        build_drop_map(SPECIALIST, **kwargs)


@pytest.mark.parametrize("mutate, message", [
    (lambda cd: cd.pop("metadata"), "missing `metadata`"),
    (lambda cd: cd["categories"]["math"]["0"][0].update(id=9), "expert id 9 is not in 0..3"),
    (lambda cd: cd["categories"]["math"]["0"][1].update(id=0), "expert 0 appears twice"),
    (lambda cd: cd["categories"]["math"]["0"][0].update(tc=-1), "`tc` must be a finite number >= 0"),
    (lambda cd: cd["categories"]["code"].pop("1"), "different sets of layers"),
    (lambda cd: cd["categories"]["code"].update({"x": []}), "layer keys must be integers"),
])
def test_malformed_cd_scores_are_refused(tmp_path, mutate, message):
    cd = json.loads(json.dumps(SPECIALIST))
    mutate(cd)
    path = tmp_path / "cd.json"
    path.write_text(json.dumps(cd))
    with pytest.raises(CDScoresError, match=message):
        load_cd(path)


def test_merge_adds_shards():
    merged = merge_cd([SPECIALIST, SPECIALIST])
    assert [e["tc"] for e in merged["categories"]["math"]["0"]] == [4, 4, 4, 12]
    assert build_drop_map(merged, "max", drop=1) == build_drop_map(SPECIALIST, "max", drop=1)


@pytest.mark.parametrize("drop_map, message", [
    ({}, "non-empty"),
    ({"0": [1], "1": [1, 2]}, "same number of experts"),
    ({"0": [1, 1]}, "listed twice"),
    ({"0": [8]}, r"outside 0\.\.3"),
    ({"0": [-1]}, r"outside 0\.\.3"),
    ({"a": [1]}, "not a non-negative integer"),
    ({"0": "1"}, "list of integer"),
    ({"0": [0, 1, 2, 3]}, "removes all 4 experts"),
])
def test_validate_drop_map(drop_map, message):
    with pytest.raises(DropMapError, match=message):
        validate_drop_map(drop_map, num_experts=4)
