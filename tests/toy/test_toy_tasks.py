"""The toy model's synthetic tasks, held-out sets, shipped JSONL files and training format (no model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omk_ray.toy import data
from omk_ray.toy.tasks import CLASSES, HELDOUT_SIZES, TASKS, TrainingStream, heldout_problems


def solve(p: dict) -> str:
    """An independent solver for every task, from the prompt text alone."""
    keyword, _, rest = p["prompt"].partition(" ")
    if keyword in ("add", "sub", "mul"):
        a, b = map(int, rest.split())
        return str({"add": a + b, "sub": a - b, "mul": a * b}[keyword])
    if keyword == "rev":
        return rest[::-1]
    if keyword == "order":
        return "".join(sorted(rest))
    if keyword == "vote":
        return "T" if rest.count("T") > rest.count("F") else "F"
    if keyword == "close":
        return "".join({"(": ")", "[": "]", "{": "}", "<": ">"}[c] for c in reversed(rest))
    if keyword == "up":
        return rest.upper()
    raise AssertionError(f"unknown task in {p['prompt']!r}")


def test_targets_are_exact_answers():
    problems = heldout_problems("test") + heldout_problems("profile") + TrainingStream(7).batch(2000)
    wrong = [p for p in problems if solve(p) != p["target"]]
    assert not wrong, wrong[:3]


def test_heldout_sets_are_fixed_distinct_and_never_trained_on():
    test, profile = heldout_problems("test"), heldout_problems("profile")
    assert test == heldout_problems("test")
    assert len(test) == HELDOUT_SIZES["test"] * len(TASKS)
    prompts = [p["prompt"] for p in test + profile]
    assert len(set(prompts)) == len(prompts), "a prompt appears twice across the held-out sets"
    trained = {p["prompt"] for p in TrainingStream(0).batch(20000)}
    assert not trained & set(prompts)


def test_classes_and_subclasses():
    test = heldout_problems("test")
    assert {p["class"] for p in test} == set(CLASSES) and len(CLASSES) >= 6
    subs = {(p["class"], p["subclass"]) for p in test if p["subclass"]}
    assert subs == {("arith", "add"), ("arith", "sub"), ("arith", "mul")}
    assert all(p["subclass"] is None for p in test if p["class"] != "arith")


def test_training_stream_is_deterministic_per_seed():
    assert TrainingStream(3).batch(50) == TrainingStream(3).batch(50)
    assert TrainingStream(3).batch(50) != TrainingStream(4).batch(50)


def test_shipped_files_match_the_code():
    """The shipped bench and prompts are what the task code draws today (else rebuild the assets)."""
    assert data.shipped(data.BENCH_FILE).read_text() == "".join(json.dumps(r) + "\n" for r in data.bench_rows())
    assert data.shipped(data.PROFILE_FILE).read_text() == "".join(json.dumps(r) + "\n" for r in data.profile_rows())


def test_bench_file_feeds_the_jsonl_bench():
    from omk_ray.benches import make_bench
    from omk_ray.config import BenchSpec
    from omk_ray.engines.base import Completion

    bench = make_bench(BenchSpec(name="toy", kind="jsonl", source=str(data.shipped(data.BENCH_FILE))))
    docs = bench.docs()
    assert len(docs) == len(heldout_problems("test"))
    by_domain = {d.domain for d in docs}
    assert by_domain == set(CLASSES)
    add = next(d for d in docs if d.subdomain == "add")
    assert add.domain == "arith" and add.messages == [{"role": "user", "content": add.messages[0]["content"]}]
    assert bench.score(add, Completion(text=f" {add.target}\n")).correct
    assert not bench.score(add, Completion(text=add.target + "0")).correct


def test_profile_prompts_load_in_the_profiler():
    from omk_ray.variants.profile import load_prompts

    prompts = load_prompts(data.shipped(data.PROFILE_FILE))
    assert {p["class"] for p in prompts} == set(CLASSES)
    assert {p["subclass"] for p in prompts if p["class"] == "arith"} == {"add", "sub", "mul"}


def test_training_format_is_the_inference_prompt():
    """Training sequences start with exactly the tokens the engines render, and teach the answer + `<turn|>`."""
    from omk_ray.toy.tiny import build_tokenizer
    from omk_ray.toy.train import IGNORE, encode

    tok = build_tokenizer(None)
    p = heldout_problems("test")[0]
    ids, labels, start = encode(tok, p)
    rendered = tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                       add_generation_prompt=True)
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    taught = [t for t in labels if t != IGNORE]
    assert tok.decode(taught) == p["target"] + "<turn|>"
    assert taught[-1] == tok.convert_tokens_to_ids("<turn|>")  # generation config stops on it (id 5)
    assert tok.decode(ids[start:start + 3]) == p["prompt"][:3]


def test_cli_data_writes_files_and_rejects_a_file(tmp_path):
    cmd = [sys.executable, "-m", "omk_ray", "toy", "data", "--out"]
    done = subprocess.run(cmd + [str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / data.BENCH_FILE).read_text() == data.shipped(data.BENCH_FILE).read_text()
    (tmp_path / "f").write_text("x")
    done = subprocess.run(cmd + [str(tmp_path / "f")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is a file" in done.stderr


@pytest.mark.parametrize("kind", ["nope"])
def test_unknown_heldout_set_is_named(kind):
    with pytest.raises(ValueError, match="nope"):
        heldout_problems(kind)
