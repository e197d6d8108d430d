"""One memory limit for a whole program (all its processes together), and defaults the host can hold.

Where the node lets the farm create a memory cgroup (v2 `memory.max`, else v1
`memory.limit_in_bytes`, as a child of the farm's own cgroup), every program gets its own: the
supervisor joins it before it forks anything, so the program's processes, its tmpfs files and its
page cache are charged there together, and the kernel's OOM killer acts inside it only. Its
accounting (peak usage, OOM kills) says what happened. Elsewhere the bound is per process
(RLIMIT_AS) times the process count (RLIMIT_NPROC): `memory_mb x processes`.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass

MB = 1 << 20
HOST_SHARE = 0.5  # the most of the host's memory that the programs running at once may hold together
MIN_MEMORY_MB = 64


def bounded_memory_mb(memory_mb: int, workers: int, processes: int, host_mb: int, whole_program: bool) -> int:
    """`memory_mb`, lowered so that `workers` programs at once stay within HOST_SHARE of the host.

    A program's bound is `memory_mb` with a cgroup (`whole_program`), else `memory_mb x processes`.
    """
    per_program = 1 if whole_program else processes
    fits = int(host_mb * HOST_SHARE) // max(1, workers * per_program)
    return max(MIN_MEMORY_MB, min(memory_mb, fits))


def host_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MB


def cgroups_here() -> bool:
    """Whether a program gets a memory cgroup on this node (one is made and removed to find out)."""
    group = ProgramCgroup.create(MIN_MEMORY_MB)
    if group is None:
        return False
    group.remove()
    return True


@dataclass
class Usage:
    peak_mb: float | None
    oom_kills: int


class ProgramCgroup:
    """A fresh memory cgroup for one program: `procs` is the file its supervisor writes its pid to."""

    def __init__(self, path: str, version: int):
        self.path, self.version = path, version
        self.procs = os.path.join(path, "cgroup.procs")

    @classmethod
    def create(cls, limit_mb: int) -> "ProgramCgroup | None":
        """A cgroup holding at most `limit_mb` (None where the node allows none)."""
        for version, parent in _parents():
            path = os.path.join(parent, f"omk-sandbox-{uuid.uuid4().hex[:12]}")
            try:
                os.mkdir(path)
            except OSError:
                continue
            group = cls(path, version)
            try:
                group._limit(limit_mb * MB)
                return group
            except OSError:
                group.remove()
        return None

    def _limit(self, limit: int) -> None:
        if self.version == 2:
            _write(os.path.join(self.path, "memory.max"), str(limit))
            try:
                _write(os.path.join(self.path, "memory.swap.max"), "0")
            except OSError:
                pass
            return
        _write(os.path.join(self.path, "memory.limit_in_bytes"), str(limit))
        try:  # memory and swap together: no swapping past the limit (absent without swap accounting)
            _write(os.path.join(self.path, "memory.memsw.limit_in_bytes"), str(limit))
        except OSError:
            pass

    def usage(self) -> Usage:
        if self.version == 2:
            peak = _read_int(os.path.join(self.path, "memory.peak"))
            events = _keyed(os.path.join(self.path, "memory.events"))
            return Usage(None if peak is None else round(peak / MB, 1), events.get("oom_kill", 0))
        peak = _read_int(os.path.join(self.path, "memory.max_usage_in_bytes"))
        oom = _keyed(os.path.join(self.path, "memory.oom_control"))
        kills = oom.get("oom_kill")
        if kills is None:  # kernels before 4.13: hitting the limit (failcnt) is the best sign there is
            kills = 1 if (_read_int(os.path.join(self.path, "memory.failcnt")) or 0) > 0 else 0
        return Usage(None if peak is None else round(peak / MB, 1), kills)

    def kill(self) -> None:
        """Kill every process still in it (nothing of a program outlives it)."""
        try:
            pids = [int(p) for p in _read(self.procs).split()]
        except ValueError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self) -> None:
        """Kill what is left in it, then delete it."""
        for _ in range(50):
            self.kill()
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _parents() -> list[tuple[int, str]]:
    """(version, the farm's own memory cgroup folder), v2 first, for each hierarchy mounted here."""
    try:
        own = dict(_own_cgroups())
        mounts = open("/proc/self/mountinfo").read().splitlines()
    except OSError:
        return []
    out = []
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, (fstype, _, options) = left.split(), (right.split() + ["", "", ""])[:3]
        root, point = fields[3], fields[4]
        if fstype == "cgroup2" and "" in own:
            rel = os.path.relpath(own[""], root) if own[""].startswith(root) else None
            folder = os.path.normpath(os.path.join(point, rel)) if rel else None
            if folder and "memory" in _read(os.path.join(folder, "cgroup.controllers")).split():
                out.append((2, folder))
        elif fstype == "cgroup" and "memory" in options.split(",") and "memory" in own:
            rel = os.path.relpath(own["memory"], root) if own["memory"].startswith(root) else None
            if rel:
                out.append((1, os.path.normpath(os.path.join(point, rel))))
    return sorted(out)[::-1]  # v2 first


def _own_cgroups():
    for line in open("/proc/self/cgroup").read().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            yield name, path


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _read_int(path: str) -> int | None:
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _keyed(path: str) -> dict[str, int]:
    out = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out
