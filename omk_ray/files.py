"""Files as every part of omk-ray writes and identifies them.

    write_text_atomic(path, text), write_bytes_atomic(path, data)   written aside (a name unique
        to this process and call) and renamed into place: a reader, or a crash, sees the old
        file or the new one, never half of one
    file_sha256(path)   the hex sha256 of a file's bytes, read in chunks
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
