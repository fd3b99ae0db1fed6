"""The guarded video folder: one run owns a folder; no one else writes into it.

Holds:
  FolderRefused     the error raised when a folder may not be used; its message says
                    what is wrong and what to do.
  FolderClaim       a held claim on a folder: an exclusive OS lock (``flock``, released
                    by the OS when the process dies) plus the owner record.
  claim_folder()    checks everything, then takes the lock and writes the owner record.

Files it keeps in the folder (never deleted):
  .eval_recorder.lock        the lock file; holds the live holder (run id, host, pid).
  .eval_recorder-owner.json  the run that owns the folder, written once.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FolderClaim", "FolderRefused", "LOCK_FILE", "OWNER_FILE", "claim_folder"]

LOCK_FILE = ".eval_recorder.lock"
OWNER_FILE = ".eval_recorder-owner.json"


class FolderRefused(Exception):
    """This run may not use the video folder (message: what is wrong, what to do)."""


@dataclass
class FolderClaim:
    path: Path  # resolved, symlinks followed
    run_id: str
    owner: dict  # the owner record: the run that first claimed the folder
    _lock_fd: int

    def release(self) -> None:
        """Give up the lock (the OS does this too if the process dies)."""
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _describe(record: dict) -> str:
    return f"run {record.get('run_id', '?')} (host {record.get('host', '?')}, pid {record.get('pid', '?')})"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def claim_folder(
    video_dir: str | os.PathLike, *, run_id: str, resume: bool, owner_details: dict | None = None
) -> FolderClaim:
    """Take ``video_dir`` for ``run_id``, or raise FolderRefused having changed nothing.

    Refused: a path that is a file or cannot be created; a folder owned by another run
    id; a folder of this run id unless ``resume``; a folder whose lock a live process
    holds. ``owner_details`` (e.g. where the run saves checkpoints) go into the owner
    record when this claim creates it.
    """
    path = Path(video_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise FolderRefused(
            f"recording.video_dir {path} is a file, not a folder; choose another recording.video_dir."
        )
    owner = _read_json(path / OWNER_FILE) if path.is_dir() else {}
    _check_owner(path, owner, run_id=run_id, resume=resume)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise FolderRefused(
            f"cannot create or open video folder {path} ({error.strerror}); choose a writable recording.video_dir."
        ) from error
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(path / LOCK_FILE)
        os.close(lock_fd)
        raise FolderRefused(
            f"video folder {path} is in use by {_describe(holder)}; choose another recording.video_dir, "
            f"or wait for that run to end and resume it with recording.resume=true."
        ) from None
    # Checked again under the lock: another run may have claimed it in between.
    owner = _read_json(path / OWNER_FILE)
    try:
        _check_owner(path, owner, run_id=run_id, resume=resume)
    except FolderRefused:
        os.close(lock_fd)
        raise
    me = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, (json.dumps(me) + "\n").encode(), 0)
    if not owner:
        owner = {**me, **(owner_details or {})}
        _write_new(path / OWNER_FILE, json.dumps(owner, indent=2) + "\n")
    return FolderClaim(path=path, run_id=run_id, owner=owner, _lock_fd=lock_fd)


def _holder(lock_file: Path, wait_s: float = 2.0) -> dict:
    """The live holder recorded in the lock file; a holder that has just taken the lock
    writes it a moment later, so wait briefly for it."""
    deadline = time.monotonic() + wait_s
    while not (holder := _read_json(lock_file)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def _check_owner(path: Path, owner: dict, *, run_id: str, resume: bool) -> None:
    if owner and owner.get("run_id") != run_id:
        raise FolderRefused(
            f"video folder {path} belongs to {_describe(owner)}; choose another recording.video_dir, "
            f"or resume that run with recording.resume=true wandb.run_id={owner.get('run_id')}."
        )
    if owner and not resume:
        raise FolderRefused(
            f"video folder {path} already holds videos of run {run_id}; to continue that run set "
            f"recording.resume=true, or choose another recording.video_dir."
        )


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
