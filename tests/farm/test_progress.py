"""Progress off a terminal (Ray Jobs logs, CI, nohup): a plain line every `every_s` seconds and one at the end."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rich.console import Console

from omk_ray.farm.progress import FarmProgress


def slot(name: str, variant: str, state: str, samples: int = 0):
    return SimpleNamespace(name=f"omk-run-{name}", variant=variant, state=state, samples=samples)


def test_plain_lines_off_a_terminal_say_samples_rate_and_engines():
    out = io.StringIO()
    console = Console(file=io.StringIO(), force_terminal=False)
    with FarmProgress(200, console=console, every_s=0.0, stream=out) as progress:
        progress.generated(1200)
        progress.advance(samples=48, failed=2)
        progress.show([slot("a-1", "a", "3 in flight", 48), slot("b-2", "b", "loading")])
        progress.advance(skipped=10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one from show (every_s=0), one at the end
    assert re.fullmatch(r"\[omk-ray\] samples 50/200 \(25%\)  [\d.]+ samples/s  [\d,]+ tok/s  failed 2  "
                        r"engines busy 1/2, 1 loading  elapsed \d+s", lines[0]), lines[0]
    assert "samples 60/200 (30%)" in lines[1] and "skipped 10 (canary)" in lines[1]
    assert console.file.getvalue() == ""  # no live display off a terminal


def test_no_line_before_every_s_and_none_when_disabled():
    out = io.StringIO()
    console = Console(file=io.StringIO(), force_terminal=False)
    with FarmProgress(10, console=console, every_s=3600, stream=out) as progress:
        progress.advance(samples=5)
        progress.show([slot("a-1", "a", "idle", 5)])
    assert out.getvalue().count("\n") == 1 and "samples 5/10 (50%)" in out.getvalue()  # only the final line
    quiet = io.StringIO()
    with FarmProgress(10, console=console, enabled=False, every_s=0.0, stream=quiet) as progress:
        progress.advance(samples=5)
        progress.show([slot("a-1", "a", "idle", 5)])
    assert quiet.getvalue() == ""
