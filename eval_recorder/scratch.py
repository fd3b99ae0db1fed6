"""Scratch files of eval runners: where an episode's mp4 is encoded before it is finished.

Holds:
  scratch_dir()         ``<system temp>/eval_recorder-scratch``: on the runner's own machine,
                        never the video folder (which only the driver writes).
  new_episode_file()    a new empty file there, named after this process
                        (``episode-<pid>-<random>.mp4``).
  remove_orphans()      removes the files of processes that no longer run: an eval runner
                        killed mid-episode leaves its unfinished file, and the runner that
                        replaces it cleans up, so no partial file stays anywhere.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["new_episode_file", "remove_orphans", "scratch_dir"]

_NAME = re.compile(r"^episode-(\d+)-[^/]+\.mp4$")


def scratch_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "eval_recorder-scratch"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def new_episode_file() -> Path:
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
