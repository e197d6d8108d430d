"""Progress of a run: samples done / total, tokens per second, what each engine is doing.

On a terminal a live bar and an engine table (rich); anywhere else (Ray Jobs logs, CI, nohup) a
plain line every `every_s` seconds, so a long run is never silent.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class FarmProgress:
    def __init__(self, total_samples: int, console: Console | None = None, enabled: bool = True,
                 every_s: float = 10.0, stream=None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = total_samples
        self.live_mode = enabled and self.console.is_terminal
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.started = time.monotonic()
        self.last_line = self.started
        self.samples = self.failed = self.skipped = self.tokens = 0
        self.slots: list = []
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
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "FarmProgress":
        if self.live_mode:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live_mode:
            self.slots = []
            self.live.update(self._render())
            self.live.__exit__(*exc)
        elif self.enabled:
            self._line()

    def generated(self, tokens: int) -> None:
        self.tokens += tokens

    def advance(self, samples: int = 0, failed: int = 0, skipped: int = 0) -> None:
        self.samples += samples
        self.failed += failed
        self.skipped += skipped

    def show(self, slots: list) -> None:
        self.slots = [(s.name.split("-", 2)[-1], s.variant, s.state, s.samples) for s in slots]
        if self.live_mode:
            self.bar.update(self.task, completed=self.samples + self.failed + self.skipped, rate=self._rate())
            self.live.update(self._render())
        elif self.enabled and time.monotonic() - self.last_line >= self.every_s:
            self._line()

    def _rate(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        text = f"{self.samples / elapsed:.1f} samples/s  {self.tokens / elapsed:,.0f} tok/s"
        if self.failed:
            text += f"  failed {self.failed}"
        if self.skipped:
            text += f"  skipped {self.skipped} (canary)"
        return text

    def _line(self) -> None:
        self.last_line = time.monotonic()
        done = self.samples + self.failed + self.skipped
        busy = sum(1 for *_, state, _ in self.slots if "in flight" in state)
        loading = sum(1 for *_, state, _ in self.slots if state == "loading")
        share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
        print(f"[omk-ray] samples {done}/{self.total}{share}  {self._rate()}  engines busy {busy}/{len(self.slots)}"
              + (f", {loading} loading" if loading else "")
              + f"  elapsed {time.monotonic() - self.started:.0f}s", file=self.stream, flush=True)

    def _render(self):
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in ("engine", "variant", "state", "samples"):
            table.add_column(column)
        for name, variant, state, samples in self.slots:
            table.add_row(name, variant, state, str(samples))
        return Group(self.bar, table) if self.slots else self.bar
