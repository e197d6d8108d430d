"""Files as every part of omk-ray writes and identifies them.

    write_text_atomic(path, text), write_bytes_atomic(path, data)   written aside (a name unique
        to this process and call) and renamed into place: a reader, or a crash, sees the old
        file or the new one, never half of one
    file_sha256(path)   the hex sha256 of a file's bytes, read in chunks
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
