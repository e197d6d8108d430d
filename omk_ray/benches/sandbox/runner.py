"""The process that runs the untrusted program, and the wire format it shares with the harness.

The harness forks it (supervisor.py) before reading the job, sets its limits and drops its
privileges; it keeps fds 1-2 and two pipes: requests come in on fd 3, replies go out on fd 4.
It is told the program and the test *inputs*, never the expected outputs, the nonce or the
verdict's descriptor, which live only in the harness: a separate process the program can
neither read nor trace. Whatever comes back is the program's answer, and the harness judges
it. Standard library only.

One JSON line per message. Requests: `load` (compile the program, run it unless told not to,
report the names asked for), `call` (call a handle with arguments), `solve` (a LiveCodeBench
functional test: `Solution().<fn>(*args)` or the function `fn`), `stdio` (run the program on
one input, return what it printed). Replies: `{"ok": value}`, `{"raised": {"type", "reason"}}`,
`{"exited": code}` (SystemExit) or `{"timeout": true}`.

Values are tagged so that they round-trip exactly: JSON's null, booleans, numbers and strings
stand for themselves; `{"l": [...]}` a list, `{"t": ...}` a tuple, `{"s": ...}` a set, `{"fs": ...}`
a frozenset, `{"d": [[k, v], ...]}` a dict, `{"c": [re, im]}` a complex, `{"b": hex}` bytes, and
`{"h": n}` an object that is not plain data, kept by the runner: the harness may call it or pass it
back, never compare it by value (its `__eq__` is the program's to forge).
"""

from __future__ import annotations

import json
import os
import signal
import sys

REQUESTS, REPLIES = 3, 4
MAX_DEPTH = 200
SNIPPET = 160
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


# -- the wire format (used by both sides) -----------------------------------------------------


