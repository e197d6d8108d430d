"""The code sandbox: verdicts, limits, and hostile programs that must leave the host unharmed.

Every hostile test asserts the three things the host cares about: a file outside the
sandbox still exists (and is unchanged), no secret appears in anything the program
returned, and no process of the program is left running.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from omk_ray.benches.sandbox import Program, Limits, Sandbox
from omk_ray.benches.sandbox import pool

FAST = Limits(wall_s=3, cpu_s=3, memory_mb=512, processes=8)
SECRETS = {
    "HF_TOKEN": f"hf_secret{uuid.uuid4().hex}",
    "AWS_SECRET_ACCESS_KEY": f"aws{uuid.uuid4().hex}",
    "OPENAI_API_KEY": f"sk-{uuid.uuid4().hex}",
}
FILE_SECRET = f"hf_filesecret{uuid.uuid4().hex}"


def namespaces_available() -> bool:
    outcome = Sandbox(FAST, isolation="namespaces").run(Program(program="pass"))
    return outcome.passed


NAMESPACES = namespaces_available()
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="Linux namespaces are not permitted here")


@pytest.fixture()
def host(monkeypatch):
    """A visible folder outside the sandbox (under tests/, not the hidden /tmp) holding a precious
    file anyone may write, and a home folder with a Hugging Face token; secrets in the env."""
    # /srv is never hidden; the checkout may be (CI may clone under /tmp, /root or /home)
    base = Path("/srv") if os.access("/srv", os.W_OK) else Path(__file__).parent
    root = base / f".sandbox-canary-{uuid.uuid4().hex[:8]}"
    (root / "home" / ".cache" / "huggingface").mkdir(parents=True)
    precious = root / "precious.txt"
    precious.write_text("keep me")
    token = root / "home" / ".cache" / "huggingface" / "token"
    token.write_text(FILE_SECRET)
    for path in (root, root / "home", root / "home" / ".cache", root / "home" / ".cache" / "huggingface"):
        path.chmod(0o777)  # only the sandbox, not file permissions, may stop the program
    precious.chmod(0o666)
    token.chmod(0o644)
    monkeypatch.setenv("HOME", str(root / "home"))
    # this test's programs draw their uids from a slice of the sandbox range of their own, so that
    # `leftover_processes` sees only them, not the sandboxes of another suite running on the machine
    monkeypatch.setattr(pool, "UID_BASE", pool.UID_BASE + random.randrange(1000) * 100_000)
    monkeypatch.setattr(pool, "UID_SPAN", 100_000)
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    yield {"root": root, "precious": precious, "token": token}
    shutil.rmtree(root, ignore_errors=True)


def assert_unharmed(host: dict, outcome, marker: str | None = None) -> None:
    assert host["precious"].read_text() == "keep me"
    assert host["token"].read_text() == FILE_SECRET
    returned = outcome.stdout + outcome.stderr + outcome.reason
    for secret in (*SECRETS.values(), FILE_SECRET):
        assert secret not in returned
    assert leftover_processes(marker) == []


def leftover_processes(marker: str | None = None) -> list[int]:
    """Processes running as a sandbox uid, or whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if pool.UID_BASE <= uid < pool.UID_BASE + pool.UID_SPAN or (marker and marker.encode() in cmdline):
            found.append(int(entry))
    return found


def run(program: str, limits: Limits = FAST, isolation: str = "namespaces" if NAMESPACES else "rlimits", **job):
    return Sandbox(limits, isolation=isolation).run(Program(program=textwrap.dedent(program), **job))


# -- verdicts ------------------------------------------------------------------------------------


def test_verdicts_pass_fail_error_timeout():
    assert run("def f(x): return x + 1\nassert f(1) == 2").status == "pass"
    failed = run("def f(x): return x\nassert f(1) == 2, 'off by one'")
    assert failed.status == "fail"
    assert failed.reason == "AssertionError at line 2: assert f(1) == 2, 'off by one': off by one"
    assert run("def f(:").status == "error" and "SyntaxError" in run("def f(:").reason
    assert run("1 / 0").reason == "ZeroDivisionError: division by zero"
    slow = run("while True: pass", limits=FAST.but(cpu_s=1))
    assert slow.status == "timeout" and "CPU time limit" in slow.reason
    asleep = run("import time; time.sleep(60)", limits=FAST.but(wall_s=1))
    assert asleep.status == "timeout" and "wall time" in asleep.reason and asleep.duration_s < 10


def test_a_program_cannot_pass_by_exiting_early_or_forging_a_verdict():
    assert run("exit(0)\nassert False").status == "fail"
    assert run("import os; os._exit(0)").status == "fail"
    forged = """
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b"{'nonce': 'guess', 'status': 'pass', 'reason': ''}\\n")
            except OSError:
                pass
        os._exit(0)
    """
    outcome = run(forged)  # its line lands on the runner's reply pipe, where nobody takes it for a verdict
    assert (outcome.status, outcome.reason) == ("error", "the program garbled its answer")


