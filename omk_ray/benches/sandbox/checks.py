"""How a program is tested, inside the sandbox. Standard library only.

Three checks, chosen by the job's `check`:

- `script`: run the program (solution + its tests, e.g. HumanEval's `check(entry_point)`);
  it passes when it runs to the end without an exception.
- `stdio`: LiveCodeBench stdin/stdout problems: run the program once per test with the
  test's input on fd 0 and compare what it writes to fd 1 with the expected output, line by
  line, numbers compared as decimals (LiveCodeBench's own rule).
- `call`: LiveCodeBench functional (LeetCode) problems: call `Solution().<fn_name>(*args)`
  (or a top-level function) per test, arguments and expected value given as JSON lines.

The verdict is written once, as one line (a Python literal) carrying the job's nonce, after the tests;
a program that exits early (exit(), os._exit) leaves no verdict and cannot pass.
"""

from __future__ import annotations

import io
import os
import signal
import sys

# The imports LiveCodeBench puts in front of every solution.
LCB_STAR_IMPORTS = (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
    "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing",
)  # fmt: skip
LCB_PREAMBLE = (
    "".join(f"from {m} import *\n" for m in LCB_STAR_IMPORTS)
    + "".join(f"import {m}\n" for m in LCB_STAR_IMPORTS if m not in ("builtins", "typing"))
    + "sys.setrecursionlimit(50000)\n"
)
SNIPPET = 160

_write = os.write  # taken before any untrusted code can replace it


class TimeLimit(BaseException):
    """One test ran past its time limit (BaseException: `except Exception` must not swallow it)."""


def run(job: dict, verdict_fd: int) -> None:
    checks = {"script": check_script, "stdio": check_stdio, "call": check_call}
    status, reason, passed = checks[job["check"]](job)
    total = len(job.get("tests") or []) if job["check"] != "script" else None
    verdict = {"nonce": job["nonce"], "status": status, "reason": reason, "tests_passed": passed, "tests_total": total}
    _write(verdict_fd, (repr(verdict) + "\n").encode())


# -- script ----------------------------------------------------------------------------------


def check_script(job: dict) -> tuple[str, str, int | None]:
    source = job["program"]
    try:
        code = compile(source, "<program>", "exec")
    except (SyntaxError, ValueError) as err:
        return "error", _syntax(err), None
    try:
        exec(code, {"__name__": "__main__"})
    except AssertionError as err:
        return "fail", _failed_assertion(err, source), None
    except SystemExit as err:
        return "fail", f"the program exited (SystemExit({err.code!r})) before its tests finished", None
    except BaseException as err:  # noqa: BLE001 - every way a program can die is a verdict
        return "error", _exception(err), None
    return "pass", "", None


def _failed_assertion(err: AssertionError, source: str) -> str:
    import traceback

    lines = source.splitlines()
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if frame.filename == "<program>" and frame.lineno and frame.lineno <= len(lines):
            detail = f": {err}" if str(err) else ""
            return _short(f"AssertionError at line {frame.lineno}: {lines[frame.lineno - 1].strip()}{detail}")
    return _short(f"AssertionError: {err}")


# -- stdio -----------------------------------------------------------------------------------


