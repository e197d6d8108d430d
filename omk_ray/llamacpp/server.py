"""One llama-server process on loopback, owned by the process that started it.

`LlamaServer(tools, model, args)` starts `llama-server -m MODEL --host 127.0.0.1 --port P ARGS`,
waits until `/health` answers 200, and `stop()` ends it. A watchdog thread spawns the server
and waits on it: the server gets SIGKILL when that thread's process dies (Linux
PR_SET_PDEATHSIG), so a killed engine actor leaves no server behind, and `on_exit(code, log)`
is called when the server ends without `stop()`.

The death signal is set by `setpriv --pdeathsig KILL` (util-linux), which execs the server: no
Python runs between fork and exec, where a multithreaded actor could deadlock on a lock some
other thread held at the fork. Without setpriv a `preexec_fn` calls prctl, resolved beforehand
in the parent so that the child only makes the call.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1


class ServerStartError(RuntimeError):
    """llama-server exited or did not become ready; the message holds the end of its log."""


class LlamaServer:
    def __init__(self, binary: Path, model: Path, args: list[str], *, start_timeout: float = 300.0,
                 on_exit=None, env: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.on_exit = on_exit
        self._stopping = False
        self._ready = False
        if shutil.which(str(binary)) is None:  # behind setpriv, only the log would say so
            raise ServerStartError(f"cannot start {binary}: not an executable file")
        last = None
        for _ in range(3):  # a port taken between choosing and binding it: choose again
            self.port = free_port(host)
            self.cmd = [str(binary), "-m", str(model), "--host", host, "--port", str(self.port), *args]
            self.log_path = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
            self._spawn(env)
            try:
                self._wait_ready(start_timeout)
                self._ready = True
                return
            except ServerStartError as err:
                last = err
                self.stop()
                if "bind" not in str(err).lower():
                    raise
        raise last  # type: ignore[misc]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _spawn(self, env: dict[str, str] | None) -> None:
        self._stopping = False
        spawned = threading.Event()
        failure: list[BaseException] = []

        def watch() -> None:
            try:
                with open(self.log_path, "ab") as log:
                    prefix, preexec = die_with_parent()
                    self.proc = subprocess.Popen([*prefix, *self.cmd], stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                                 preexec_fn=preexec)  # noqa: PLW1509 (None with setpriv)
            except BaseException as err:  # no such binary, not executable
                failure.append(err)
                spawned.set()
                return
            spawned.set()
            code = self.proc.wait()
            if self._ready and not self._stopping and self.on_exit is not None:
                self.on_exit(code, self.log_tail())

        self._watchdog = threading.Thread(target=watch, name="llama-server-watchdog", daemon=True)
        self._watchdog.start()
        spawned.wait()
        if failure:
            raise ServerStartError(f"cannot start {self.cmd[0]}: {failure[0]}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerStartError(f"llama-server exited with code {self.proc.returncode} while starting: "
                                           f"{' '.join(self.cmd)}\n{self.log_tail()}")
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                time.sleep(0.2)
        raise ServerStartError(f"llama-server was not ready after {timeout:.0f} s: {' '.join(self.cmd)}\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """End the server (SIGTERM, then SIGKILL after `grace` seconds); idempotent."""
        self._stopping = True
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._watchdog.join(timeout=grace)
        self.log_path.unlink(missing_ok=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@functools.cache
def die_with_parent():
    """(command prefix, preexec_fn) that give the child SIGKILL when the spawning thread's process dies:
    `setpriv --pdeathsig KILL --` where setpriv has it, else a prctl resolved here (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return [], None
    setpriv = shutil.which("setpriv")
    if setpriv:
        try:
            usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            usage = ""
        if "--pdeathsig" in usage:
            return [setpriv, "--pdeathsig", "KILL", "--"], None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes, prctl.restype = [ctypes.c_int, ctypes.c_ulong], ctypes.c_int
    args = (PR_SET_PDEATHSIG, int(signal.SIGKILL))
    return [], functools.partial(prctl, *args)
