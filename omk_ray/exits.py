"""How every `omk-ray` command and every job under jobs/ ends: one set of exit codes, one error line."""

from __future__ import annotations

from enum import IntEnum
from typing import NoReturn

import typer


class ExitCode(IntEnum):
    """The exit codes of the CLI and the Ray Jobs alike (Ray Jobs marks a job FAILED on any but 0).

    OK             0  everything done as asked.
    FAILED         1  it ran, but not all of it went well: samples failed (kept as error rows) or were
                      skipped by a canary; a check found a difference (`omk-ray lock --check`, imported
                      aggregates that the run's own results do not reproduce); `fetch-data` could not
                      fetch a bench, `rescore` skipped one; `canary` or `doctor` found a problem.
    REFUSED        2  nothing started: a bad config, option or input file, a drifted lock, a grid that
                      cannot fit the cluster, a results folder another run is writing; or a run could
                      not start or go on for want of its ground: Ray could not be started or joined,
                      the results folder's disk is full (the samples stored before it filled are kept).
    CANARY_FAILED  3  (jobs) a variant failed its canary: left out of the comparison.
    REGRESSION     4  (jobs/canonical_rerun.py) a significant regression against the previous night.
    """

    OK = 0
    FAILED = 1
    REFUSED = 2
    CANARY_FAILED = 3
    REGRESSION = 4


def error(message: str) -> None:
    """`error: MESSAGE` on stderr (the message printed as it is, never read as rich markup)."""
    from rich.markup import escape

    from omk_ray.console import output_console

    output_console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def fail(message: str, code: ExitCode = ExitCode.REFUSED) -> NoReturn:
    """End a command: the error line, then exit with `code`."""
    error(message)
    raise typer.Exit(int(code))


def validation_sentence(err, options: dict[str, str]) -> str:
    """A pydantic ValidationError of options as one sentence: `--correction 'holm': must be 'grid', 'variant'
    or 'none'` (`options`: field name -> the option the user typed; no validator jargon, no URL)."""
    parts = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        option = options.get(field, field)
        message = e["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        value = e.get("input")
        shown = f" {value!r}" if isinstance(value, (str, int, float)) and e["type"] != "value_error" else ""
        parts.append(f"{option}{shown}: {message}")
    return "; ".join(parts)
