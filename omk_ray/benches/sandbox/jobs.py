"""What the sandbox is asked to run, under which limits, and what came of it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Status = Literal["pass", "fail", "timeout", "error"]
CheckKind = Literal["script", "stdio", "call"]


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Memory is per process (RLIMIT_AS): processes x memory bounds the total."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 2048
    processes: int = 16  # threads count too
    disk_mb: int = 64  # the working directory's size, and the largest file (stdout included)
    output_bytes: int = 64 * 1024  # how much of stdout and stderr comes back

    def but(self, **changes) -> "Limits":
        return replace(self, **changes)


@dataclass(frozen=True)
class Job:
    """One program and how to test it (see `checks.py` for the three kinds of check).

    `tests` are `{"input": str, "output": str}` (stdio: the text on stdin and the expected
    stdout; call: one JSON value per input line, the expected value as JSON).
    """

    program: str
    check: CheckKind = "script"
    tests: tuple[dict, ...] = ()
    fn_name: str | None = None
    test_timeout_s: float = 6.0
    limits: Limits | None = None


@dataclass
class Outcome:
    status: Status
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    cpu_s: float | None = None
    tests_passed: int | None = None
    tests_total: int | None = None
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"
