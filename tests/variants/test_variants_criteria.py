"""Saliency criteria, super-expert protection and the random drop map, on a hand-made profile whose
values are worked out by hand below; and the profiler's new `amax` on a real tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omk_ray.variants.cdscores import CDTable, class_scores, merge_cd
from omk_ray.variants.dropmap import DropMapError, plan_drop_map, super_experts

FIELDS = ("wnorm", "rnorm", "wsum", "tc", "cc", "amax")

# One layer, three experts, two classes (wnorm, rnorm, wsum, tc, cc, amax):
A = [[2, 4, 1.0, 2, 1, 3], [3, 12, 0.5, 6, 1, 1], [0, 0, 0, 0, 0, 0]]
B = [[1, 2, 0.5, 1, 1, 0.5], [0, 0, 0, 0, 0, 0], [6, 6, 2.0, 3, 1, 9]]


def profile(per_class: dict[str, list[list[float]]], layers=("0",)) -> dict:
    return {
        "metadata": {"num_layers": len(layers), "num_experts": len(next(iter(per_class.values())))},
        "categories": {
            name: {layer: [{"id": e, **dict(zip(FIELDS, values))} for e, values in enumerate(rows)] for layer in layers}
            for name, rows in per_class.items()
        },
    }


TINY = profile({"a": A, "b": B})

# By hand, class a / class b:
#   cd (alpha 2)         2*2+2=6, 2*3+6=12, 0        / 2*1+1=3, 0, 2*6+3=15
#   frequency            2, 6, 0                     / 1, 0, 3
#   weighted-frequency   1, 0.5, 0                   / 0.5, 0, 2
#   ean                  4, 12, 0                    / 2, 0, 6
#   ean-mean             4/2=2, 12/6=2, 0 (no token) / 2, 0, 2
#   weighted-ean         2, 3, 0                     / 1, 0, 6
#   reap                 2/2=1, 3/6=0.5, 0           / 1, 0, 6/3=2
#   max-activation       3, 1, 0                     / 0.5, 0, 9
HAND = {
    "cd": ([6, 12, 0], [3, 0, 15]),
    "frequency": ([2, 6, 0], [1, 0, 3]),
    "weighted-frequency": ([1, 0.5, 0], [0.5, 0, 2]),
    "ean": ([4, 12, 0], [2, 0, 6]),
    "ean-mean": ([2, 2, 0], [2, 0, 2]),
    "weighted-ean": ([2, 3, 0], [1, 0, 6]),
    "reap": ([1, 0.5, 0], [1, 0, 2]),
    "max-activation": ([3, 1, 0], [0.5, 0, 9]),
}


@pytest.mark.parametrize("criterion", list(HAND))
def test_every_criterion_matches_the_hand_computation(criterion):
    _, scores = class_scores(TINY, alpha=2.0, criterion=criterion)
    assert np.allclose(scores["a"][0], HAND[criterion][0]) and np.allclose(scores["b"][0], HAND[criterion][1])


# Pooled = the criterion of the classes' statistics added up (amax: the maximum):
#   e0: wnorm 3, rnorm 6, wsum 1.5, tc 3, amax 3; e1: 3, 12, 0.5, 6, 1; e2: 6, 6, 2, 3, 9
#   reap [1, 0.5, 2] -> drops 1; ean-mean [2, 2, 2] -> tie, the higher id goes: 2;
#   frequency [3, 6, 3] -> 2; max-activation [3, 1, 9] -> 1; weighted-frequency [1.5, 0.5, 2] -> 1
# max over mean-normalized classes, reap: a [1, .5, 0]/0.5 = [2, 1, 0]; b [1, 0, 2]/1 -> max [2, 1, 2] -> drops 1
# mean, frequency: a [2, 6, 0]/(8/3) = [.75, 2.25, 0]; b [1, 0, 3]/(4/3) = [.75, 0, 2.25]
#   -> mean [.75, 1.125, 1.125] -> drops 0;  geomean: e1, e2 have a zero -> ~0, tie -> drops 2
@pytest.mark.parametrize("strategy, criterion, expected", [
    ("pooled", "reap", [1]),
    ("pooled", "ean-mean", [2]),
    ("pooled", "frequency", [2]),
    ("pooled", "max-activation", [1]),
    ("pooled", "weighted-frequency", [1]),
    ("max", "reap", [1]),
    ("mean", "frequency", [0]),
    ("geomean", "frequency", [2]),
])
def test_criteria_work_with_every_aggregation(strategy, criterion, expected):
    assert plan_drop_map(TINY, strategy, drop=1, criterion=criterion).drop_map == {"0": expected}


def test_a_merged_class_is_merged_on_its_statistics():
    # `a+b` as one class: reap [1, 0.5, 2], so with one class max = the pooled score
    plan = plan_drop_map(TINY, "max", drop=1, criterion="reap", classes=["a+b"], normalize="none")
    assert np.allclose(plan.scores[0], [1, 0.5, 2]) and plan.drop_map == {"0": [1]}


def test_unknown_criterion_and_old_profiles_are_refused():
    with pytest.raises(DropMapError, match="unknown criterion 'reep'"):
        plan_drop_map(TINY, "max", drop=1, criterion="reep")
    old = profile({"a": [row[:5] for row in A]})  # zip stops at the five fields an older profile has
    assert "amax" not in old["categories"]["a"]["0"][0]
    with pytest.raises(DropMapError, match="no `amax`"):
        plan_drop_map(old, "max", drop=1, criterion="max-activation")
    assert plan_drop_map(old, "max", drop=1, criterion="reap").drop_map == {"0": [2]}  # reap [1, .5, 0]


def amax_profile(layers: int, spikes: dict[tuple[int, int], float]) -> dict:
    """Four experts a layer, amax 1 everywhere but the spikes; frequency rises with the expert id."""
    per_layer = {}
    for layer in range(layers):
        per_layer[str(layer)] = [
            {"id": e, "wnorm": 1, "rnorm": 1, "wsum": 1, "tc": e + 1, "cc": 1, "amax": spikes.get((layer, e), 1.0)}
            for e in range(4)
        ]
    return {"metadata": {"num_layers": layers, "num_experts": 4}, "categories": {"a": per_layer}}


def test_super_experts_follow_reaps_rule():
    # 16 values: fourteen 1s, 50 and 100. 99.5th percentile (linear): 50 + 0.925 * 50 = 96.25; max / 10 = 10
    # -> threshold 96.25: only the 100 is a super expert; REAP looks in the first 75% of the layers (0-2).
    early = amax_profile(4, {(0, 0): 100, (2, 1): 50})
    plan = plan_drop_map(early, "max", drop=1, criterion="frequency", protect_super=True)
    assert plan.params["super_experts"] == {"0": [0]}
    assert plan.drop_map == {"0": [1], "1": [0], "2": [0], "3": [0]}  # expert 0 (lowest frequency) is shielded in layer 0
    late = amax_profile(4, {(3, 0): 100, (2, 1): 50})
    assert plan_drop_map(late, "max", drop=1, protect_super=True).params["super_experts"] == {}
    everywhere = plan_drop_map(late, "max", drop=1, protect_super=True, protect_super_all_layers=True)
    assert everywhere.params["super_experts"] == {"3": [0]} and everywhere.protected["3"] == [0]


def test_super_expert_threshold_of_a_tenth_of_the_largest():
    # 40 values: 1 everywhere but 100 at (0, 0) and 12, 11 at (1, 2), (2, 3): percentile 99.5 of
    # [1 x 37, 11, 12, 100] = 12 + 0.805 * 88 = 82.84 > 10 -> only the 100; with 100 in 3 places the
    # percentile is 100 and nothing exceeds it: REAP's rule needs a strict outlier.
    stats = {"a": np.ones((10, 4, len(FIELDS)))}
    stats["a"][0, 0, 5], stats["a"][1, 2, 5], stats["a"][2, 3, 5] = 100, 12, 11
    assert super_experts(list(range(10)), stats) == {"0": [0]}
    stats["a"][1, 2, 5] = stats["a"][2, 3, 5] = 100
    assert super_experts(list(range(10)), stats) == {}


def test_random_drop_map_is_seeded_and_respects_protection():
    cd = amax_profile(3, {})
    one = plan_drop_map(cd, "random", drop=2, seed=7)
    assert one.drop_map == plan_drop_map(cd, "random", drop=2, seed=7).drop_map
    draws = np.random.default_rng(7).random((3, 4))  # the documented definition: the lowest draws go
    assert one.drop_map == {str(l): sorted(np.argsort(draws[l])[:2].tolist()) for l in range(3)}
    assert any(plan_drop_map(cd, "random", drop=2, seed=s).drop_map != one.drop_map for s in range(1, 6))
    shielded = plan_drop_map(cd, "random", drop=2, seed=7, protect_per_class=1)  # expert 3: most frequent
    assert all(3 not in ids for ids in shielded.drop_map.values())
    with pytest.raises(DropMapError, match="takes no parameter"):
        plan_drop_map(cd, "random", drop=2, k=2)


def test_amax_merges_by_maximum():
    part = {"metadata": {"num_experts": 3, "prompts": 1}, "categories": TINY["categories"]}
    other = profile({"a": [[1, 1, 1, 1, 1, 7], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0.5]], "b": B})
    merged = merge_cd([part, {**other, "metadata": {"num_experts": 3, "prompts": 1}}])
    a = merged["categories"]["a"]["0"]
    assert [e["amax"] for e in a] == [7, 1, 0.5] and [e["tc"] for e in a] == [3, 6, 1]
    table = CDTable(num_experts=1, layers=[0])
    table.add("x", 0, np.array([[1, 1, 1, 1, 1, 5.0]]))
    table.add("x", 0, np.array([[1, 1, 1, 1, 1, 2.0]]))
    assert table.block("x", 0).tolist() == [[2, 2, 2, 2, 2, 5.0]]


def test_profiler_records_the_largest_activation_of_each_expert(tiny_gemma4):
    from transformers import AutoModelForCausalLM

    from omk_ray.variants.profile import ROUTED, ExpertRecorder, expert_output, experts_inputs, find_experts_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma4, dtype=torch.float32)
    expected: dict[int, np.ndarray] = {}

    def independent(layer):
        def hook(module, args, kwargs, output):
            hidden, index, weights = experts_inputs(args, kwargs)
            top = np.zeros(module.gate_up_proj.shape[0])
            for e in range(len(top)):
                tok, _ = torch.where(index == e)
                if len(tok):
                    top[e] = expert_output(module, e, hidden[tok]).abs().max().item()
            expected[layer] = top
        return hook

    for layer, module in find_experts_modules(model).items():
        module.register_forward_hook(independent(layer), with_kwargs=True)
    recorder = ExpertRecorder(model)
    recorder.recording = True
    with torch.no_grad():
        model(torch.randint(9, 100, (1, 24)))
    for layer, top in expected.items():
        assert np.allclose(recorder.stats[layer][0, :, ROUTED.index("amax")].numpy(), top, rtol=1e-6)
        assert recorder.stats[layer][0, :, ROUTED.index("tc")].sum() == 24 * 2  # top-2
