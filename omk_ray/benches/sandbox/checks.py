"""How a program is judged: the harness, a process of its own that never runs the program's code.

The harness forks the runner (runner.py: the program's own process, with its limits and no
privileges) before it reads the job, sends it the program and the test inputs, and compares
what comes back with the expected outputs here. The expected outputs, the nonce and the
verdict's descriptor never leave this process, which the runner can neither read nor trace
(it is not dumpable, and the runner has no capabilities): a program can only answer, never
write a verdict. Standard library only; `wire` (runner.py) is set by the supervisor.

Three checks, chosen by the job's `check`:

- `script`: run the program, then the job's `test_code` (HumanEval's tests and
  `check(entry_point)`, MBPP's asserts) *here*, with this process's own builtins and, first, the
  problem's own `helpers` (HumanEval's prompt): the names taken from the program are the
  `entry_point` only, or without one those the tests use that are neither builtins nor the
  problem's. Each stands for the program's object: calling it calls the object in the runner and returns a
  copy of the value (an object that is not plain data comes back as a handle, which compares
  by identity only). The asserts run in this process, on values. Without `test_code` the
  program is its own test and passes when it runs to its end (trusted programs only: an
  untrusted one can always end early with a clean exit).
- `stdio`: LiveCodeBench stdin/stdout problems: the runner runs the program once per test with
  the test's input on fd 0 and returns what it wrote to fd 1; the lines are compared here,
  numbers as decimals (LiveCodeBench's own rule).
- `call`: LiveCodeBench functional (LeetCode) problems: per test, the runner calls
  `Solution().<fn_name>(*args)` (or a top-level function) with the test's JSON arguments and
  returns the value, compared here with the expected JSON value.

The verdict is one line (a Python literal) carrying the job's nonce, written after the tests.
When the runner dies (a signal, a limit, os._exit), the harness dies the same death, and the
host reads the verdict from how it ended (pool.py).
"""

from __future__ import annotations

import builtins
import json
import os
import select
import signal

wire = None  # runner.py, loaded from source by the supervisor

SNIPPET = 160
TESTS_FILE = "<tests>"
HELPERS_FILE = "<problem>"
BUILTIN_NAMES = frozenset(dir(builtins))


