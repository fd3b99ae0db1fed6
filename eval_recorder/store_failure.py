"""Why the video folder did not take a write, said once: ``store_failed`` turns the OS
error of a failed write into one ``StoreFailed`` whose message names the folder, what is
wrong with it (full, over its quota, unwritable, gone) and, when it is full, how much the
write needed and how much is free; its ``reason`` tells a full folder from an unwritable one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from eval_recorder.errors import StoreFailed

__all__ = ["free_bytes", "store_failed"]

_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.ESTALE}


def store_failed(error: BaseException, *, folder: Path, needs: str, needed: int, consequence: str,
                 video: Path | None = None, metadata: dict | None = None) -> StoreFailed:
    """The StoreFailed for OS error ``error``: one sentence, e.g. "video folder F is full:
    {needs} 1.4 MB, 0.3 MB are free; {consequence}." (``needs``: "storing X needs")."""
    code = getattr(error, "errno", None)
    why = os.strerror(code) if code else str(error)
    free = free_bytes(folder)
    if code == errno.EDQUOT:
        reason, problem = "full", f"is over its disk quota: {needs} {_size(needed)}"
    elif code in _FULL:
        free_text = f", {_size(free)} are free" if free is not None else ""
        reason, problem = "full", f"is full: {needs} {_size(needed)}{free_text}"
    elif code in _UNWRITABLE:
        gone = code in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE) and not Path(folder).is_dir()
        reason, problem = "unwritable", "no longer exists" if gone else f"cannot be written ({why})"
    else:
        reason, problem = "failed", f"could not be written ({why})"
    return StoreFailed(f"video folder {folder} {problem}; {consequence}.", reason=reason, folder=folder,
                       needed_bytes=needed, free_bytes=free, video=video, metadata=metadata, errno_code=code)


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still write on ``folder``'s filesystem; None if the
    folder cannot be examined (e.g. it is gone)."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _size(nbytes: int) -> str:
    if nbytes < 1000:
        return f"{nbytes} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if nbytes < scale * 999.95:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1e12:.1f} TB"