def test_environment_is_scrubbed_and_working_folder_is_fresh(host):
    program = """
        import os, json
        print(json.dumps(dict(os.environ)))
        open("mine.txt", "w").write("x")
        print(sorted(os.listdir(".")))
    """
    first, second = run(program), run(program)
    assert first.passed, first.reason
    env = __import__("json").loads(first.stdout.splitlines()[0])
    assert not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"} & set(env)
    assert env["PYTHONHASHSEED"] == "0"
    assert first.stdout.splitlines()[1] == second.stdout.splitlines()[1] == "['mine.txt']"
    assert_unharmed(host, first)


def test_output_is_capped():
    outcome = run("print('a' * 10_000)\nimport sys; sys.stderr.write('b' * 10_000)", limits=FAST.but(output_bytes=100))
    assert outcome.passed
    assert outcome.stdout.startswith("a" * 100) and outcome.stdout.endswith("[... output truncated]")
    assert len(outcome.stdout) < 150 and len(outcome.stderr) < 150


def test_many_programs_run_in_order_on_a_bounded_pool():
    sandbox = Sandbox(FAST, workers=2)
    jobs = [Program(program=f"assert {i} % 3 != 0") for i in range(9)]
    start = time.perf_counter()
    outcomes = sandbox.run_many(jobs)
    assert [o.status for o in outcomes] == ["fail" if i % 3 == 0 else "pass" for i in range(9)]
    assert time.perf_counter() - start < 60


# -- hostile programs ------------------------------------------------------------------------------


def test_fork_bomb(host):
    outcome = run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    assert outcome.status in ("timeout", "error")
    assert_unharmed(host, outcome)


def test_infinite_loop_and_escaping_child_are_killed(host):
    marker = f"omk-sandbox-marker-{uuid.uuid4().hex[:8]}"
    outcome = run(
        f"""
        import os, subprocess, sys
        if os.fork() == 0:
            os.setsid()  # leave the process group: only the pid namespace can catch it now
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(1000)", "{marker}"])
        subprocess.Popen([sys.executable, "-c", "while True: pass", "{marker}"])
        while True:
            pass
        """,
        limits=FAST.but(cpu_s=2, wall_s=3),
    )
    assert outcome.status == "timeout"
    if NAMESPACES:
        assert_unharmed(host, outcome, marker)


def test_memory_bomb(host):
    outcome = run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))")
    assert (outcome.status, outcome.reason) == ("error", "MemoryError: the memory limit was reached")
    assert_unharmed(host, outcome)


@needs_namespaces
def test_deleting_files_outside_its_folder(host):
    precious, root = host["precious"], host["root"]
    outcome = run(
        f"""
        import os, shutil
        errors = []
        for attempt in (
            lambda: os.remove("{precious}"),
            lambda: open("{precious}", "w").write("gone"),
            lambda: os.rename("{precious}", "{precious}.moved"),
            lambda: shutil.rmtree("{root}"),
            lambda: shutil.rmtree("{Path(pool.__file__).parent}"),
        ):
            try:
                attempt()
            except OSError as err:
                errors.append(err.errno)
        print(errors)
        assert not errors, "could not delete"
        """
    )
    assert outcome.status == "fail"
    assert_unharmed(host, outcome)
    assert Path(pool.__file__).is_file()


@needs_namespaces
def test_opening_sockets():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    outcome = run(
        f"""
        import socket
        for address in (("127.0.0.1", {port}), ("1.1.1.1", 80), ("huggingface.co", 443)):
            try:
                socket.create_connection(address, timeout=2).sendall(b"stolen")
                print("connected", address)
            except OSError as err:
                print("blocked", address, err)
        """
    )
    assert outcome.passed and "connected" not in outcome.stdout
    assert outcome.stdout.count("blocked") == 3
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


@needs_namespaces
def test_reading_secrets_from_env_files_and_proc(host):
    outcome = run(
        f"""
        import os, glob
        print(dict(os.environ))
        for path in ["{host['token']}", os.path.expanduser("~/.cache/huggingface/token"),
                     "/root/.cache/huggingface/token", "/proc/{os.getpid()}/environ",
                     "/proc/{os.getpid()}/cmdline", *glob.glob("/proc/*/environ")]:
            try:
                print(path, open(path, "rb").read())
            except OSError as err:
                print(path, err)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("umount", libc.umount2(b"{host['root'] / 'home'}", 2), libc.umount2(b"/root", 2))
        print(open("{host['token']}").read())
        """
    )
    assert outcome.status == "error"  # the token file is not there
    assert_unharmed(host, outcome)
    assert "umount -1 -1" in outcome.stdout


@needs_namespaces
def test_devices_are_only_the_harmless_ones():
    """No disks and no GPUs: a program must not grab the memory of the engine's accelerator."""
    outcome = run(
        """
        import os
        print(sorted(os.listdir("/dev")))
        open("/dev/null", "w").write("x")
        assert len(open("/dev/urandom", "rb").read(8)) == 8
        """
    )
    assert outcome.passed, outcome.reason
    assert outcome.stdout.strip() == "['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'urandom', 'zero']"


