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
