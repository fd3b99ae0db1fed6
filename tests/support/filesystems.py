"""Real filesystem faults for tests of the video folder: a small tmpfs that fills up, a
read-only bind mount, an immutable folder. Each needs root (mount, chattr) and is undone
when its ``with`` block ends; where the machine does not allow it, the test is skipped
with the reason."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size_bytes: int):
    """A tmpfs of ``size_bytes`` (whole 4 KiB pages) mounted at ``mount_point``."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(mount_point))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up for real ({done.stderr.strip()})")
    try:
        yield mount_point
    finally:
        _unmount(mount_point)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` bound onto itself read-only: every write into it fails with EROFS."""
    done = _run("mount", "--bind", str(folder), str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount a folder read-only ({done.stderr.strip()})")
    try:
        done = _run("mount", "-o", "remount,bind,ro", str(folder))
        if done.returncode != 0:
            pytest.skip(f"cannot remount a bind mount read-only ({done.stderr.strip()})")
        yield folder
    finally:
        _unmount(folder)


@contextlib.contextmanager
def immutable(folder: Path):
    """``folder`` with the immutable attribute (``chattr +i``): no entry can be added or
    removed, even by root (EPERM)."""
    done = _run("chattr", "+i", str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot make a folder immutable ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        _run("chattr", "-i", str(folder))


def fill(filesystem: Path, leave_bytes: int) -> Path:
    """A filler file in ``filesystem`` that leaves exactly ``leave_bytes`` (whole pages) free.
    A running job may write or remove files meanwhile: the filler is grown or cut until the
    free space, read again, is exactly that."""
    filler = filesystem / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for _ in range(50):
            stats = os.statvfs(filesystem)
            more = stats.f_bavail * stats.f_frsize - leave_bytes
            if more == 0:
                return filler
            size = handle.seek(0, os.SEEK_END)
            if more > 0:
                try:
                    handle.write(b"\0" * more)
                except OSError as error:  # the job took the room meanwhile: measure again
                    if error.errno != errno.ENOSPC:
                        raise
            else:
                handle.truncate(max(0, size + more))
    raise AssertionError(f"{filesystem} did not settle at {leave_bytes} free bytes")


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))
