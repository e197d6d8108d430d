"""Live progress of a run: units and samples done, samples/s, and what each engine is doing."""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class FarmProgress:
    def __init__(self, total_samples: int, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.started = time.monotonic()
        self.samples = self.units = self.failed = self.skipped = self.tokens = 0
        self.bar = Progress(
            TextColumn("[bold]samples"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task("samples", total=total_samples, rate="")
        self.slots: list = []
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "FarmProgress":
        if self.enabled:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.slots = []
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def advance(self, samples: int = 0, units: int = 0, tokens: int = 0, failed: int = 0, skipped: int = 0) -> None:
        self.samples += samples
        self.skipped += skipped
        self.units += units
        self.tokens += tokens
        self.failed += failed
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = f"{self.samples / elapsed:.1f} samples/s  {self.units} units  {self.tokens:,} tokens"
        if self.failed:
            rate += f"  [red]failed {self.failed}"
        if self.skipped:
            rate += f"  [yellow]skipped {self.skipped} (canary)"
        self.bar.update(self.task, completed=self.samples + self.failed + self.skipped, rate=rate)
        if self.enabled:
            self.live.update(self._render())

    def show(self, slots: list) -> None:
        self.slots = [(s.name.split("-", 2)[-1], s.variant, s.state, s.samples) for s in slots]
        if self.enabled:
            self.live.update(self._render())

    def _render(self):
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in ("engine", "variant", "state", "samples"):
            table.add_column(column)
        for name, variant, state, samples in self.slots:
            table.add_row(name, variant, state, str(samples))
        return Group(self.bar, table) if self.slots else self.bar
