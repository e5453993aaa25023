"""``atomic.replacing``: a temp path for writers that need a file name, renamed over the target on success."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest

import mclnet_cli.atomic as atomic_module
from mclnet_cli.atomic import replacing
from mclnet_cli.errors import StorageError


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_clean_exit_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "array.npy"
    target.write_bytes(b"old")
    with replacing(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".array.npy.") and tmp.name.endswith(".tmp")
        assert target.read_bytes() == b"old"  # nothing is visible before the rename
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(2, 3))  # a writer by file name
        array[:] = 7
        array.flush()
        del array
    assert np.load(target).tolist() == [[7, 7, 7], [7, 7, 7]]
    assert _temps(tmp_path) == []


def test_a_new_file_gets_the_mode_open_would_give(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.onnx"  # the folder is made too
    old = os.umask(0o022)
    try:
        with replacing(target) as tmp:
            tmp.write_bytes(b"model")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"model" and target.stat().st_mode & 0o777 == 0o644


def test_an_exception_inside_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="the writer failed"):
        with replacing(target) as tmp:
            tmp.write_bytes(b"half written")
            raise ValueError("the writer failed")
    assert target.read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_a_full_disk_inside_is_a_storage_error_naming_the_target(tmp_path: Path) -> None:
    target = tmp_path / "cache.npy"
    target.write_bytes(b"old")
    with pytest.raises(StorageError, match="No space left on device") as caught:
        with replacing(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert str(caught.value).startswith(f"cannot write {target}: ")
    assert ".tmp" not in str(caught.value)
    assert target.read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_a_library_error_naming_a_full_disk_is_a_storage_error_too(tmp_path: Path) -> None:
    """torch / ONNX wrap the OS error in a RuntimeError's text."""
    target = tmp_path / "model.ts"
    with pytest.raises(StorageError, match=f"cannot write {target}: No space left on device"):
        with replacing(target):
            raise RuntimeError("PytorchStreamWriter failed writing file data: No space left on device")
    assert not target.exists() and _temps(tmp_path) == []


def test_a_failed_rename_names_the_target_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def refused(src, dst, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))

    monkeypatch.setattr(atomic_module.os, "replace", refused)
    with pytest.raises(PermissionError) as caught:
        with replacing(target) as tmp:
            tmp.write_bytes(b"new")
    assert caught.value.filename == str(target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and _temps(tmp_path) == []


def test_orphans_of_an_earlier_process_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    orphan = tmp_path / ".model.onnx.k1ll3d.tmp"
    orphan.write_bytes(b"x" * 100)
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))  # from a process that died an hour ago
    with replacing(target) as tmp:
        tmp.write_bytes(b"model")
    assert not orphan.exists() and target.read_bytes() == b"model"
