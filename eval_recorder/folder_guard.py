"""The guarded video folder: one run owns a folder; no one else writes into it.

``claim_folder`` checks everything (a folder that may not be used raises ``FolderRefused``,
whose message says what is wrong and what to do), then takes exclusive OS locks (``flock``,
released by the OS when the process dies) and writes the owner record; the ``FolderClaim``
it returns holds them.

The locks: ``flock`` on the folder itself (its inode cannot be unlinked away while the
folder holds files, so deleting anything inside the folder cannot let a second process
in) and on the lock file (which carries the holder's run id, host and pid for the
"in use by" message, and keeps out runs of versions that locked only that file).

It keeps two files in the folder, never deleted: the lock file (``LOCK_FILE``), which holds
the live holder (run id, host, pid), and the owner record (``OWNER_FILE``): the run that
owns the folder, written once, atomically.

Nothing outside the folder is ever written or trusted: a folder whose control files (lock
file, owner record, manifest, gallery, training record, a video's sidecar or poster) are
symlinks or not regular files is refused, naming the file (``untrusted_file_refusal``), and
they are opened without following a symlink. An empty ``video_dir``, or one that names the
working directory itself, is refused (``check_video_dir``).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from eval_recorder.errors import FolderRefused
from eval_recorder.atomic_files import fsync_dir, open_regular, read_regular, write_temporary
from eval_recorder.gallery import GALLERY
from eval_recorder.naming import run_id_override
from eval_recorder.poster import POSTER_SUFFIX
from eval_recorder.training_record import TRAINING
from eval_recorder.video_index import MANIFEST, read_manifest

__all__ = ["FolderClaim", "LOCK_FILE", "OWNER_FILE", "check_claim", "check_video_dir", "claim_folder", "folder_owner",
           "in_use_refusal", "live_holder", "untrusted_file_refusal"]

LOCK_FILE = ".eval_recorder.lock"
OWNER_FILE = ".eval_recorder-owner.json"

_log = logging.getLogger(__name__)

# flock on a folder's descriptor fails with these where the filesystem cannot lock it (e.g.
# NFS, which emulates flock with byte-range locks that need a file open for writing).
_NO_FOLDER_LOCK = {errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP}


@dataclass
class FolderClaim:
    path: Path  # resolved, symlinks followed
    run_id: str
    owner: dict  # the owner record: the run that first claimed the folder
    _lock_fd: int
    _folder_fd: int = -1  # the folder itself, locked; -1 where the filesystem cannot lock a folder

    def release(self) -> None:
        """Give up the locks (the OS does this too if the process dies); safe twice."""
        for name in ("_lock_fd", "_folder_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                setattr(self, name, -1)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _describe(record: dict) -> str:
    return f"run {record.get('run_id', '?')} (host {record.get('host', '?')}, pid {record.get('pid', '?')})"


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(read_regular(path))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def claim_folder(
    video_dir: str | os.PathLike, *, run_id: str, resume: bool, owner_details: dict | None = None
) -> FolderClaim:
    """Take ``video_dir`` for ``run_id``, or raise FolderRefused having changed nothing.

    Refused: an empty path or the working directory itself (``check_video_dir``); a path
    that cannot be resolved (e.g. a symlink loop), is a file or cannot be created; a folder
    whose control files are symlinks or not regular files (``untrusted_file_refusal``); a
    folder whose owner record is damaged; a folder owned by another run id; a folder of this
    run id unless ``resume``; a folder a live process holds (also after its lock file was
    deleted). ``owner_details`` (e.g. where the run saves checkpoints)
    go into the owner record when this claim creates it.
    """
    path = _resolve(video_dir)
    _check_as_it_is(path, run_id=run_id, resume=resume)
    try:
        path.mkdir(parents=True, exist_ok=True)
        folder_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise _cannot_open(path, error) from None
    lock_fd = -1
    try:
        if not _lock(folder_fd, path):
            os.close(folder_fd)
            folder_fd = -1
        try:
            lock_fd = open_regular(path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        except OSError as error:  # one planted since the check above: never written through
            raise _untrusted(path, path / LOCK_FILE) or _cannot_open(path, error) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(path) from None
        # Checked again under the lock: another run may have claimed it in between.
        owner = _read_owner(path)
        _check_owner(path, owner, run_id=run_id, resume=resume)
        me = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
        try:
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as error:  # only the "in use by" message needs it; the lock is held
            _log.warning("could not record this run as the holder in %s (%s)", path / LOCK_FILE, error.strerror)
        if not owner:
            owner = {**me, **(owner_details or {})}
            try:
                _write_new(path / OWNER_FILE, json.dumps(owner, indent=2) + "\n")
            except OSError as error:
                raise _cannot_open(path, error) from None
    except BaseException:
        for fd in (lock_fd, folder_fd):
            if fd >= 0:
                os.close(fd)
        raise
    return FolderClaim(path=path, run_id=run_id, owner=owner, _lock_fd=lock_fd, _folder_fd=folder_fd)


def check_claim(video_dir: str | os.PathLike, *, run_id: str, resume: bool) -> None:
    """Raise the FolderRefused a claim of ``video_dir`` would meet that the folder as it is
    now tells (also: a live process holds it), creating, locking and writing nothing; for a
    job that claims only later (after its eval runners answered). The claim itself still
    decides: another run may take the folder in between."""
    path = _resolve(video_dir)
    if _check_as_it_is(path, run_id=run_id, resume=resume) and _held(path):
        raise _in_use(path)


def _check_as_it_is(path: Path, *, run_id: str, resume: bool) -> bool:
    """The refusals of ``claim_folder`` that need no lock; whether ``path`` is a folder."""
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as error:  # e.g. a parent folder we may not look into
        raise _cannot_open(path, error) from None
    if exists and not is_dir:
        raise FolderRefused(
            f"recording.video_dir {path} is a file, not a folder; choose another recording.video_dir."
        )
    if is_dir and (untrusted := untrusted_file_refusal(path)) is not None:
        raise untrusted
    owner = _read_owner(path) if is_dir else {}
    if owner and _held(path):  # a live run's folder: name it as live, whatever its id
        raise _in_use(path)
    _check_owner(path, owner, run_id=run_id, resume=resume)
    return is_dir


def folder_owner(video_dir: str | os.PathLike) -> dict:
    """The owner record of video folder ``video_dir``, read without claiming or writing
    anything: {} if it has none (or is no folder); FolderRefused if the record is damaged."""
    path = _resolve(video_dir)
    return _read_owner(path) if path.is_dir() else {}


def in_use_refusal(video_dir: str | os.PathLike) -> FolderRefused | None:
    """The refusal a claim of ``video_dir`` would meet because a live process holds it
    (naming that run), or None; nothing is locked or written to tell."""
    path = _resolve(video_dir)
    return _in_use(path) if path.is_dir() and _held(path) else None


def check_video_dir(video_dir: str | os.PathLike) -> None:
    """FolderRefused if ``video_dir`` names no folder of its own: empty (``recording.video_dir=``)
    or the working directory itself (``.``) or a folder above it (``..``), which would put
    the videos and the folder's control files among the user's own files."""
    text = os.fspath(video_dir)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    advice = ("give the videos a folder of their own (e.g. recording.video_dir=videos), or leave "
              "recording.video_dir out for the default inside the run's folder.")
    if not text.strip():
        raise FolderRefused(f"recording.video_dir is empty, which would put the videos into the working directory "
                            f"{os.getcwd()}; {advice}")
    if set(Path(os.path.normpath(text)).parts) <= {".", ".."}:
        raise FolderRefused(f"recording.video_dir={text} is the working directory {os.getcwd()} or a folder above "
                            f"it, not a folder of its own; {advice}")


def live_holder(video_dir: str | os.PathLike) -> dict | None:
    """The live holder of video folder ``video_dir`` as its lock file records it (run id,
    host, pid; {} if that record is missing or damaged), or None if no live process holds
    it; nothing is locked or written to tell."""
    path = Path(video_dir)
    try:
        if not path.is_dir() or not _held(path):
            return None
    except OSError:
        return None
    return _holder(path / LOCK_FILE)


def _resolve(video_dir: str | os.PathLike) -> Path:
    """``video_dir`` with ``~`` expanded and symlinks followed, or FolderRefused."""
    check_video_dir(video_dir)
    try:
        return Path(video_dir).expanduser().resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, or ~user unknown
        if getattr(error, "errno", None) == errno.ELOOP or "loop" in str(error).lower():
            why = "a symlink loop"
        else:
            why = getattr(error, "strerror", None) or str(error)
        raise FolderRefused(
            f"recording.video_dir {video_dir} cannot be resolved to a folder ({why}); "
            f"choose another recording.video_dir."
        ) from None


def _cannot_open(path: Path, error: OSError) -> FolderRefused:
    return FolderRefused(
        f"cannot create or open video folder {path} ({error.strerror}); choose a writable recording.video_dir."
    )


def _lock(folder_fd: int, path: Path) -> bool:
    """Lock the folder itself; False where its filesystem cannot (the lock file still guards)."""
    try:
        fcntl.flock(folder_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(path) from None
    except OSError as error:
        if error.errno not in _NO_FOLDER_LOCK:
            raise _cannot_open(path, error) from None
        _log.warning("the filesystem of %s cannot lock a folder (%s); only %s guards it, so do not delete that "
                     "file while the run is live", path, error.strerror, LOCK_FILE)
        return False
    return True


def _held(path: Path) -> bool:
    """Whether a live process holds folder ``path`` (its folder lock or its lock file's),
    as Linux's /proc/locks tells; False where that cannot be told (the claim finds out)."""
    return _flock_holder_pid(path) is not None or _flock_holder_pid(path / LOCK_FILE) is not None


def _in_use(path: Path) -> FolderRefused:
    """The refusal naming the live process that holds ``path``, with advice that works
    while it lives."""
    holder = _holder(path / LOCK_FILE)
    if holder.get("run_id"):
        holder_id = holder["run_id"]
        who = f"run {holder_id}, pid {holder.get('pid', '?')}, since {_since(holder.get('started'))} " \
              f"(host {holder.get('host', '?')})"
        return FolderRefused(
            f"video folder {path} is in use by {who}; choose another recording.video_dir, or wait for run "
            f"{holder_id} to end and continue it with recording.resume=true {run_id_override(holder_id)}."
        )
    # the lock file was deleted (or damaged) under the live holder
    pid = _flock_holder_pid(path)
    who = (f"another live process (pid {pid}, host {socket.gethostname()})" if pid
           else "another live process")
    return FolderRefused(
        f"video folder {path} is in use by {who} whose lock file {LOCK_FILE} is missing or damaged; "
        f"choose another recording.video_dir, or wait for that process to end."
    )


def _since(started) -> str:
    """``2026-12-02 10:05:31 UTC`` from the holder's ISO start time (as written by ``_now``)."""
    try:
        moment = datetime.datetime.fromisoformat(str(started)).astimezone(datetime.timezone.utc)
    except ValueError:
        return "an unknown time"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _holder(lock_file: Path, wait_s: float = 2.0) -> dict:
    """The live holder recorded in the lock file; a holder that has just taken the lock
    writes it a moment later, so wait briefly for it (not when the file is gone)."""
    deadline = time.monotonic() + wait_s
    while not (holder := _read_json(lock_file)) and lock_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def _flock_holder_pid(path: Path) -> int | None:
    """The pid holding a ``flock`` on ``path`` (a folder or a file, not followed if a
    symlink), from Linux's /proc/locks; None if unknown."""
    try:
        st = os.stat(path, follow_symlinks=False)
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2162850 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and int(fields[4]) > 0:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def _read_owner(path: Path) -> dict:
    """The owner record of folder ``path`` ({} if there is none), or FolderRefused if it is
    damaged: a damaged record must never pass for "no owner"."""
    owner_file = path / OWNER_FILE
    try:
        text = read_regular(owner_file)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise _untrusted(path, owner_file) or _damaged(path, owner_file, f"cannot be read: {error.strerror}") from None
    try:
        record = json.loads(text)
    except ValueError:
        raise _damaged(path, owner_file, "empty" if not text.strip() else "not valid JSON") from None
    if not isinstance(record, dict):
        raise _damaged(path, owner_file, "not a JSON object")
    if not isinstance(record.get("run_id"), str) or not record["run_id"]:
        raise _damaged(path, owner_file, "no run_id in it")
    return record


def _damaged(path: Path, owner_file: Path, why: str) -> FolderRefused:
    return FolderRefused(
        f"the owner record {owner_file} is damaged ({why}); restore it from a backup, or delete it if no other "
        f"run uses video folder {path} (each video's name carries its run id), or choose another "
        f"recording.video_dir."
    )


def _check_owner(path: Path, owner: dict, *, run_id: str, resume: bool) -> None:
    if owner and owner.get("run_id") != run_id:
        raise FolderRefused(
            f"video folder {path} belongs to {_describe(owner)}; choose another recording.video_dir, "
            f"or resume that run with recording.resume=true {run_id_override(str(owner.get('run_id')))}."
        )
    if owner and not resume:
        raise FolderRefused(
            f"video folder {path} already holds videos of run {run_id}; to continue that run set "
            f"recording.resume=true, or choose another recording.video_dir."
        )


# The folder's own files, by the name the refusal gives them.
_CONTROL_FILES = {
    LOCK_FILE: "lock file",
    OWNER_FILE: "owner record",
    MANIFEST: "manifest",
    GALLERY: "gallery",
    TRAINING: "training record",
}
_VIDEO_FILES = {".json": "sidecar", POSTER_SUFFIX: "poster"}  # beside each video, by suffix


def untrusted_file_refusal(video_dir: str | os.PathLike) -> FolderRefused | None:
    """The refusal of folder ``video_dir`` if one of its control files (``_CONTROL_FILES``,
    and the sidecar and poster of every video in it or in its manifest) is a symlink or not
    a regular file, naming the first such file; None if they are all regular (or absent).
    Nothing is followed, opened for writing or changed to tell."""
    path = Path(video_dir)
    for name in _CONTROL_FILES:
        if (refusal := _untrusted(path, path / name)) is not None:
            return refusal
    try:
        with os.scandir(path) as entries:
            names = sorted(entry.name for entry in entries)
        listed = [record["file"] for record in read_manifest(path) if isinstance(record.get("file"), str)]
    except OSError:  # the folder cannot be listed: the claim finds out and says so
        return None
    stems = {name.removesuffix(".mp4") for name in (*names, *listed) if name.endswith(".mp4")}
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix}" in _VIDEO_FILES and stem in stems:
            if (refusal := _untrusted(path, path / name)) is not None:
                return refusal
    return None


def _untrusted(path: Path, file: Path) -> FolderRefused | None:
    """The refusal of folder ``path`` because its control file ``file`` is a symlink or not
    a regular file; None if it is a regular file or there is none."""
    try:
        info = os.lstat(file)
    except OSError:
        return None
    if stat.S_ISREG(info.st_mode):
        return None
    role = _CONTROL_FILES.get(file.name) or _VIDEO_FILES.get(file.suffix, "file")
    return FolderRefused(
        f"the {role} {file} is {_kind(file, info.st_mode)}, not a regular file, and nothing outside a video folder "
        f"is ever written or trusted, so video folder {path} is refused; put the regular file in its place or "
        f"remove it, or choose another recording.video_dir."
    )


def _kind(file: Path, mode: int) -> str:
    if stat.S_ISLNK(mode):
        try:
            return f"a symlink to {os.readlink(file)}"
        except OSError:
            return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (fifo)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "something else"


def _write_new(path: Path, text: str) -> None:
    """``text`` appears complete at ``path`` (temporary file, then a hard link that fails
    rather than overwrite), so a crash can never leave a cut-short owner record."""
    tmp = write_temporary(path.parent, path.name, text.encode())
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
