"""Progress off a terminal (Ray Jobs logs, CI, nohup, `> log`): a plain line at the start, every `every_s`
seconds and at the end; an ETA learned from the work's lengths, checked against a simulated run."""

from __future__ import annotations

import io
import random
import re
from types import SimpleNamespace

from rich.console import Console

from omk_ray.console import StepLines, report_count, report_step, step_lines
from omk_ray.farm.progress import FarmProgress, Work, eta_s


def slot(name: str, variant: str, state: str, samples: int = 0):
    return SimpleNamespace(name=f"omk-run-{name}", variant=variant, state=state, samples=samples)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_off_a_terminal_say_phase_samples_rate_engines_and_elapsed():
    out = io.StringIO()
    console = Console(file=io.StringIO(), force_terminal=False)
    clock = Clock()
    with FarmProgress(200, console=console, every_s=0.0, stream=out, clock_fn=clock) as progress:
        clock.t = 12
        progress.generated(1200)
        progress.advance(samples=48, failed=2)
        progress.show([slot("a-1", "a", "3 in flight", 48), slot("b-2", "b", "loading")])
        progress.advance(skipped=10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # the start, one from show (every_s=0), the end
    assert lines[0] == ("[omk-ray] run: samples 0/200 (0%)  0.0 samples/s  0 tok/s  engines busy 0/0  "
                        "elapsed 0:00:00")
    assert re.fullmatch(r"\[omk-ray\] run: samples 50/200 \(25%\)  4\.0 samples/s  100 tok/s  failed 2  "
                        r"engines busy 1/2, 1 loading  elapsed 0:00:12", lines[1]), lines[1]
    assert "samples 60/200 (30%)" in lines[2] and "skipped 10 (canary)" in lines[2]
    assert "ETA" not in out.getvalue()  # an engine loading, the first samples just done: no ETA yet
    assert console.file.getvalue() == ""  # no live display off a terminal


def test_the_line_shows_the_stage_judged_and_the_arms_stopped():
    out = io.StringIO()
    console = Console(file=io.StringIO(), force_terminal=False)
    with FarmProgress(100, console=console, every_s=0.0, stream=out, clock_fn=Clock()) as progress:
        progress.advance(samples=40, skipped=30)
        progress.look = "25%"
        progress.stopped("geomean", "canary")
        progress.stopped("mean", "25%")
    last = out.getvalue().splitlines()[-1]
    assert "skipped 30 (canary, stages)  stage 25%  stopped geomean@canary, mean@25%" in last, last


def test_no_line_before_every_s_and_none_when_disabled():
    out = io.StringIO()
    console = Console(file=io.StringIO(), force_terminal=False)
    with FarmProgress(10, console=console, every_s=3600, stream=out, phase="canary") as progress:
        progress.advance(samples=5)
        progress.show([slot("a-1", "a", "idle", 5)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "[omk-ray] canary: samples 5/10 (50%)" in lines[1]  # the start and the end only
    quiet = io.StringIO()
    with FarmProgress(10, console=console, enabled=False, every_s=0.0, stream=quiet) as progress:
        progress.advance(samples=5)
        progress.show([slot("a-1", "a", "idle", 5)])
    assert quiet.getvalue() == ""


def simulated_run(seed: int, samples: int = 400, engines: int = 4, tok_s: float = 50.0, load_s: float = 20.0):
    """A run of long-tailed samples, longest-expected first, on `engines` engines of `tok_s` tokens per
    second each that load for `load_s` first: the plan's estimates, (finish time, tokens) per sample in
    finishing order, the run's end."""
    rng = random.Random(seed)
    expected = sorted((rng.lognormvariate(4, 1) for _ in range(samples)), reverse=True)
    bias = rng.uniform(0.6, 1.5)  # the plan misjudges every length by this much ...
    actual = [max(1, int(e * bias * rng.uniform(0.5, 1.5))) for e in expected]  # ... and each one a bit more
    free = [load_s] * engines
    finished = []
    for tokens in actual:  # each sample goes to the engine free first
        i = min(range(engines), key=free.__getitem__)
        free[i] += tokens / tok_s
        finished.append((free[i], tokens))
    finished.sort()
    return expected, finished, max(free)


def test_the_eta_of_a_simulated_run_is_hidden_early_then_within_a_third_of_the_truth():
    for seed in range(8):
        expected, finished, end = simulated_run(seed)
        clock = Clock()
        progress = FarmProgress(len(finished), enabled=False, est_lengths=expected, clock_fn=clock)
        shown = []
        for done, (t, tokens) in enumerate(finished, 1):
            clock.t = t
            progress.generated(tokens)
            progress.advance(samples=1)
            progress.show([slot("a-1", "a", "4 in flight")])
            eta = eta_s(progress.work())
            if done < 20:
                assert eta is None, (seed, done)  # fewer than 5% of the samples done: nothing shown
            elif done < len(finished):
                shown.append((eta, end - t))
        assert all(eta is not None for eta, _ in shown)
        for eta, truth in shown:
            if truth > 10:  # the last seconds' remainder is one sample's
                assert 0.67 * truth <= eta <= 1.5 * truth, (seed, eta, truth)
        assert progress._eta() == ""  # all done
        assert eta_s(progress.work()) == 0


def test_no_eta_while_an_engine_loads_or_before_steady_generation():
    base = dict(total=100, done=50, tokens=6000, est_tokens=10000, est_done=6000, generating_s=30.0)
    assert eta_s(Work(**base)) == 4000 / (6000 / 30)  # the estimates were right: 4000 tokens left at 200 tok/s
    assert eta_s(Work(**{**base, "tokens": 12000})) == 4000 * (12000 + 500) / (6000 + 500) / (12000 / 30)
    assert eta_s(Work(**{**base, "loading": 1})) is None
    assert eta_s(Work(**{**base, "generating_s": 1.0})) is None
    assert eta_s(Work(**{**base, "done": 4})) is None


def test_step_lines_print_each_step_and_throttle_counts():
    out = io.StringIO()
    clock = Clock()
    lines = StepLines("build max", stream=out, every_s=5.0, clock_fn=clock)
    lines.step("profiling", "48 prompts")
    for done in range(0, 49, 8):
        clock.t += 1
        lines.count("profiling prompts", done, 48)
    assert out.getvalue().splitlines() == [
        "[omk-ray] build max: profiling 48 prompts  elapsed 0:00:00",
        "[omk-ray] build max: profiling prompts 0/48 (0%)  elapsed 0:00:01",
        "[omk-ray] build max: profiling prompts 40/48 (83%)  elapsed 0:00:06",
        "[omk-ray] build max: profiling prompts 48/48 (100%)  elapsed 0:00:07",
    ]


def test_reports_print_only_inside_step_lines():
    out = io.StringIO()
    report_step("nobody listens")
    with step_lines("build toy-q8", stream=out):
        report_step("gguf convert", "convert_hf_to_gguf.py")
        report_count("tensors written", 31, 31)
    report_count("tensors written", 1, 2)
    assert [line.split("  elapsed")[0] for line in out.getvalue().splitlines()] == [
        "[omk-ray] build toy-q8: gguf convert convert_hf_to_gguf.py",
        "[omk-ray] build toy-q8: tensors written 31/31 (100%)",
        "[omk-ray] build toy-q8: done",
    ]