class Program:
    """The runner seen from the harness: one request out, one reply in."""

    def __init__(self, pid: int, requests: int, replies: int, max_reply: int):
        self.pid, self.requests, self.replies, self.max_reply = pid, requests, replies, max_reply
        self.buffer = bytearray()
        self.remotes: dict[int, Remote] = {}

    def ask(self, request: dict, timeout: float | None = None) -> dict:
        """The reply ({"timeout": True} after `timeout` s); when the runner has died this process ends too."""
        try:
            wire.send(self.requests, request)
        except BrokenPipeError:
            self.mirror_end()
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 1 :]
                try:
                    reply = json.loads(line)
                except ValueError:
                    reply = None
                if not isinstance(reply, dict) or len(reply) != 1:
                    return {"raised": {"type": "ValueError", "reason": "the program garbled its answer"}}
                return reply
            if len(self.buffer) > self.max_reply:
                self.stop()
                return {"raised": {"type": "ValueError", "reason": f"an answer over {self.max_reply >> 20} MiB"}}
            if not select.select([self.replies], [], [], timeout)[0]:
                self.stop()
                return {"timeout": True}
            chunk = os.read(self.replies, 1 << 16)
            if not chunk:
                self.mirror_end()
            self.buffer += chunk

    def value(self, data):
        return wire.decode(data, self.remote)

    def remote(self, handle: int, loaded: bool = False) -> "Remote":
        if handle not in self.remotes:
            self.remotes[handle] = (Remote if loaded else Answer)(self, handle)
        return self.remotes[handle]

    def argument(self, value):
        def handle(obj):
            if isinstance(obj, Remote) and obj.program is self:
                return obj.handle
            raise TypeError(f"cannot pass a {type(obj).__name__} to the program")

        return wire.encode(value, handle)

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:  # another uid (the harness has no capabilities): init's end takes it down
            pass

    def mirror_end(self):
        """The runner is gone: end this process the way it ended, for the host to read."""
        _, status, _ = os.wait4(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            code = 128 - code  # a signal whose default is not to end a process
        os._exit(code)


class Remote:
    """An object of the program (a function, a class, an instance): callable, compared by identity."""

    def __init__(self, program: Program, handle: int):
        self.program, self.handle = program, handle

    def __call__(self, *args, **kwargs):
        program = self.program
        reply = program.ask({"op": "call", "handle": self.handle, "args": [program.argument(a) for a in args],
                             "kwargs": {k: program.argument(v) for k, v in kwargs.items()}})
        if "ok" in reply:
            return program.value(reply["ok"])
        raise program_error(reply)

    def __repr__(self) -> str:
        return f"<object {self.handle} of the program>"


class Answer(Remote):
    """An object a call returned that is not plain data: equal only to itself, and neither true nor false
    (`assert candidate(x)` must not pass on an object whose truth the program defines)."""

    def __bool__(self):
        err = ProgramError("the program answered with an object that is not plain data")
        err.reason = str(err)
        raise err


class ProgramError(Exception):
    """What the program raised (or how it stopped), raised again in the tests."""

    reason = ""


class ProgramExited(ProgramError):
    pass


def program_error(reply: dict) -> BaseException:
    """The program's exception as the tests expect it: a builtin exception type stays that type."""
    if "exited" in reply:
        err = ProgramExited(f"SystemExit({reply['exited']})")
        err.reason = f"the program exited (SystemExit({reply['exited']})) before its tests finished"
        return err
    raised = reply.get("raised") or {"type": "Exception", "reason": "the program gave no answer"}
    base = getattr(builtins, str(raised.get("type")), None)
    kind = ProgramError
    if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
        try:
            kind = type(base.__name__, (base, ProgramError), {})
        except TypeError:  # an incompatible layout
            pass
    err = kind(str(raised.get("reason")))
    err.reason = str(raised.get("reason"))
    return err


def run(job: dict, verdict_fd: int, program: Program) -> None:
    checks = {"script": check_script, "stdio": check_stdio, "call": check_call}
    try:
        status, reason, passed = checks[job["check"]](job, program)
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # a reply of the wrong shape
        status, reason, passed = "error", f"the program garbled its answers ({type(err).__name__})", None
    total = len(job.get("tests") or []) if job["check"] != "script" else None
    verdict = {"nonce": job["nonce"], "status": status, "reason": reason, "tests_passed": passed, "tests_total": total}
    os.write(verdict_fd, (repr(verdict) + "\n").encode())


def load_failure(reply: dict) -> tuple[str, str]:
    if "exited" in reply:
        return "fail", f"the program exited (SystemExit({reply['exited']})) before its tests finished"
    raised = reply["raised"]
    return ("fail" if raised["type"] == "AssertionError" else "error"), str(raised["reason"])


# -- script ----------------------------------------------------------------------------------


def check_script(job: dict, program: Program) -> tuple[str, str, int | None]:
    source = job.get("test_code")
    try:
        tests = compile(source, TESTS_FILE, "exec") if source else None
    except (SyntaxError, ValueError) as err:
        return "error", f"the tests do not compile: {wire.syntax_error(err)}", None
    namespace: dict = {"__name__": "__main__"}  # exec adds this process's own, untouched builtins
    helpers = job.get("helpers")
    if helpers and tests is not None:
        try:  # the problem's own definitions (the prompt's helpers), not the program's copies of them
            exec(compile(helpers, HELPERS_FILE, "exec"), namespace)
        except BaseException as err:  # noqa: BLE001 - trusted text that does not run: the bench's fault
            return "error", f"the problem's own code does not run here: {wire.exception(err)}", None
    entry_point = job.get("entry_point")
    if tests is None:
        wanted = []
    elif entry_point:
        wanted = [entry_point]  # the only name the tests take from the program
    else:  # the names the tests use that neither the builtins nor the problem define
        wanted = sorted(n for n in _names(tests) if n not in BUILTIN_NAMES and n not in namespace and n[:2] != "__")
    reply = program.ask({"op": "load", "program": job["program"], "names": wanted})
    if "ok" not in reply:
        return (*load_failure(reply), None)
    if tests is None:
        return "pass", "", None
    if entry_point and entry_point not in reply["ok"]:
        return "fail", f"the program defines no {entry_point!r}", None
    for name, what in reply["ok"].items():
        if name not in wanted:
            continue
        try:
            if "callable" in what:
                namespace[name] = program.remote(int(what["callable"]), loaded=True)
            elif "value" in what:
                namespace[name] = program.value(what["value"])
            else:
                namespace[name] = __import__(str(what["module"]), fromlist=["_"])
        except (ImportError, ValueError, TypeError, RecursionError):
            pass  # a name the tests cannot use: they fail on it, as they would without it
    try:
        exec(tests, namespace)
    except ProgramExited as err:
        return "fail", err.reason, None
    except AssertionError as err:
        if isinstance(err, ProgramError):
            return "fail", err.reason, None
        return "fail", wire.failed_assertion(err, source, TESTS_FILE).replace(" at line ", " at test line ", 1), None
    except ProgramError as err:
        return "error", err.reason, None
    except BaseException as err:  # noqa: BLE001 - the tests raised on the program's answer
        return "error", wire.exception(err), None
    return "pass", "", None


def _names(code) -> set[str]:
    """Every name the compiled tests (and the functions they define) may look up."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


# -- stdio -----------------------------------------------------------------------------------


def check_stdio(job: dict, program: Program) -> tuple[str, str, int]:
    reply = program.ask({"op": "load", "program": job["program"], "preamble": wire.LCB_PREAMBLE, "run": False})
    if "ok" not in reply:
        return (*load_failure(reply), 0)
    tests, limit = job["tests"], job["test_timeout_s"]
    for i, test in enumerate(tests):
        reply = program.ask({"op": "stdio", "input": test["input"], "timeout": limit}, timeout=limit + 2)
        if "timeout" in reply:
            return "timeout", f"test {i}: time limit of {limit:g} s exceeded", i
        if "ok" not in reply:
            return "error", f"test {i}: {program_error(reply).reason}", i
        got = reply["ok"]
        if not isinstance(got, str):
            return "error", f"test {i}: the program garbled its answer", i
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


def check_call(job: dict, program: Program) -> tuple[str, str, int]:
    source, fn_name, limit = job["program"], job["fn_name"], job["test_timeout_s"]
    reply = program.ask({"op": "load", "program": source, "preamble": wire.LCB_PREAMBLE, "module": "solution",
                         "names": ["Solution", fn_name or ""], "timeout": limit}, timeout=limit + 2)
    if "timeout" in reply:
        return "timeout", f"loading the program took over {limit:g} s", 0
    if "ok" not in reply:
        return "error", f"loading the program: {load_failure(reply)[1]}", 0
    defined = {name for name, what in reply["ok"].items() if "callable" in what}
    solution = "class Solution" in source and "Solution" in defined
    if not solution and fn_name not in defined:
        return "error", f"no class Solution and no function {fn_name!r} defined", 0
    for i, test in enumerate(job["tests"]):
        try:
            args = [json.loads(line) for line in test["input"].strip().split("\n") if line.strip()]
            expected = json.loads(test["output"])
        except ValueError as err:
            return "error", f"test {i}: malformed test data ({err})", i
        reply = program.ask({"op": "solve", "fn": fn_name, "solution": solution, "timeout": limit,
                             "args": [program.argument(a) for a in args]}, timeout=limit + 2)
        if "timeout" in reply:
            return "timeout", f"test {i}: time limit of {limit:g} s exceeded", i
        if "ok" not in reply:
            return "error", f"test {i}: {program_error(reply).reason}", i
        try:
            result = program.value(reply["ok"])
        except (ValueError, TypeError, RecursionError):
            return "error", f"test {i}: the program garbled its answer", i
        if result != expected:
            return "fail", _short(f"test {i}: got {_repr(result)} expected {_repr(expected)}"), i
    return "pass", "", len(job["tests"])


# -- helpers ---------------------------------------------------------------------------------


def _repr(value) -> str:
    text = repr(value)  # plain data or a handle: nothing of the program's runs here
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "..."


def _short(text: str, limit: int = 2 * SNIPPET) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