def encode(value, handle=None, depth: int = 0):
    """A JSON-able form of `value`; `handle(obj) -> n` keeps what is not plain data (None: refuse it)."""
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if depth > MAX_DEPTH:
        raise ValueError("a value nested too deeply to pass")
    if getattr(value, "shape", None) == () and hasattr(value, "dtype") and hasattr(value, "item"):
        return encode(value.item(), handle, depth + 1)  # a numpy scalar
    for kind, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "fs")):
        if isinstance(value, kind):
            return {tag: [encode(v, handle, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"d": [[encode(k, handle, depth + 1), encode(v, handle, depth + 1)] for k, v in value.items()]}
    if isinstance(value, complex):
        return {"c": [value.real, value.imag]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": bytes(value).hex()}
    if handle is None:
        raise TypeError(f"cannot pass a {type(value).__name__} to the program")
    return {"h": handle(value)}


def decode(data, handle=None, depth: int = 0):
    """The value `encode` wrote; `handle(n)` turns a handle back into an object."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if depth > MAX_DEPTH or not isinstance(data, dict) or len(data) != 1:
        raise ValueError("malformed value")
    ((tag, payload),) = data.items()
    if tag in ("l", "t", "s", "fs") and isinstance(payload, list):
        kind = {"l": list, "t": tuple, "s": set, "fs": frozenset}[tag]
        return kind(decode(v, handle, depth + 1) for v in payload)
    if tag == "d" and isinstance(payload, list) and all(isinstance(p, list) and len(p) == 2 for p in payload):
        return {decode(k, handle, depth + 1): decode(v, handle, depth + 1) for k, v in payload}
    if tag == "c" and isinstance(payload, list) and len(payload) == 2:
        return complex(float(payload[0]), float(payload[1]))
    if tag == "b" and isinstance(payload, str):
        return bytes.fromhex(payload)
    if tag == "h" and isinstance(payload, int) and handle is not None:
        return handle(payload)
    raise ValueError(f"malformed value (tag {tag!r})")


def send(fd: int, message: dict) -> None:
    data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


# -- the runner ---------------------------------------------------------------------------------


class TimeLimit(BaseException):
    """A test ran past its time limit (BaseException: `except Exception` must not swallow it)."""


class Runner:
    def __init__(self):
        self.module: dict = {}
        self.source = ""
        self.code = None
        self.kept: list = []  # objects handed out as handles

    def keep(self, obj) -> int:
        self.kept.append(obj)
        return len(self.kept) - 1

    def value(self, obj):
        return encode(obj, self.keep)

    def arguments(self, request: dict) -> tuple[list, dict]:
        args = [decode(a, self.kept.__getitem__) for a in request.get("args", [])]
        kwargs = {k: decode(v, self.kept.__getitem__) for k, v in (request.get("kwargs") or {}).items()}
        return args, kwargs

    # -- requests -------------------------------------------------------------------------------

    def load(self, request: dict):
        self.source = request.get("preamble", "") + request["program"]
        self.code = compile(self.source, "<program>", "exec")
        self.module = {"__name__": request.get("module", "__main__")}
        if request.get("run", True):
            with time_limit(request.get("timeout")):
                exec(self.code, self.module)
        return {name: self.describe(self.module[name]) for name in request.get("names", [])
                if name in self.module and not name.startswith("__")}

    def describe(self, obj) -> dict:
        if type(obj).__name__ == "module" and isinstance(getattr(obj, "__name__", None), str):
            return {"module": obj.__name__}
        if callable(obj):
            return {"callable": self.keep(obj)}
        return {"value": self.value(obj)}

    def call(self, request: dict):
        target = self.kept[request["handle"]]
        args, kwargs = self.arguments(request)
        return self.value(target(*args, **kwargs))

    def solve(self, request: dict):
        fn = request["fn"]
        solution = self.module.get("Solution") if request.get("solution") else None
        args, _ = self.arguments(request)
        with time_limit(request.get("timeout")):
            method = getattr(solution(), fn) if solution is not None else self.module[fn]
            result = method(*args)
        if isinstance(result, tuple):
            result = list(result)  # LiveCodeBench accepts a tuple where a list is expected
        return self.value(result)

    def stdio(self, request: dict):
        """Run the program once with `input` on fd 0; what it wrote to fd 1 is the answer."""
        real_stdout, devnull = os.dup(1), os.open(os.devnull, os.O_RDONLY)
        with open(".stdin", "w", encoding="utf-8") as f:
            f.write(request["input"])
        stdin = os.open(".stdin", os.O_RDONLY)
        os.unlink(".stdin")  # test files live only as open descriptors: the folder stays small
        capture = open(".stdout", "w+b")  # noqa: SIM115 - read back below
        os.unlink(".stdout")
        os.dup2(stdin, 0)
        os.close(stdin)
        sys.stdout.flush()
        os.dup2(capture.fileno(), 1)
        sys.stdin = open(0, "r", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        try:
            with time_limit(request.get("timeout")):
                exec(self.code, {"__name__": "__main__"})
        except SystemExit:
            pass
        finally:
            try:
                sys.stdout.flush()
            except BaseException:  # noqa: BLE001 - a closed or broken stdout is the program's problem
                pass
            os.dup2(devnull, 0)  # fds 0 and 1 taken again (a program may close them, e.g. open(0))
            os.dup2(real_stdout, 1)
            os.close(real_stdout)
            os.close(devnull)
            sys.stdout, sys.stdin = sys.__stdout__, sys.__stdin__
        capture.seek(0)
        output = capture.read().decode("utf-8", "replace")
        capture.close()
        return output

    def answer(self, request: dict) -> dict:
        try:
            return {"ok": getattr(self, request["op"])(request)}
        except TimeLimit:
            return {"timeout": True}
        except SystemExit as err:
            return {"exited": repr(err.code)}
        except (SyntaxError, ValueError) as err:
            if request["op"] == "load" and self.code is None:
                return {"raised": {"type": type(err).__name__, "reason": syntax_error(err)}}
            return {"raised": {"type": type(err).__name__, "reason": exception(err)}}
        except AssertionError as err:
            return {"raised": {"type": "AssertionError", "reason": failed_assertion(err, self.source)}}
        except BaseException as err:  # noqa: BLE001 - every way a program can die is an answer
            return {"raised": {"type": type(err).__name__, "reason": exception(err)}}


def main() -> None:
    runner = Runner()
    requests = os.fdopen(REQUESTS, "rb", buffering=1 << 16)
    for line in requests:
        reply = runner.answer(json.loads(line))
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the program may have closed or replaced it
                pass
        try:
            send(REPLIES, reply)
        except (TypeError, ValueError, RecursionError) as err:  # a value that would not serialise
            send(REPLIES, {"raised": {"type": type(err).__name__, "reason": f"the answer cannot be passed: {err}"}})
    os._exit(0)


# -- helpers ------------------------------------------------------------------------------------


class time_limit:
    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def __enter__(self):
        if self.seconds:

            def expire(signum, frame):
                raise TimeLimit()

            signal.signal(signal.SIGALRM, expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)


def syntax_error(err: Exception) -> str:
    if isinstance(err, SyntaxError):
        return short(f"SyntaxError: {err.msg} (line {err.lineno})")
    return short(f"{type(err).__name__}: {err}")


def exception(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "MemoryError: the memory limit was reached"
    return short(f"{type(err).__name__}: {err}")


def failed_assertion(err: AssertionError, source: str | None, filename: str = "<program>") -> str:
    import traceback

    lines = (source or "").splitlines()
    detail = f": {err}" if str(err) else ""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if frame.filename == filename and frame.lineno and frame.lineno <= len(lines):
            return short(f"AssertionError at line {frame.lineno}: {lines[frame.lineno - 1].strip()}{detail}")
    return short(f"AssertionError{detail}")


def short(text: str, limit: int = 2 * SNIPPET) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
