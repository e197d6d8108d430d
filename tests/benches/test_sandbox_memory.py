"""A memory limit for the whole program (all its processes), and defaults the host can hold."""

from __future__ import annotations

import pytest

from omk_ray.benches import make_bench
from omk_ray.benches.code_bench import MEMORY_CGROUP_KEY, MEMORY_LIMIT_KEY, to_score
from omk_ray.benches.sandbox import Limits, Program, Sandbox
from omk_ray.benches.sandbox.memory import HOST_SHARE, MIN_MEMORY_MB, ProgramCgroup, bounded_memory_mb, cgroups_here
from omk_ray.config import BenchSpec

CGROUPS = cgroups_here()
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason="no memory cgroup can be made on this node")

# 15 children, each touching 200 MB and holding it until all have: 3 GB under a 256 MB limit.
BOMB = """
import os, time
def f(x):
    kids = []
    for _ in range(15):
        pid = os.fork()
        if pid == 0:
            try:
                block = bytearray(200 * 2**20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(3)
            finally:
                os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    return x + 1
"""
LIMITS = Limits(wall_s=30, cpu_s=30, memory_mb=256, processes=32)


@needs_cgroups
@pytest.mark.parametrize("isolation", ["namespaces", "rlimits"])
def test_a_bomb_across_processes_ends_as_a_memory_failure_within_the_bound(isolation):
    outcome = Sandbox(LIMITS, isolation=isolation).run(Program(program=BOMB, test_code="assert f(1) == 2"))
    assert outcome.status == "error"
    assert outcome.reason.startswith("memory limit of 256 MiB for the whole program exceeded")
    assert (outcome.memory_bound, outcome.memory_limit_mb) == ("cgroup", 256)
    assert outcome.memory_peak_mb is not None and outcome.memory_peak_mb <= 256  # the cgroup's own accounting
    score = to_score(outcome, "")
    assert (score.correct, score.metrics[MEMORY_LIMIT_KEY], score.metrics[MEMORY_CGROUP_KEY]) == (False, 256.0, 1.0)


@needs_cgroups
def test_a_program_within_its_memory_passes_and_its_cgroup_is_removed(tmp_path):
    small = BOMB.replace("range(15)", "range(2)").replace("200 * 2**20", "20 * 2**20")
    outcome = Sandbox(LIMITS).run(Program(program=small, test_code="assert f(1) == 2"))
    assert (outcome.status, outcome.memory_bound, outcome.memory_limit_mb) == ("pass", "cgroup", 256)
    assert 40 <= outcome.memory_peak_mb <= 256
    group = ProgramCgroup.create(64)
    parent = group.path.rsplit("/", 1)[0]
    group.remove()
    import os

    assert [n for n in os.listdir(parent) if n.startswith("omk-sandbox-")] == []


def test_without_a_cgroup_the_bound_is_per_process_times_processes():
    """The fallback (no cgroup on the node): RLIMIT_AS per process, RLIMIT_NPROC processes; recorded."""
    outcome = Sandbox(LIMITS, cgroups=False).run(Program(program="x = bytearray(300 * 2**20)"))
    assert (outcome.status, outcome.reason) == ("error", "MemoryError: the memory limit was reached")
    assert (outcome.memory_bound, outcome.memory_limit_mb, outcome.memory_peak_mb) == ("rlimits", 256 * 32, None)
    assert to_score(outcome, "").metrics[MEMORY_CGROUP_KEY] == 0.0


def test_default_memory_is_bounded_by_the_host():
    # the old defaults: 2048 MB x 16 processes x 4 programs = 128 GiB, on a 24 GiB host
    assert bounded_memory_mb(2048, 4, 16, 24 * 1024, whole_program=False) == 192  # 4 x 16 x 192 MB = 12 GiB
    assert bounded_memory_mb(2048, 4, 16, 24 * 1024, whole_program=True) == 2048  # 4 x 2 GiB = 8 GiB
    assert bounded_memory_mb(2048, 16, 16, 24 * 1024, whole_program=True) == 768
    assert bounded_memory_mb(2048, 2, 16, 1024 * 1024, whole_program=False) == 2048  # a big host: as asked
    assert bounded_memory_mb(2048, 64, 16, 4 * 1024, whole_program=False) == MIN_MEMORY_MB  # never below the floor
    for workers, processes, host, whole in ((4, 16, 24 * 1024, False), (8, 16, 64 * 1024, True), (3, 7, 5000, False)):
        memory = bounded_memory_mb(2048, workers, processes, host, whole)
        assert memory * workers * (1 if whole else processes) <= host * HOST_SHARE


def test_a_bench_lowers_only_the_default_memory(monkeypatch):
    from omk_ray.benches import code_bench

    monkeypatch.setattr(code_bench, "host_memory_mb", lambda: 24 * 1024)
    monkeypatch.setattr(code_bench, "cgroups_here", lambda: False)
    default = make_bench(BenchSpec(name="he", kind="humaneval", options={"workers": 4}))
    assert default.sandbox.limits.memory_mb == 192
    asked = make_bench(BenchSpec(name="he", kind="humaneval", options={"workers": 4, "memory_mb": 1024}))
    assert asked.sandbox.limits.memory_mb == 1024  # what the user wrote stands (and is recorded per row)
