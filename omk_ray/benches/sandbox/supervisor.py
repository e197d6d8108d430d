"""The processes that confine one untrusted program. Standard library only; run as a script.

The host starts `python -S -c <this file's source>` with a scrubbed environment and, on
stdin, the setup (a length-prefixed marshalled dict: mode, limits, the sources of checks.py
and runner.py) followed by the job (the program, its tests, the nonce): nothing of the
farm's checkout has to be readable by the user the program runs as. Nothing heavy is
imported: every program pays for this start-up. Four processes follow:

    supervisor (host pid namespace)    enforces the wall-time limit, writes the report
      └─ init (pid 1 of new namespaces) mounts the private filesystem view, reaps orphans;
           └─ harness                   the check (checks.py): holds the expected outputs and
                │                       the verdict's descriptor, never runs the program's code
                └─ runner               runner.py, with the limits, an unprivileged uid and
                                        no capabilities: runs the program

The runner is forked before the harness reads the job, so neither the expected outputs nor
the nonce were ever in its memory, and it keeps only its two pipes and fds 1-2. The
supervisor, init and the harness are not dumpable: a runner of the same uid (a user
namespace, or rlimits mode) can neither trace them nor open their memory or descriptors.
When init exits the kernel kills every process left in its pid namespace, so nothing the
program forked survives it. In "rlimits" mode (no namespaces allowed here) there is no
init: the harness runs in its own process group, which the supervisor kills on timeout.

The report (one line, a Python literal, on `report_fd`) is written only by the supervisor
and init (a `setup_error` there means the isolation could not be set up at all); the verdict
(on `verdict_fd`) only by the harness, and counts only if it carries the job's nonce.
"""

from __future__ import annotations

