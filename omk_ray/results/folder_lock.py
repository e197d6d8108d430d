"""One writer per results folder: a run holds `RESULTS/.writer.lock` for as long as it writes there.

(Not to be confused with `omk_ray.farm.lock`, the protocol lock that freezes a canonical suite.)

The lock is a kernel file lock (`filelock`): the kernel releases it when its holder's process
ends, however it ends, so a run killed with SIGKILL leaves no lock held, only its holder
record, `RESULTS/.writer.json` (host, pid, run id, start). The next writer reports that record
as stale and replaces it. A second run on a folder being written is refused with the holder's
record, or waits for it to finish (`wait=True`, `omk-ray run --wait`). `holder(root)` says who
writes a folder now (None: nobody), which `omk-ray status` uses to tell a running run from one
that died.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from omk_ray.files import write_text_atomic

LOCK = ".writer.lock"
RECORD = ".writer.json"
GRACE_S = 2.0  # a refused run tries this long first (`holder()` takes the lock for an instant to look)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    run_id: str
    host: str
    pid: int
    started_at: str

    def __str__(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, since {self.started_at})"


class FolderBusy(RuntimeError):
    """Another run is writing the results folder; the message names it."""


@contextmanager
def writing(root: str | Path, run_id: str, wait: bool = False,
            on_wait: Callable[[Holder | None], None] | None = None) -> Iterator[Holder | None]:
    """Hold the folder's writer lock for run `run_id`; yields the stale record of a run that died
    holding it (None if there was none). Raises FolderBusy if another run holds it (unless `wait`)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK), timeout=GRACE_S)
    try:
        lock.acquire()
    except Timeout:
        current = _record(root)
        if not wait:
            raise FolderBusy(
                f"{root}: {current or 'another run'} is writing this results folder; wait for it "
                "(`--wait`, e.g. `omk-ray run ... --wait`) or give another --results folder"
            ) from None
        if on_wait:
            on_wait(current)
        lock.acquire(timeout=-1)
    try:
        stale = _record(root)
        if stale is not None:
            log.warning("%s: %s died without releasing the folder (stale writer record); %s takes over",
                        root, stale, run_id)
        _write_record(root, Holder(run_id, socket.gethostname(), os.getpid(), datetime.now(timezone.utc).isoformat()))
        yield stale
    finally:
        (root / RECORD).unlink(missing_ok=True)
        lock.release()


def holder(root: str | Path) -> Holder | None:
    """The run writing the folder now, or None when no run holds its lock."""
    root = Path(root)
    if not (root / LOCK).exists():
        return None
    probe = FileLock(str(root / LOCK), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return _record(root)
    probe.release()
    return None


def stale_record(root: str | Path) -> Holder | None:
    """The record of a run that died holding the folder (nobody holds it now), if any."""
    return _record(Path(root)) if holder(root) is None else None


def _record(root: Path) -> Holder | None:
    try:
        return Holder(**json.loads((root / RECORD).read_text()))
    except (OSError, ValueError, TypeError):  # none, or cut short by a killed writer
        return None


def _write_record(root: Path, who: Holder) -> None:
    write_text_atomic(root / RECORD, json.dumps(asdict(who)))