def check_stdio(job: dict) -> tuple[str, str, int]:
    try:
        code = compile(LCB_PREAMBLE + job["program"], "<program>", "exec")
    except (SyntaxError, ValueError) as err:
        return "error", _syntax(err), 0
    tests, limit = job["tests"], job["test_timeout_s"]
    real_stdout, devnull = os.dup(1), os.open(os.devnull, os.O_RDONLY)
    for i, test in enumerate(tests):
        os.dup2(devnull, 0)  # fds 0 and 1 taken again (a program may close them, e.g. open(0))
        os.dup2(real_stdout, 1)  # so that the files below never land on them
        with open(".stdin", "w", encoding="utf-8") as f:
            f.write(test["input"])
        stdin = os.open(".stdin", os.O_RDONLY)
        os.unlink(".stdin")  # test files live only as open descriptors: the folder stays small
        capture = open(".stdout", "w+b")  # noqa: SIM115 - read back below
        os.unlink(".stdout")
        os.dup2(stdin, 0)
        os.close(stdin)
        sys.stdout.flush()
        os.dup2(capture.fileno(), 1)
        sys.stdin = io.open(0, "r", encoding="utf-8", closefd=False)
        sys.stdout = io.open(1, "w", encoding="utf-8", closefd=False)
        outcome = None
        try:
            with _time_limit(limit):
                exec(code, {"__name__": "__main__"})
        except SystemExit:
            pass
        except TimeLimit:
            outcome = ("timeout", f"test {i}: time limit of {limit:g} s exceeded", i)
        except BaseException as err:  # noqa: BLE001
            outcome = ("error", f"test {i}: {_exception(err)}", i)
        finally:
            try:
                sys.stdout.flush()
            except BaseException:  # noqa: BLE001 - a closed or broken stdout is the program's problem
                pass
            os.dup2(real_stdout, 1)
            sys.stdout, sys.stdin = sys.__stdout__, sys.__stdin__
        if outcome:
            return outcome
        capture.seek(0)
        got = capture.read().decode("utf-8", "replace")
        capture.close()
        if not same_output(got, test["output"]):
            return "fail", _short(f"test {i}: wrong answer: expected {test['output']!r}, got {got!r}"), i
    return "pass", "", len(tests)


def same_output(got: str, expected: str) -> bool:
    """LiveCodeBench's rule: the same lines after stripping; unequal lines may still match as decimals."""
    from decimal import Decimal, InvalidOperation

    got_lines, expected_lines = _lines(got), _lines(expected)
    if len(got_lines) != len(expected_lines):
        return False
    for a, b in zip(got_lines, expected_lines):
        if a == b:
            continue
        try:
            if [Decimal(x) for x in a.split()] != [Decimal(x) for x in b.split()]:
                return False
        except (InvalidOperation, ValueError):
            return False
    return True


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


# -- call ------------------------------------------------------------------------------------


def check_call(job: dict) -> tuple[str, str, int]:
    import json

    program, fn_name, limit = job["program"], job["fn_name"], job["test_timeout_s"]
    try:
        code = compile(LCB_PREAMBLE + program, "<program>", "exec")
    except (SyntaxError, ValueError) as err:
        return "error", _syntax(err), 0
    module: dict = {"__name__": "solution"}
    try:
        with _time_limit(limit):
            exec(code, module)
    except TimeLimit:
        return "timeout", f"loading the program took over {limit:g} s", 0
    except BaseException as err:  # noqa: BLE001
        return "error", f"loading the program: {_exception(err)}", 0
    solution = module.get("Solution") if "class Solution" in program else None
    if solution is None and not callable(module.get(fn_name)):
        return "error", f"no class Solution and no function {fn_name!r} defined", 0
    for i, test in enumerate(job["tests"]):
        try:
            args = [json.loads(line) for line in test["input"].strip().split("\n") if line.strip()]
            expected = json.loads(test["output"])
        except ValueError as err:
            return "error", f"test {i}: malformed test data ({err})", i
        try:
            with _time_limit(limit):
                method = getattr(solution(), fn_name) if solution is not None else module[fn_name]
                result = method(*args)
                if isinstance(result, tuple):
                    result = list(result)  # LiveCodeBench accepts a tuple where a list is expected
                correct = result == expected
        except TimeLimit:
            return "timeout", f"test {i}: time limit of {limit:g} s exceeded", i
        except BaseException as err:  # noqa: BLE001
            return "error", f"test {i}: {_exception(err)}", i
        if not correct:
            return "fail", _short(f"test {i}: got {_repr(result)} expected {_repr(expected)}"), i
    return "pass", "", len(job["tests"])


# -- helpers ---------------------------------------------------------------------------------


class _time_limit:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        def expire(signum, frame):
            raise TimeLimit()

        signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)


def _syntax(err: Exception) -> str:
    if isinstance(err, SyntaxError):
        return _short(f"SyntaxError: {err.msg} (line {err.lineno})")
    return _short(f"{type(err).__name__}: {err}")


def _exception(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "MemoryError: the memory limit was reached"
    if isinstance(err, SystemExit):
        return f"SystemExit({err.code!r})"
    return _short(f"{type(err).__name__}: {err}")


def _repr(value) -> str:
    try:
        text = repr(value)
    except BaseException:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def _short(text: str, limit: int = 2 * SNIPPET) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