import ctypes
import fcntl
import marshal
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 1, 2
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000  # same number on every arch
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
SETUP_FAILED = 125
DEVICES = ("null", "zero", "full", "random", "urandom")  # all of /dev a program gets (no GPUs)

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(RuntimeError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)}")


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _read_only(path: str) -> None:
    """Make the mount at `path` and every mount below it read-only and nosuid."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr), 32) == 0:
        return
    if ctypes.get_errno() != 38:  # not ENOSYS: a real failure
        _check(-1, f"read-only {path}")
    # Kernels before 5.12: remount each mount point, keeping the flags it already has.
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for point in sorted(p for p in points if p == path or p.startswith(path.rstrip("/") + "/")):
        keep = os.statvfs(point).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048)
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep
        libc.mount(None, point.encode(), None, ctypes.c_ulong(flags), None)
    if not os.statvfs(path).f_flag & MS_RDONLY:
        raise SetupError(f"cannot make {path} read-only")


# -- the supervisor ------------------------------------------------------------------------


def main() -> None:
    if sys.path and sys.path[0] == "":
        sys.path.pop(0)  # `-c` puts the working directory first: nothing may be imported from it by accident
    _add_site_packages()
    size = int.from_bytes(_read(0, 8), "little")
    job = marshal.loads(_read(0, size))  # the setup only: the harness reads the rest of stdin later
    report_fd = job["report_fd"]
    if job.get("cgroup_procs"):  # before anything is forked: the whole program is charged to one cgroup
        try:
            with open(job["cgroup_procs"], "w") as f:
                f.write(str(os.getpid()))
            _report(report_fd, cgroup=True)
        except OSError as err:
            _report(report_fd, cgroup=False, cgroup_error=str(err))
    checks = _load_source(job["checks_source"], "checks.py")
    checks.wire = _load_source(job["runner_source"], "runner.py")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the host died before we set the death signal
        os._exit(1)

    namespaces = job["mode"] == "namespaces"
    if not (namespaces and os.getuid() == 0):
        job["uid"] = None  # only real root switches to the spare uid; others get a user namespace
    if namespaces:
        try:
            _unshare()
        except (SetupError, OSError) as err:
            _report(report_fd, setup_error=str(err))
            os._exit(SETUP_FAILED)
    libc.prctl(PR_SET_DUMPABLE, 0)  # after the uid map is written; init and the harness inherit it

    timed_out = False
    child = os.fork()
    if child == 0:
        if namespaces:
            _init(job, checks, report_fd)
        os.close(report_fd)
        os.setpgid(0, 0)
        _harness(job, checks, job["workdir"])
    if not namespaces:
        try:
            os.setpgid(child, child)  # also here: the timer must find the group whichever runs first
        except OSError:
            pass

    def on_alarm(signum, frame):
        nonlocal timed_out
        timed_out = True
        try:
            if namespaces:
                os.kill(child, signal.SIGKILL)  # init: the kernel then kills its whole namespace
            else:
                os.killpg(child, signal.SIGKILL)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, job["limits"]["wall_s"])
    _, status, usage = os.wait4(child, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not namespaces:  # nothing of the program may outlive it
        try:
            os.killpg(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    code = os.waitstatus_to_exitcode(status)
    _report(
        report_fd,
        timed_out=timed_out,
        exit_code=code if code >= 0 else None,
        signal=-code if code < 0 else None,
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        max_rss_kb=usage.ru_maxrss,
    )
    os._exit(0)


def _add_site_packages() -> None:
    """Started with -S (site's .pth processing costs ~25 ms a program): add the folders only."""
    import site

    site.setquit()  # exit() and quit(), which solutions do call
    sys.path.extend(p for p in site.getsitepackages() if p not in sys.path and os.path.isdir(p))


def _read(fd: int, size: int | None = None) -> bytes:
    """Exactly `size` bytes (None: up to end of file), unbuffered: nothing beyond is read ahead."""
    chunks, left = [], size
    while left is None or left > 0:
        chunk = os.read(fd, 1 << 20 if left is None else min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left = None if left is None else left - len(chunk)
    return b"".join(chunks)


def _load_source(source: str, filename: str):
    module = type(sys)(f"_omk_sandbox_{filename[:-3]}")
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def _report(fd: int, **fields) -> None:
    os.write(fd, (repr(fields) + "\n").encode())


def _unshare() -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if uid != 0:
        flags |= CLONE_NEWUSER  # an unprivileged user gets the other namespaces inside its own
    _check(libc.unshare(flags), "unshare")
    if uid != 0:
        for name, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


# -- init: pid 1 of the new namespaces ------------------------------------------------------


def _init(job: dict, checks, report_fd: int) -> None:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        workdir = _private_filesystem(job)
    except (SetupError, OSError) as err:
        _report(report_fd, setup_error=str(err))
        os._exit(SETUP_FAILED)
    harness = os.fork()
    if harness == 0:
        os.close(report_fd)
        _harness(job, checks, workdir)
    while True:  # reap everything; leave when the harness is done
        pid, status = os.wait()
        if pid == harness:
            break
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _private_filesystem(job: dict) -> str:
    """Everything read-only; secrets and shared scratch space hidden; a fresh tmpfs to work in."""
    limits = job["limits"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    hidden = [p for p in _existing_unique(job["hide"]) if os.path.isdir(p) or os.path.isfile(p)]
    keep = [p for p in _outermost(_existing_unique(_python_paths())) if any(_under(p, h) and p != h for h in hidden)]
    keep_fds = {p: os.open(p, os.O_PATH) for p in keep}
    device_fds = {name: os.open(f"/dev/{name}", os.O_PATH) for name in DEVICES if os.path.exists(f"/dev/{name}")}
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except SetupError:
        pass  # some container runtimes forbid it; the host's /proc stays (documented)
    _read_only("/")
    tmp = f"size={limits['disk_mb']}m,mode=1777"
    for path in hidden:  # outer first: a path inside a hidden folder is gone unless a mount brought it back
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, tmp if path == "/tmp" else "size=1m,mode=755")
            for inner in sorted(p for p in keep if _under(p, path)):
                os.makedirs(inner, exist_ok=True)
                _mount(f"/proc/self/fd/{keep_fds[inner]}", inner, None, MS_BIND | MS_REC)
                _read_only(inner)
            if path != "/tmp":
                _read_only(path)
        else:
            _mount("/dev/null", path, None, MS_BIND)
    _minimal_dev(device_fds)
    for fd in (*keep_fds.values(), *device_fds.values()):
        os.close(fd)
    if "/tmp" not in hidden:
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp)
    workdir = "/tmp/work"
    os.mkdir(workdir, 0o700)
    if job.get("uid") is not None:
        os.chown(workdir, job["uid"], job["uid"])
    return workdir


def _minimal_dev(device_fds: dict[str, int]) -> None:
    """A /dev with the harmless devices only: no disks, no GPUs, nothing of the host's."""
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for name, fd in device_fds.items():
        open(f"/dev/{name}", "w").close()
        _mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm")
    _read_only("/dev")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777")


def _python_paths() -> list[str]:
    """Where this interpreter and its packages live: mounted back even inside a hidden folder."""
    exe_root = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    # Under -S a virtual environment does not set sys.prefix (site does): keep the venv by its executable.
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    return [sys.prefix, sys.base_prefix, sys.exec_prefix, exe_root, venv, *(p for p in sys.path if os.path.isdir(p))]


def _existing_unique(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        real = os.path.realpath(path)
        if os.path.lexists(real) and real != "/" and real not in out:
            out.append(real)
    return sorted(out)


def _outermost(paths: list[str]) -> list[str]:
    return [p for p in paths if not any(q != p and _under(p, q) for q in paths)]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# -- the harness, and the runner it forks ----------------------------------------------------


def _harness(setup: dict, checks, workdir: str) -> None:
    try:
        program = _start_runner(setup, checks, workdir)
        _drop_privileges(None)  # the harness needs no capabilities either
        job = {**setup, **marshal.loads(_read(0))}  # only now: the runner never held the job in memory
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    except BaseException as err:  # noqa: BLE001 - anything here is a setup failure
        os.write(2, f"harness: {type(err).__name__}: {err}\n".encode())
        os._exit(SETUP_FAILED)
    checks.run(job, job["verdict_fd"], program)
    program.stop()
    os._exit(0)


def _start_runner(setup: dict, checks, workdir: str):
    """Fork the runner: confined, fd 0 on /dev/null, fds 1-2 and its two pipes, nothing else."""
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            inbound, outbound = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (requests_r, replies_w))
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the job is still unread on stdin
            os.dup2(inbound, checks.wire.REQUESTS)
            os.dup2(outbound, checks.wire.REPLIES)
            os.closerange(5, os.sysconf("SC_OPEN_MAX"))  # the verdict and report descriptors among them
            os.chdir(workdir)
            _set_limits(setup["limits"], shared_uid=setup["mode"] == "rlimits" and os.getuid() != 0)
            _drop_privileges(setup.get("uid"))
        except BaseException as err:  # noqa: BLE001 - anything here is a setup failure
            os.write(2, f"runner: {type(err).__name__}: {err}\n".encode())
            os._exit(SETUP_FAILED)
        checks.wire.main()
    os.close(requests_r)
    os.close(replies_w)
    return checks.Program(pid, requests_w, replies_r, max_reply=8 * setup["limits"]["disk_mb"] << 20)


def _set_limits(limits: dict, shared_uid: bool) -> None:
    cpu = max(1, int(-(-limits["cpu_s"] // 1)))
    memory = limits["memory_mb"] * 1024 * 1024
    disk = limits["disk_mb"] * 1024 * 1024
    # RLIMIT_NPROC counts every process of the uid: in rlimits mode that includes the farm's own.
    processes = limits["processes"] + (_processes_of_my_uid() if shared_uid else 0)
    for what, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_DATA, memory, memory),
        (resource.RLIMIT_FSIZE, disk, disk),
        (resource.RLIMIT_NPROC, processes, processes),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(what, (soft, hard))


def _processes_of_my_uid() -> int:
    me, count = str(os.getuid()), 0
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), None)
        threads = next((line.split()[1] for line in status.splitlines() if line.startswith("Threads:")), "1")
        count += int(threads) if uid == me else 0
    return count


def _drop_privileges(uid: int | None) -> None:
    if uid is not None:  # started as root: become an unprivileged user nobody else uses
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif os.geteuid() == 0:  # root of our own user namespace (or real root, rlimits mode): no capabilities
        for cap in range(64):
            libc.prctl(PR_CAPBSET_DROP, cap)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()
        _check(libc.capset(header, data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


if __name__ == "__main__":
    main()
