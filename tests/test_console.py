"""The CLI's consoles: piped output is never wrapped or cut; on a narrow terminal, table cells fold."""

from __future__ import annotations

import io

from omk_ray.console import OutputConsole, output_console, print_table

LONG_PATH = "/tmp/" + "a-folder-with-a-long-name/" * 8 + "part-u2-0123abcd.parquet"


def cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if "│" in line]


def test_piped_output_keeps_every_path_and_line_whole_whatever_columns_says(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    piped = output_console()
    piped.file = io.StringIO()
    print_table([{"file": LONG_PATH, "problem": "not a readable Parquet shard", "rows": 3}], title="unreadable",
                console=piped)
    piped.print(f"unreadable {LONG_PATH}: not valid JSON (Unterminated string starting at: line 1 column 49)")
    out = piped.file.getvalue()
    assert not piped.is_terminal and piped.width > 1000
    assert [LONG_PATH, "not a readable Parquet shard", "3"] in cells(out), out
    assert f"unreadable {LONG_PATH}: not valid JSON (Unterminated string starting at: line 1 column 49)" in out.splitlines()


def test_a_narrow_terminal_folds_a_path_instead_of_cutting_it():
    terminal = OutputConsole(file=io.StringIO(), force_terminal=True, width=40, color_system=None, soft_wrap=True)
    print_table([{"file": LONG_PATH, "rows": 3}], console=terminal)
    out = terminal.file.getvalue()
    assert terminal.width == 40 and max(len(line) for line in out.splitlines()) <= 40
    assert "…" not in out and "".join(row[0] for row in cells(out)) == LONG_PATH, out


def test_a_table_prints_cells_as_they_are_and_says_when_it_is_empty():
    out = OutputConsole(file=io.StringIO(), soft_wrap=True)
    print_table([{"bench": "[red]gsm8k[/]", "n": 3}], title="t", console=out)
    print_table([], title="runs", console=out)
    print_table([], title="quiet", console=out, empty=False)
    text = out.file.getvalue()
    assert ["[red]gsm8k[/]", "3"] in cells(text), text
    assert "runs: (empty)" in text.splitlines() and "quiet" not in text
