"""omk_ray.files: the one atomic writer and the one file hash every part uses."""

from __future__ import annotations

import hashlib

import pytest

from omk_ray.files import file_sha256, write_bytes_atomic, write_text_atomic


def test_atomic_writes_replace_whole_files_and_leave_no_temporary_behind(tmp_path):
    path = tmp_path / "a.json"
    assert write_text_atomic(path, "old") == path
    write_text_atomic(path, "néw")
    assert path.read_bytes() == "néw".encode()  # UTF-8, whatever the locale
    assert file_sha256(path) == hashlib.sha256("néw".encode()).hexdigest()
    blocked = tmp_path / "folder"
    (blocked / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        write_bytes_atomic(blocked, b"data")  # a folder cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "folder"]  # no .tmp left
    assert path.read_text(encoding="utf-8") == "néw"
