"""What the sandbox is asked to run, under which limits, and what came of it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Status = Literal["pass", "fail", "timeout", "error"]
SETUP_FAILED = "sandbox setup failed"  # how the reason of an outcome starts when no program ran
CheckKind = Literal["script", "stdio", "call"]


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Memory: `memory_mb` for the whole program where a cgroup can be made (see
    memory.py), else per process (RLIMIT_AS), `processes x memory_mb` in all; `Outcome.memory_bound` says which."""

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 2048
    processes: int = 16  # threads count too
    disk_mb: int = 64  # the working directory's size, and the largest file (stdout included)
    output_bytes: int = 64 * 1024  # how much of stdout and stderr comes back

    def but(self, **changes) -> "Limits":
        return replace(self, **changes)


@dataclass(frozen=True)
class Program:
    """One program and how to test it (see `checks.py` for the three kinds of check).

    `test_code` (script): the tests, run outside the program's process against its names
    (HumanEval's tests and `check(entry_point)`, MBPP's asserts); without it the program is
    its own test, which only a trusted program can be. `helpers` (script): the problem's own code
    (HumanEval's prompt), run in the harness before the tests so that a helper the tests call
    (`poly`, `encode_cyclic`) is the problem's, whatever the program redefined; `entry_point`:
    then the only name the tests take from the program. Without it they take every name they use
    that is neither a builtin nor defined by `helpers`. `tests` (stdio, call) are
    `{"input": str, "output": str}` (stdio: the text on stdin and the expected stdout; call:
    one JSON value per input line, the expected value as JSON).
    """

    program: str
    check: CheckKind = "script"
    test_code: str | None = None
    tests: tuple[dict, ...] = ()
    fn_name: str | None = None
    helpers: str | None = None
    entry_point: str | None = None
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
    memory_bound: str = ""  # "cgroup": memory_limit_mb for the whole program; "rlimits": memory_mb per process
    memory_limit_mb: int | None = None  # the most the whole program could hold
    memory_peak_mb: float | None = None  # the cgroup's own peak accounting (None without a cgroup)
    refused: bool = False  # the isolation level could not be set up here at all (e.g. unshare forbidden)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def setup_failed(self) -> bool:
        """The sandbox could not start the program: the farm's failure, not the program's."""
        return self.status == "error" and self.reason.startswith(SETUP_FAILED)
