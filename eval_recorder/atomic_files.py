"""Making a file appear in a folder complete or not at all: the video store, the folder
guard and the gallery all write this way. The bytes go to a hidden temporary name in the
same folder and are flushed to disk; then a hard link gives them their final name
(``publish_file``: ``os.link`` fails if the name exists, so nothing is ever overwritten,
even by another process) or ``os.replace`` swaps them in for an older version, and the
folder's new entry is flushed too (``fsync_dir``).

``open_regular`` opens a folder's control file (manifest, lock file, owner record, sidecar,
...) without following a symlink and refuses anything that is not a regular file, so that
nothing outside the folder is ever written or trusted through a name inside it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "open_regular", "publish_file", "read_regular", "replace_file", "write_temporary"]

_log = logging.getLogger(__name__)


def publish_file(folder: Path, data: bytes, final: Path) -> bool:
    """Make ``data`` appear complete at ``final``; False (nothing changed) if taken.
    On an OS error nothing is left but, at worst, a hidden temporary file."""
    tmp = write_temporary(folder, final.name, data)
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        _drop(tmp)  # our own temporary name; the data lives on under `final`
    try:
        fsync_dir(folder)
    except OSError as error:  # the name exists (a caller must not store it again); only its flush is unsure
        _log.warning("could not flush the new name %s to disk: %s", final, error)
    return True


def replace_file(folder: Path, data: bytes, final: Path) -> Path:
    """Make ``data`` the complete content of ``final`` (a page that is rewritten whole,
    such as a gallery): a reader sees the old version or the new one, never half of it.
    ``os.replace`` swaps the name itself, so a symlink planted at ``final`` is replaced,
    never followed."""
    tmp = write_temporary(folder, final.name, data)
    try:
        os.replace(tmp, final)
    except BaseException:
        _drop(tmp)
        raise
    fsync_dir(folder)
    return final


def write_temporary(folder: Path, name: str, data: bytes) -> Path:
    """``data``, flushed to disk, under a new hidden temporary name for ``name`` in
    ``folder`` (``.<name>.<random>.tmp``, mode 0644); nothing is left if writing fails."""
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _drop(tmp)
        raise
    return tmp


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """A descriptor of ``path`` opened with ``flags``, never through a symlink (``O_NOFOLLOW``:
    OSError ELOOP) and never blocking on a fifo; OSError EINVAL ("not a regular file") for a
    folder, fifo, socket or device (closed again). The caller closes the descriptor."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)  # O_NONBLOCK was only for the open of a fifo
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, limit: int = -1) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``), read without following a
    symlink (see ``open_regular``); FileNotFoundError if there is none."""
    with os.fdopen(open_regular(path), "rb") as handle:
        return handle.read(limit)


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (new names) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError as error:  # e.g. the filesystem turned read-only; the hidden name is ignored by all
        _log.debug("could not remove temporary file %s: %s", tmp, error)
