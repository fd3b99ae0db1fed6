"""Scratch files of eval runners: where an episode's mp4 is encoded before it is finished.

They live on the runner's own machine, never in the video folder (which only the driver
writes), each named after the process that writes it, so that the runner that replaces one
killed mid-episode removes its unfinished file and no partial file stays anywhere.

``check_scratch`` writes a file and reads it back, before anything is claimed (each eval
runner's probe); ``scratch_failure`` turns an OS error on the folder into one sentence that
names it and says how to choose another (``TMPDIR``).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

from eval_recorder.errors import ScratchFailed

__all__ = ["SCRATCH_CHECK_BYTES", "check_scratch", "new_episode_file", "remove_orphans", "scratch_dir",
           "scratch_failure"]

_NAME = re.compile(r"^(?:episode|check)-(\d+)-[^/]+$")
FOLDER_NAME = "eval_recorder-scratch"
# What the check writes and reads back: about a short episode's video, so a folder with
# almost no room left is refused too, not only one with none.
SCRATCH_CHECK_BYTES = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _path() -> Path:
    return Path(tempfile.gettempdir()) / FOLDER_NAME


def scratch_dir() -> Path:
    """``<system temp>/eval_recorder-scratch``, made if missing (ScratchFailed if it cannot be)."""
    path = _path()
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise scratch_failure(error, path) from None
    return path


def scratch_failure(error: OSError, path: Path | None = None) -> ScratchFailed:
    """``error`` (an OSError on the scratch folder) as one sentence naming the folder and what to do."""
    path = path or _path()
    why = os.strerror(error.errno) if error.errno else str(error)
    if error.errno in _FULL:
        problem, advice = "is full", "free space there, or set TMPDIR to a folder with room"
    elif error.errno == errno.EROFS:
        problem, advice = "is read-only", "set TMPDIR to a writable folder"
    else:
        problem, advice = "cannot be written", "set TMPDIR to a writable folder"
    return ScratchFailed(
        f"the scratch folder {path} of the eval runner on {os.uname().nodename}, where each episode's video is "
        f"encoded, {problem} ({why}); {advice} for the eval runners ({FOLDER_NAME} is made inside it)."
    )


def check_scratch() -> str | None:
    """Write ``SCRATCH_CHECK_BYTES`` into the scratch folder, read them back and remove
    them: None if that worked, else the sentence saying why not."""
    try:
        folder = scratch_dir()
        data = os.urandom(SCRATCH_CHECK_BYTES)  # not zeros: a compressing file system would store none
        fd, name = tempfile.mkstemp(prefix=f"check-{os.getpid()}-", dir=folder)
        try:
            with open(fd, "r+b", buffering=0) as handle:
                written = 0
                while written < len(data):
                    written += handle.write(memoryview(data)[written:])
                os.fsync(handle.fileno())  # delayed allocation may say ENOSPC only here
                handle.seek(0)
                if handle.read() != data:
                    raise OSError(errno.EIO, "what was written did not read back")
        finally:
            os.unlink(name)
    except ScratchFailed as error:
        return str(error)
    except OSError as error:
        return str(scratch_failure(error))
    return None


def new_episode_file() -> Path:
    """A new empty file in the scratch folder, named after this process (``episode-<pid>-<random>.mp4``)."""
    folder = scratch_dir()
    try:
        fd, name = tempfile.mkstemp(prefix=f"episode-{os.getpid()}-", suffix=".mp4", dir=folder)
    except OSError as error:
        raise scratch_failure(error, folder) from None
    os.close(fd)
    return Path(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans() -> list[Path]:
    """Delete scratch files whose process is gone; returns what was removed (nothing if the
    folder cannot be read: the check says why)."""
    removed = []
    try:
        paths = list(scratch_dir().iterdir())
    except (OSError, ScratchFailed):
        return removed
    for path in paths:
        match = _NAME.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                continue
            removed.append(path)
    return removed
