"""The shipped toy MoE: it has learned every class (both engines), and its experts specialize.

Specialization is checked with the variant factory end to end: profile per class, drop maps,
expert surgery, then held-out accuracy of the pruned checkpoints.
"""

from __future__ import annotations

import json

import pytest

from omk_ray.toy import ablation
from omk_ray.toy.data import REPORT_FILE, shipped
from omk_ray.toy.evaluate import accuracy, answers, open_engine
from omk_ray.toy.tasks import CLASSES, heldout_problems

# Held-out accuracy every class must reach (greedy, exact match); see omk_ray/_data/toy/report.json
# and /work/notes/README_toy.md for the measured figures.
FLOORS = {"arith": 0.50, "arith/add": 0.80, "arith/sub": 0.80, "arith/mul": 0.15, "reverse": 0.80, "sort": 0.80,
          "logic": 0.80, "brackets": 0.80, "upper": 0.80}
PRUNE_DROP = 6  # experts dropped per layer for the strategy arms: 6 of 16 (37.5 %)
PER_CLASS = 25  # held-out problems per task in the pruning checks (time budget)


@pytest.fixture(scope="module")
def model_dir():
    return shipped()


@pytest.fixture(scope="module")
def test_problems():
    return heldout_problems("test")


@pytest.fixture(scope="module")
def transformers_answers(model_dir, test_problems):
    engine = open_engine(str(model_dir), "transformers")
    try:
        return answers(engine, test_problems)
    finally:
        engine.close()


def test_checkpoint_is_a_plain_gemma4_model(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma4ForCausalLM"] and config["model_type"] == "gemma4_text"
    assert config["head_dim"] >= 32 and 8 <= config["num_experts"] <= 16 and config["top_k_experts"] == 2
    assert "auto_map" not in config
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 5]
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    template = tokenizer.get("chat_template") or (model_dir / "chat_template.jinja").read_text()
    assert "<|turn>" in template
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    assert size < 16e6, f"the shipped weights take {size / 1e6:.1f} MB"


def test_transformers_engine_clears_every_floor(model_dir, test_problems, transformers_answers):
    scores = accuracy(test_problems, transformers_answers)
    low = {c: scores[c] for c in FLOORS if scores[c] < FLOORS[c]}
    assert not low, f"below the floor {FLOORS}: {low}"
    shipped_report = json.loads((model_dir.parent / REPORT_FILE).read_text())["heldout_accuracy"]
    drift = {c: (scores[c], shipped_report[c]) for c in FLOORS if abs(scores[c] - shipped_report[c]) > 0.05}
    assert not drift, f"held-out accuracy differs from the shipped report.json: {drift}"


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_clears_every_floor_and_agrees_with_transformers(model_dir, test_problems, transformers_answers):
    engine = open_engine(str(model_dir), "vllm")
    try:
        texts = answers(engine, test_problems)
    finally:
        engine.close()
    scores = accuracy(test_problems, texts)
    low = {c: scores[c] for c in FLOORS if scores[c] < FLOORS[c]}
    assert not low, f"vLLM below the floor {FLOORS}: {low}"
    same = sum(a == b for a, b in zip(texts, transformers_answers)) / len(texts)
    assert same >= 0.95, f"vLLM and transformers agree on only {same:.0%} of the greedy answers"


# -- specialization ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subset(test_problems):
    counts: dict[str, int] = {}
    picked = []
    for p in test_problems:
        label = f"{p['class']}/{p['subclass']}"
        if counts.get(label, 0) < PER_CLASS:
            counts[label] = counts.get(label, 0) + 1
            picked.append(p)
    return picked


@pytest.fixture(scope="module")
def cd(model_dir):
    return ablation.profile(model_dir)


@pytest.fixture(scope="module")
def baseline(model_dir, subset, test_problems, transformers_answers):
    by_id = dict(zip((p["id"] for p in test_problems), transformers_answers))
    return accuracy(subset, [by_id[p["id"]] for p in subset])


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("toy-pruned")


def test_pruning_the_experts_a_class_relies_on_hurts_that_class_far_more(model_dir, cd, subset, baseline,
                                                                         pruned_dir):
    """Per class: drop its top expert in every layer (one per subclass for `arith`), by its own CD
    score; that class collapses, the others barely move."""
    for cls in CLASSES:
        scores = ablation.score_pruned(model_dir, ablation.class_experts(cd, cls), pruned_dir / cls, subset)
        own = baseline[cls] - scores[cls]
        others = {c: round(baseline[c] - scores[c], 3) for c in CLASSES if c != cls}
        mean_other = sum(others.values()) / len(others)
        assert own >= 0.5 * baseline[cls], f"{cls}: {baseline[cls]:.2f} -> {scores[cls]:.2f} without its experts"
        assert own >= mean_other + 0.4 * baseline[cls], f"{cls} lost {own:.2f}; the others lost {others}"


@pytest.fixture(scope="module")
def arms(model_dir, cd, subset, pruned_dir):
    """max and geomean over the classes, and max over arith's subclasses, at the same prune ratio."""
    maps = {s: ablation.strategy_map(cd, s, PRUNE_DROP) for s in ("max", "geomean")}
    maps["max-split"] = ablation.strategy_map(cd, "max", PRUNE_DROP, split=["arith"])
    return {name: ablation.score_pruned(model_dir, m, pruned_dir / name, subset) for name, m in maps.items()}


def test_max_keeps_the_specialist_class_that_geomean_drops(baseline, arms):
    victim = max(CLASSES, key=lambda c: baseline[c] - arms["geomean"][c])
    table = {c: (baseline[c], arms["max"][c], arms["geomean"][c]) for c in CLASSES}
    assert arms["max"][victim] >= arms["geomean"][victim] + 0.4, f"{victim}: (baseline, max, geomean) {table}"
    assert arms["max"][victim] >= 0.6 * baseline[victim], f"max lost {victim}: {table}"
    assert arms["max"]["all"] > arms["geomean"]["all"], table


def test_splitting_arith_into_subclasses_keeps_its_experts(baseline, arms):
    """arith spreads over three specialists (add, sub, mul), so class-level max ranks each low; max over
    the subclasses keeps them (the model card's science -> chemistry/physics/biology split)."""
    table = {name: arms[name]["arith"] for name in ("max", "max-split")}
    assert arms["max-split"]["arith"] >= arms["max"]["arith"] + 0.3, f"baseline {baseline['arith']:.2f}, {table}"
