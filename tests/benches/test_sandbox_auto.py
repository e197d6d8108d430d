"""`isolation: auto`, the code benches' default, where the node forbids namespaces.

Namespaces are made unavailable from outside the code under test: the test runs an ordinary
omk-ray process (the venv's python, this checkout, no option or flag of ours) under
`setpriv --bounding-set -sys_admin`, which drops CAP_SYS_ADMIN from the capability bounding set
of that process and everything it starts. Root without CAP_SYS_ADMIN is refused
unshare(CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWNET|...) by the kernel with EPERM, as in a Docker
container started without --privileged. Inside, the sandbox must find that out itself, run the
programs with resource limits only, say so up front (probe, plan) and on every row, and still
give the right verdicts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omk_ray.benches.sandbox import Program, Sandbox
from omk_ray.benches.sandbox.pool import probe_isolation

ROOT = Path(__file__).parents[2]
CHILD = textwrap.dedent("""
    import json, sys
    from omk_ray.benches import make_bench
    from omk_ray.benches.sandbox.pool import probe_isolation
    from omk_ray.config import BenchSpec, load_grid
    from omk_ray.engines.base import Completion
    from omk_ray.farm.preflight import sandbox_here
    from omk_ray.farm.rows import score_all

    probe = probe_isolation()
    bench = make_bench(BenchSpec(name="he", kind="humaneval"))  # no isolation option: the default
    doc = bench.docs()[0]
    right = '''def has_close_elements(numbers, threshold):
        return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])'''
    wrong = "def has_close_elements(numbers, threshold):\\n    return False"
    answers = [Completion(text=f"```python\\n{code}\\n```") for code in (right, wrong)]
    scores = [s for s, _ in score_all(bench, [(doc, a) for a in answers])]
    plan = sandbox_here(load_grid(sys.argv[1]))
    print(json.dumps({"probe": probe, "option": bench.options.isolation,
                      "scores": [[s.correct, s.isolation, s.detail] for s in scores],
                      "plan": [plan.status, plan.detail]}))
""")


def restricted(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--bounding-set", "-sys_admin", sys.executable, *argv], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT), **kw)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to take CAP_SYS_ADMIN away from a process")
def test_auto_falls_back_to_rlimits_says_so_and_judges_right(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("variants: [{name: a, model: org/m, engine: echo}]\nbenches: [{name: he, kind: humaneval}]\n")
    done = restricted(["-c", CHILD, str(grid)])
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["probe"] == ["rlimits", "namespaces refused (unshare: Operation not permitted): resource limits only"]
    assert out["option"] == "auto"
    (ok, ok_level, _), (bad, bad_level, why) = out["scores"]
    assert (ok, ok_level) == (True, "rlimits")
    assert (bad, bad_level) == (False, "rlimits") and why.startswith("AssertionError")
    assert out["plan"][0] == "warn" and out["plan"][1].startswith("rlimits only for he (isolation: auto)")
    assert "Linux namespaces are not available here" in done.stderr  # the run's log says it too

    plan = restricted(["-m", "omk_ray", "plan", str(grid)])  # `omk-ray plan` says it up front
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "code sandbox on this machine: warn rlimits only for he" in " ".join(plan.stdout.split())


def test_auto_uses_namespaces_where_they_work():
    mode, _ = probe_isolation()
    outcome = Sandbox().run(Program(program="pass"))  # auto, the default
    assert outcome.passed and outcome.isolation == mode


def test_the_card_notes_programs_that_ran_with_rlimits_only(tmp_path):
    from helpers.samples import bench_rows, write_store

    from omk_ray.analysis.card import to_card
    from omk_ray.analysis.compare import CompareOptions, compare

    outcomes = [True, False, True, True]
    rows = (bench_rows("base", "he", outcomes, isolation="namespaces") + bench_rows("v4", "he", outcomes, isolation="rlimits")
            + bench_rows("base", "gsm8k", outcomes) + bench_rows("v4", "gsm8k", outcomes))
    write_store(tmp_path, rows)
    card = to_card(compare(tmp_path, CompareOptions(baseline="base", resamples=200)))
    notes = card[card.index("### Notes"):]
    assert "he: programs of v4 ran with resource limits only (sandbox `rlimits`" in notes
    assert "gsm8k: programs" not in notes and "base ran with" not in notes
