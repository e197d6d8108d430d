"""Progress of a run: samples done / total, tokens per second, what each engine is doing, an ETA.

On a terminal a live bar and an engine table (rich); anywhere else (Ray Jobs logs, CI, nohup,
`> log`) a plain line on stdout at the start, every `every_s` seconds and at the end:

    [omk-ray] run: samples 120/400 (30%)  3.1 samples/s  410 tok/s  engines busy 2/2  elapsed 0:00:39  ETA 0:01:31

The ETA (`eta_s`) is learned from the work's lengths: the tokens still to generate (the plan's
estimate of the samples left, scaled by how the finished samples' real lengths compare with their
estimates) over the token rate since the first sample finished. It is shown only once it means something: enough samples
done, a few seconds of steady generation, and no engine still loading.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omk_ray.console import clock

PRIOR_SAMPLES = 5  # the plan's estimates count as this many samples' worth of evidence
MIN_DONE = 10  # samples finished before an ETA is shown ...
MIN_SHARE = 0.05  # ... and this share of the run's samples ...
MIN_STEADY_S = 3.0  # ... and seconds of generation since the first one finished


@dataclass
class Work:
    """What is known of a run at one moment (all counts since the run started)."""

    total: int  # samples to generate
    done: int  # samples finished (failed and skipped included)
    tokens: int  # completion tokens of the finished samples
    est_tokens: float  # the plan's estimate of all `total` samples' completion tokens (0: unknown)
    est_done: float  # the plan's estimate of the finished samples' tokens
    generating_s: float  # seconds since the first sample finished
    loading: int = 0  # engines still loading


def eta_s(work: Work) -> float | None:
    """Seconds left, or None while an estimate would mislead (too early, engines loading).

    The tokens left are the plan's estimate of the samples not finished, scaled by how far the
    finished ones came out from their own estimates (shrunk toward 1 while few are done); the rate
    is the tokens finished per second of generation."""
    left = work.total - work.done
    if left <= 0:
        return 0.0
    if (work.done < max(MIN_DONE, MIN_SHARE * work.total) or work.generating_s < MIN_STEADY_S
            or work.loading or work.tokens <= 0):
        return None
    if work.est_tokens > 0:
        prior = PRIOR_SAMPLES * work.est_tokens / work.total
        scale = (work.tokens + prior) / (work.est_done + prior)
        tokens_left = max(work.est_tokens - work.est_done, 0.0) * scale
    else:
        tokens_left = left * work.tokens / work.done
    return tokens_left / (work.tokens / work.generating_s)


class FarmProgress:
    def __init__(self, total_samples: int, console: Console | None = None, enabled: bool = True,
                 every_s: float = 10.0, stream=None, est_lengths: list[float] | None = None, phase: str = "run",
                 clock_fn=time.monotonic):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.total = total_samples
        # the plan's estimate of each sample's tokens; samples go out longest-expected first, so the
        # first `done` of them, longest first, stand for the finished ones
        self.est_prefix = list(itertools.accumulate(sorted(est_lengths or [], reverse=True), initial=0.0))
        self.phase = phase
        self.live_mode = enabled and self.console.is_terminal
        self.stream = stream
        self.every_s = every_s
        self.now = clock_fn
        self.started = self.now()
        self.first_done: float | None = None
        self.last_line = self.started
        self.samples = self.failed = self.skipped = self.tokens = 0
        self.stops: dict[str, str] = {}  # arm -> the look `farm.stages` stopped it at
        self.look = ""  # the last look `farm.stages` judged
        self.slots: list = []
        self.bar = Progress(
            TextColumn(f"[bold]{phase} samples"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
        )
        self.task = self.bar.add_task("samples", total=total_samples, rate="", eta="")
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> "FarmProgress":
        if self.live_mode:
            self.live.__enter__()
        elif self.enabled:
            self._line()
        return self

    def __exit__(self, *exc) -> None:
        if self.live_mode:
            self.slots = []
            self.live.update(self._render())
            self.live.__exit__(*exc)
        elif self.enabled:
            self._line()

    @property
    def done(self) -> int:
        return self.samples + self.failed + self.skipped

    def generated(self, tokens: int) -> None:
        self.tokens += tokens

    def advance(self, samples: int = 0, failed: int = 0, skipped: int = 0) -> None:
        self.samples += samples
        self.failed += failed
        self.skipped += skipped
        if self.first_done is None and self.done:
            self.first_done = self.now()

    def stopped(self, arm: str, look: str) -> None:
        self.stops[arm] = look

    def show(self, slots: list) -> None:
        self.slots = [(s.name.split("-", 2)[-1], s.variant, s.state, s.samples) for s in slots]
        if self.live_mode:
            self.bar.update(self.task, completed=self.done, rate=self._rate(), eta=self._eta())
            self.live.update(self._render())
        elif self.enabled and self.now() - self.last_line >= self.every_s:
            self._line()

    def work(self) -> Work:
        loading = sum(1 for *_, state, _ in self.slots if state == "loading")
        generating = self.now() - self.first_done if self.first_done is not None else 0.0
        known = min(self.done, len(self.est_prefix) - 1)
        return Work(self.total, self.done, self.tokens, self.est_prefix[-1], self.est_prefix[known], generating, loading)

    def _eta(self) -> str:
        left = eta_s(self.work())
        return f"ETA {clock(left)}" if left is not None and self.done < self.total else ""

    def _rate(self) -> str:
        elapsed = max(self.now() - self.started, 1e-6)
        text = f"{self.samples / elapsed:.1f} samples/s  {self.tokens / elapsed:,.0f} tok/s"
        if self.failed:
            text += f"  failed {self.failed}"
        if self.skipped:
            text += f"  skipped {self.skipped} ({'canary, stages' if self.stops else 'canary'})"
        if self.look:
            text += f"  stage {self.look}"
        if self.stops:
            text += "  stopped " + ", ".join(f"{arm}@{look}" for arm, look in sorted(self.stops.items()))
        return text

    def _line(self) -> None:
        self.last_line = self.now()
        busy = sum(1 for *_, state, _ in self.slots if "in flight" in state)
        loading = sum(1 for *_, state, _ in self.slots if state == "loading")
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = self._eta()
        print(f"[omk-ray] {self.phase}: samples {self.done}/{self.total}{share}  {self._rate()}  "
              f"engines busy {busy}/{len(self.slots)}" + (f", {loading} loading" if loading else "")
              + f"  elapsed {clock(self.now() - self.started)}" + (f"  {eta}" if eta else ""),
              file=self.stream or sys.stdout, flush=True)

    def _render(self):
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in ("engine", "variant", "state", "samples"):
            table.add_column(column)
        for name, variant, state, samples in self.slots:
            table.add_row(name, variant, state, str(samples))
        return Group(self.bar, table) if self.slots else self.bar
