"""Scratch files of eval runners: where an episode's mp4 is encoded before it is finished.

They live on the runner's own machine, never in the video folder (which only the driver
writes), each named after the process that writes it, so that the runner that replaces one
killed mid-episode removes its unfinished file and no partial file stays anywhere.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["new_episode_file", "remove_orphans", "scratch_dir"]

_NAME = re.compile(r"^episode-(\d+)-[^/]+\.mp4$")


def scratch_dir() -> Path:
    """``<system temp>/eval_recorder-scratch``, made if missing."""
    path = Path(tempfile.gettempdir()) / "eval_recorder-scratch"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def new_episode_file() -> Path:
    """A new empty file in the scratch folder, named after this process (``episode-<pid>-<random>.mp4``)."""
    fd, name = tempfile.mkstemp(prefix=f"episode-{os.getpid()}-", suffix=".mp4", dir=scratch_dir())
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
    """Delete scratch files whose process is gone; returns what was removed."""
    removed = []
    for path in scratch_dir().iterdir():
        match = _NAME.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
