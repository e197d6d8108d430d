"""Files as every part of omk-ray writes and identifies them.

    write_text_atomic(path, text), write_bytes_atomic(path, data)   written aside (a name unique
        to this process and call) and renamed into place: a reader, or a crash, sees the old
        file or the new one, never half of one
    with written_aside(path) as tmp: write(tmp)   the same for any writer (Parquet, a dataset
        split): `tmp` is renamed to `path` when the block ends, removed if it raises
    file_sha256(path)   the hex sha256 of a file's bytes, read in chunks
    not_utf8(path, err)   the message for a file that is not UTF-8 text

A write that finds its device full raises `DiskFull` (an OSError naming the file) and leaves
nothing of the file behind: the old copy where there was one, no new one where there was none.
`disk_full(err)` tells such an error apart from others (ENOSPC, EDQUOT, or Arrow's message of it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"  # what a file being written aside is called first (a killed writer may leave one)
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """No room left on the device (or in the quota) for a file omk-ray writes; the message names it."""

    def __init__(self, path: str | Path):
        super().__init__(errno.ENOSPC, f"no space left on the device writing {path}")
        self.path = Path(path)

    def __str__(self) -> str:
        return self.strerror


def disk_full(err: BaseException) -> bool:
    """Whether `err` is a write that found its device full (Arrow's errors carry no errno, only the text)."""
    return isinstance(err, OSError) and (err.errno in FULL_ERRNOS or "No space left on device" in str(err)
                                         or "Disk quota exceeded" in str(err))


@contextmanager
def written_aside(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if disk_full(err) and not isinstance(err, DiskFull):
            raise DiskFull(path) from err
        raise


def not_utf8(path: str | Path, err: UnicodeDecodeError) -> str:
    """The one sentence for a file that should be UTF-8 text and is not."""
    return f"{path}: not UTF-8 text (byte {err.start}: {err.reason})"


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with written_aside(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