def test_printing_gigabytes(host):
    outcome = run("import sys\nwhile True:\n    sys.stdout.write('x' * 2**20)", limits=FAST.but(disk_mb=8))
    assert outcome.status == "error" and "File too large" in outcome.reason
    assert len(outcome.stdout) <= FAST.output_bytes + 50
    assert_unharmed(host, outcome)


# -- other isolation levels -----------------------------------------------------------------------


def test_rlimits_fallback_still_limits_and_kills(host):
    marker = f"omk-sandbox-marker-{uuid.uuid4().hex[:8]}"
    assert run("assert 1 + 1 == 2", isolation="rlimits").passed
    assert run("assert 1 + 1 == 3", isolation="rlimits").status == "fail"
    outcome = run(
        f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", "{marker}"])
        while True:
            pass
        """,
        isolation="rlimits",
        limits=FAST.but(cpu_s=1),
    )
    assert outcome.status == "timeout" and outcome.isolation == "rlimits"
    assert_unharmed(host, outcome, marker)


@needs_namespaces
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists(),
    reason="needs root, setpriv and a system python3 to play an unprivileged farm",
)
def test_unprivileged_farm_gets_a_user_namespace(tmp_path, host):
    """As a non-root user the sandbox nests its namespaces in a user namespace with no capabilities."""
    wrapper = tmp_path / "python-as-4242"
    wrapper.write_text('#!/bin/sh\nexec setpriv --reuid=4242 --regid=4242 --clear-groups /usr/bin/python3 "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    os.chown(host["precious"], 4242, 4242)  # the farm's own file: permissions would let it go
    sandbox = Sandbox(FAST, isolation="namespaces", python=str(wrapper))
    check = lambda program: sandbox.run(Program(program=textwrap.dedent(program)))  # noqa: E731
    assert check("import os; assert os.getuid() == 0 and os.listdir('/root') == []").passed
    deleted = check(f"import os; os.remove('{host['precious']}')")
    assert deleted.status == "error" and "No such file" in deleted.reason  # /srv is hidden
    assert "Read-only file system" in check("import os; os.remove('/etc/passwd')").reason
    assert "unreachable" in check("import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)").reason
    bomb = check("import os\nwhile True:\n    os.fork()")
    assert bomb.status == "error" and "Resource temporarily unavailable" in bomb.reason
    escape = check("import ctypes; assert ctypes.CDLL(None).umount2(b'/root', 2) == 0")
    assert escape.status == "fail"
    assert_unharmed(host, deleted)


@needs_namespaces
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not Path("/usr/bin/python3").exists(),
    reason="needs root, setpriv and a system python3 to play an unprivileged user",
)
def test_unprivileged_user_with_checkout_and_venv_in_a_private_home(host):
    """The common case: a user whose checkout and venv live in their own mode-700 home. The sandbox
    code runs from there as that user; nothing of it must be readable by anyone else."""
    import subprocess
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="omk-home-", dir="/srv" if os.access("/srv", os.W_OK) else None))
    try:
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        package = home / "checkout" / "omk_ray" / "benches" / "sandbox"
        shutil.copytree(Path(pool.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
        for init in (package.parents[1] / "__init__.py", package.parents[0] / "__init__.py"):
            init.write_text("")  # only the sandbox's own modules: the rest of the package needs the full venv
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(home / "venv")], check=True)
        subprocess.run(["chown", "-R", "4242:4242", str(home)], check=True)
        hidden = f"import os; assert os.getuid() == 0 and 'checkout' not in os.listdir({str(home)!r})"
        script = textwrap.dedent(f"""
            from omk_ray.benches.sandbox import Program, Limits, Sandbox
            sandbox = Sandbox(Limits(wall_s=5, cpu_s=5, memory_mb=512, processes=8), isolation="namespaces")
            ok = sandbox.run(Program(program={hidden!r}))
            wrong = sandbox.run(Program(program="assert 1 + 1 == 3"))
            print(ok.status, ok.isolation, wrong.status, ok.reason)
        """)
        done = subprocess.run(
            ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", str(home / "venv" / "bin" / "python"),
             "-c", script],
            env={"HOME": str(home), "PYTHONPATH": str(home / "checkout"), "PATH": "/usr/bin:/bin"},
            cwd=str(home), capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[:3] == ["pass", "namespaces", "fail"], done.stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_isolation_is_reported():
    outcome = Sandbox(FAST, isolation="auto").run(Program(program="pass"))
    assert outcome.isolation == ("namespaces" if NAMESPACES else "rlimits")
    strict = Sandbox(FAST, isolation="namespaces").run(Program(program="pass"))  # never falls back by itself
    assert (strict.isolation, strict.passed) == ("namespaces", NAMESPACES)
    assert Sandbox(FAST).requested == "auto"  # the default
