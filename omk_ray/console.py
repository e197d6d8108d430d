"""The rich consoles the CLI prints through.

On a terminal, its width: long lines are left to the terminal to wrap (`soft_wrap`) and table
cells fold instead of being cut. Piped or redirected (a file, `| less`, a Ray Job's log, a test),
unlimited width whatever `COLUMNS` says: no line is wrapped and no table cell is cut, so paths and
metric names come out whole, on one line.
"""

from __future__ import annotations

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
