"""Writing videos into the (claimed) video folder: atomic, never overwriting, append-only.

``VideoStore`` writes an mp4 and its JSON sidecar under a name no file has, each complete
before it appears, and appends the video's line to the folder's manifest (one JSON line per
video); when the folder cannot take a video it raises ``StoreFailed`` (which folder, what
happened, how much space is needed). ``reconcile_index`` makes the index (sidecars +
manifest) of a run's videos complete after a crash. The atomic-write pieces
(``write_temporary``, ``fsync_dir``) serve the folder guard and the gallery too.

How a file appears: its bytes go to a hidden temporary name in the same folder, are
flushed to disk, then a hard link gives them the final name (``os.link`` fails if the
name exists, so nothing is ever overwritten, even by another process); the temporary
name is then dropped. A file under a final name is therefore always complete. A video
gets its name first, then its sidecar, then its manifest line; a crash (or a full disk)
between them leaves a video without index entries, which ``reconcile_index`` adds.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from eval_recorder.errors import StoreFailed
from eval_recorder.naming import numbered_stem, parse_video_name, video_metadata

__all__ = [
    "MANIFEST",
    "VideoStore",
    "append_record",
    "free_bytes",
    "fsync_dir",
    "read_manifest",
    "reconcile_index",
    "write_temporary",
]

MANIFEST = "manifest.jsonl"
_MAX_NAME_ATTEMPTS = 10_000

_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.ESTALE}

_log = logging.getLogger(__name__)


def read_manifest(folder: str | os.PathLike) -> list[dict]:
    """Every record of ``folder``'s manifest, in the order written (complete lines only)."""
    try:
        data = (Path(folder) / MANIFEST).read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash is not a record (nor an empty one)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def append_record(manifest: Path, record: dict) -> None:
    """Append ``record`` as one JSON line to ``manifest``, flushed to disk.

    If the manifest's last line was cut short (a crash mid-append), a newline goes first,
    so the torn line stays a line of its own (which readers skip) and never swallows this
    record. If writing fails, the bytes of this append that got in are taken back.
    """
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(manifest, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # a torn line stays; readers skip it and the next append starts a new line
            raise
    finally:
        os.close(fd)


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still write on ``folder``'s filesystem; None if the
    folder cannot be examined (e.g. it is gone)."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


@dataclass
class _Unindexed:
    """A video under its final name whose sidecar (and manifest line) are still to write."""

    video: Path
    metadata: dict
    sidecar_written: bool = False


class VideoStore:
    """Stores finished videos in ``folder`` (which the caller has claimed)."""

    def __init__(self, folder: Path, *, run_id: str) -> None:
        self.folder = Path(folder)
        self.run_id = run_id
        self._unindexed: list[_Unindexed] = []

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    @property
    def unindexed(self) -> list[Path]:
        """Videos stored whose sidecar or manifest line could not be written yet."""
        return [item.video for item in self._unindexed]

    def can_store(self, nbytes: int) -> bool:
        """Whether the folder exists and its filesystem has room for a video of ``nbytes``
        plus its sidecar and manifest line (a cheap check before trying again)."""
        try:
            stats = os.statvfs(self.folder)
        except OSError:
            return False
        block = stats.f_frsize or 4096
        return self.folder.is_dir() and stats.f_bavail * block >= nbytes + 3 * block + 16_384

    def store(self, *, episode, stem: str, tag, evaluation_round: int, episode_index: int,
              checkpoint: str | None) -> tuple[Path, dict]:
        """Write ``episode``'s mp4 and sidecar under ``stem`` (or the next free variant)
        and append its manifest line; StoreFailed if the folder cannot take them.

        Index entries that an earlier call could not write go first.
        """
        sha256 = hashlib.sha256(episode.mp4).hexdigest()
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")

        def metadata_for(file_name: str) -> dict:
            return video_metadata(
                episode=episode, tag=tag, evaluation_round=evaluation_round, episode_index=episode_index,
                run_id=self.run_id, checkpoint=checkpoint, file_name=file_name, sha256=sha256, created=created,
            )

        needed = len(episode.mp4) + _index_bytes(metadata_for(f"{stem}.mp4"))
        not_stored = "the video was not stored"
        try:
            self._write_unindexed()
        except StoreFailed as error:
            raise _store_failed(error.__cause__ or error, folder=self.folder, needs=f"storing {stem}.mp4 needs",
                               needed=needed + error.needed_bytes, consequence=not_stored) from error
        try:
            video_path = self._publish_video(episode.mp4, stem)
        except FileExistsError:
            raise
        except OSError as error:
            raise _store_failed(error, folder=self.folder, needs=f"storing {stem}.mp4 needs", needed=needed,
                               consequence=not_stored) from error
        item = _Unindexed(video_path, metadata_for(video_path.name))
        try:
            self._write_index(item)
        except FileExistsError:
            raise
        except OSError as error:
            self._unindexed.append(item)
            raise self._index_failed(error, item) from error
        return video_path, item.metadata

    def reconcile(self) -> list[dict]:
        """Complete the index of this run's videos: first the entries this store could not
        write (with their full records), then ``reconcile_index`` for what a crash left.
        Returns the records added by ``reconcile_index`` (recovered ones); StoreFailed if
        the folder still cannot take them."""
        self._write_unindexed()
        return reconcile_index(self.folder, run_id=self.run_id)

    def _publish_video(self, mp4: bytes, stem: str) -> Path:
        for attempt in range(1, _MAX_NAME_ATTEMPTS + 1):
            name = numbered_stem(stem, attempt)
            # The sidecar name is reserved with the video: a taken one also moves us on.
            if (self.folder / f"{name}.json").exists():
                continue
            video_path = self.folder / f"{name}.mp4"
            if _publish(self.folder, mp4, video_path):
                return video_path
        raise FileExistsError(f"no free name for {stem} in {self.folder}")

    def _write_index(self, item: _Unindexed) -> None:
        if not item.sidecar_written:
            sidecar = item.video.with_suffix(".json")
            text = json.dumps(item.metadata, indent=2) + "\n"
            if not _publish(self.folder, text.encode(), sidecar):
                raise FileExistsError(f"sidecar {sidecar} appeared while writing")
            item.sidecar_written = True
        append_record(self.manifest_path, item.metadata)

    def _write_unindexed(self) -> None:
        """Write the index entries earlier calls could not; StoreFailed if still impossible."""
        if not self._unindexed:
            return
        listed = {record.get("file") for record in read_manifest(self.folder)}
        while self._unindexed:
            item = self._unindexed[0]
            if item.video.name in listed:  # reconcile_index got there first
                self._unindexed.pop(0)
                continue
            if not item.sidecar_written and item.video.with_suffix(".json").exists():
                item.sidecar_written = True  # written by reconcile_index; its manifest line follows
            try:
                self._write_index(item)
            except OSError as error:
                raise self._index_failed(error, item) from error
            self._unindexed.pop(0)

    def _index_failed(self, error: OSError, item: _Unindexed) -> StoreFailed:
        return _store_failed(
            error, folder=self.folder, needs=f"the sidecar and manifest line of {item.video.name} need",
            needed=_index_bytes(item.metadata), video=item.video, metadata=item.metadata,
            consequence="the video is stored; its sidecar and manifest line follow when the folder takes writes again",
        )


def _store_failed(error: BaseException, *, folder: Path, needs: str, needed: int, consequence: str,
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


def _index_bytes(metadata: dict) -> int:
    """Bytes of a video's sidecar plus its manifest line (each ends with a newline)."""
    return len(json.dumps(metadata, indent=2)) + len(json.dumps(metadata, separators=(",", ":"))) + 2


def _size(nbytes: int) -> str:
    if nbytes < 1000:
        return f"{nbytes} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if nbytes < scale * 999.95:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 1e12:.1f} TB"


def _publish(folder: Path, data: bytes, final: Path) -> bool:
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


def _drop(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError as error:  # e.g. the filesystem turned read-only; the hidden name is ignored by all
        _log.debug("could not remove temporary file %s: %s", tmp, error)


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


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (new names) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Reconciling the index with the videos in the folder


def reconcile_index(folder: str | os.PathLike, *, run_id: str) -> list[dict]:
    """Give every final-named mp4 of ``run_id`` in ``folder`` its sidecar and exactly one
    manifest line; the records appended to the manifest, in name order.

    * sidecar, no manifest line: the sidecar's record is appended;
    * no sidecar: the mp4 is decoded in full; a record of what its name and the file tell
      (unknown facts null, ``"recovered": true``) becomes its sidecar and manifest line. A
      file that does not decode fully is left as it is and logged, never deleted;
    * manifest line, no sidecar: the sidecar is written from the manifest line.

    Other runs' files, hidden temporary files and anything that is not a regular file are
    never touched. Idempotent. Only the holder of the folder's claim may call it (it
    writes). A write that fails raises StoreFailed; what was added stays, and a later
    call completes the rest.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    listed: dict[str, dict] = {}
    for record in read_manifest(folder):
        if isinstance(record.get("file"), str):
            listed.setdefault(record["file"], record)
    added = []
    with os.scandir(folder) as entries:
        videos = sorted(entry.name for entry in entries
                        if parse_video_name(entry.name, run_id) is not None and entry.is_file(follow_symlinks=False))
    for name in videos:
        video = folder / name
        sidecar = video.with_suffix(".json")
        record = listed.get(name)
        try:
            if name in listed:
                if not os.path.lexists(sidecar):
                    text = json.dumps(listed[name], indent=2) + "\n"
                    if _publish(folder, text.encode(), sidecar):
                        _log.info("wrote the missing sidecar of %s from its manifest line", video)
                continue
            record = _sidecar_record(sidecar, name, run_id)
            if record is None:
                record = _recovered_record(video, parse_video_name(name, run_id))
                if record is None:
                    continue
                if not os.path.lexists(sidecar):
                    _publish(folder, (json.dumps(record, indent=2) + "\n").encode(), sidecar)
            elif record.get("run_id") != run_id:
                continue  # another run's video whose id makes the same name (e.g. run "a-2" vs "a")
            append_record(manifest, record)
        except OSError as error:
            raise _store_failed(error, folder=folder, needs=f"indexing {name} needs",
                               needed=_index_bytes(record) if record else 4096, video=video,
                               consequence=f"{name} stays unindexed until the index is reconciled again") from error
        listed[name] = record
        added.append(record)
    return added


def _sidecar_record(sidecar: Path, name: str, run_id: str) -> dict | None:
    """The record in ``sidecar`` if it is one for video ``name``; None if there is no
    usable sidecar (a damaged one is logged and left as it is)."""
    try:
        record = json.loads(sidecar.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        _log.warning("sidecar %s cannot be read (%s); left as it is, the video is indexed from the file", sidecar,
                     error)
        return None
    if not isinstance(record, dict) or record.get("file") != name:
        _log.warning("sidecar %s is not the record of %s; left as it is, the video is indexed from the file",
                     sidecar, name)
        return None
    return record


def _recovered_record(video: Path, named: dict) -> dict | None:
    """The record of a video that lost its sidecar to a crash: facts from its name
    (``named``: naming.parse_video_name's) and the file, unknown ones null; None (logged)
    if the file does not decode fully."""
    probe = _decode_fully(video)
    if probe is None:
        return None
    stat = video.stat()
    with open(video, "rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    created = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc)
    return {
        "file": video.name,
        "env": named["env"],
        "training_iteration": named["training_iteration"],
        "env_steps": None,
        "evaluation_round": named["evaluation_round"],
        "episode_index": named["episode_index"],
        "env_seed": None,
        "episode_length": None,
        "episode_return": None,
        "agent_returns": None,
        "frames": probe["frames"],
        "frame_every": None,
        "fps": probe["fps"],
        "width": probe["width"],
        "height": probe["height"],
        "run_id": named["run_id"],
        "checkpoint": None,
        "created": created.isoformat(timespec="milliseconds"),
        "bytes": stat.st_size,
        "sha256": sha256,
        "weights_seq_no": None,
        "runner": None,
        "recovered": True,
    }


def _decode_fully(video: Path) -> dict | None:
    """frames, fps, width, height of ``video`` if every frame it declares decodes; None
    (logged) if not."""
    import av

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            declared = stream.frames
            frames, width, height = 0, stream.codec_context.width, stream.codec_context.height
            for frame in container.decode(stream):
                frames += 1
                width, height = frame.width, frame.height
            rate = stream.average_rate or stream.base_rate
    except (av.FFmpegError, OSError, IndexError, ValueError) as error:
        _log.warning("video %s does not decode (%s); left as it is, not indexed", video, error)
        return None
    if frames == 0 or (declared and frames < declared):
        _log.warning("video %s decodes only %d of %d frames; left as it is, not indexed", video, frames, declared)
        return None
    fps = None
    if rate:
        fps = int(rate) if rate.denominator == 1 else round(float(rate), 3)
    return {"frames": frames, "fps": fps, "width": width, "height": height}
