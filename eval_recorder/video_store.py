"""Writing videos into the (claimed) video folder: atomic, never overwriting, append-only.

Holds:
  MANIFEST          the manifest file name (one JSON line per video, append-only).
  VideoStore        writes an mp4 + its JSON sidecar under a name no file has, each
                    complete before it appears, and appends the manifest line.
  read_manifest()   the records of a folder's manifest.
  append_record()   appends one JSON line to a manifest; a last line cut short by a crash
                    never swallows it.
  write_temporary() / fsync_dir()   the flushed hidden temporary file and the folder
                    flush that every atomic write here is made of.

How a file appears: its bytes go to a hidden temporary name in the same folder, are
flushed to disk, then a hard link gives them the final name (``os.link`` fails if the
name exists, so nothing is ever overwritten, even by another process); the temporary
name is then dropped. A file under a final name is therefore always complete.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path

from eval_recorder.naming import numbered_stem, video_metadata

__all__ = ["MANIFEST", "VideoStore", "append_record", "fsync_dir", "read_manifest", "write_temporary"]

MANIFEST = "manifest.jsonl"
_MAX_NAME_ATTEMPTS = 10_000


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


class VideoStore:
    """Stores finished videos in ``folder`` (which the caller has claimed)."""

    def __init__(self, folder: Path, *, run_id: str) -> None:
        self.folder = Path(folder)
        self.run_id = run_id

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def store(self, *, episode, stem: str, tag, evaluation_round: int, episode_index: int,
              checkpoint: str | None) -> tuple[Path, dict]:
        """Write ``episode``'s mp4 and sidecar under ``stem`` (or the next free variant)."""
        sha256 = hashlib.sha256(episode.mp4).hexdigest()
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        for attempt in range(1, _MAX_NAME_ATTEMPTS + 1):
            name = numbered_stem(stem, attempt)
            # The sidecar name is reserved with the video: a taken one also moves us on.
            if (self.folder / f"{name}.json").exists():
                continue
            video_path = self.folder / f"{name}.mp4"
            if self._publish(episode.mp4, video_path):
                break
        else:
            raise FileExistsError(f"no free name for {stem} in {self.folder}")
        metadata = video_metadata(
            episode=episode,
            tag=tag,
            evaluation_round=evaluation_round,
            episode_index=episode_index,
            run_id=self.run_id,
            checkpoint=checkpoint,
            file_name=video_path.name,
            sha256=sha256,
            created=created,
        )
        text = json.dumps(metadata, indent=2) + "\n"
        if not self._publish(text.encode(), video_path.with_suffix(".json")):
            raise FileExistsError(f"sidecar {video_path.with_suffix('.json')} appeared while writing")
        append_record(self.manifest_path, metadata)
        return video_path, metadata

    def _publish(self, data: bytes, final: Path) -> bool:
        """Make ``data`` appear complete at ``final``; False (nothing changed) if taken."""
        tmp = write_temporary(self.folder, final.name, data)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()  # our own temporary name; the data lives on under `final`
        fsync_dir(self.folder)
        return True


def write_temporary(folder: Path, name: str, data: bytes) -> Path:
    """``data``, flushed to disk, under a new hidden temporary name for ``name`` in
    ``folder`` (``.<name>.<random>.tmp``, mode 0644); nothing is left if writing fails."""
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (new names) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
