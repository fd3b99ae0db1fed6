"""The index of a video folder: its manifest (one JSON line per video, ``MANIFEST``) and
the videos' JSON sidecars. ``read_manifest`` reads the complete lines, ``append_record``
adds one, flushed, that a line cut short by a crash cannot swallow; ``reconcile_index``
gives every video of a run that a crash left unindexed its missing sidecar and manifest
line (from what its name and file tell, when no record of it survived).

``find_altered`` checks every listed video's size and sha256 against its record (a third
party cut or replaced it under its final name); ``mark_altered`` appends a mark line for
one (append-only: records are never rewritten, and the video is never touched), which
``read_marks`` reads back and ``read_manifest`` leaves out. Every file is opened without
following a symlink (``atomic_files.open_regular``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from eval_recorder.atomic_files import open_regular, publish_file, read_regular
from eval_recorder.naming import parse_video_name
from eval_recorder.store_failure import store_failed

__all__ = ["ALTERED", "Alteration", "MANIFEST", "append_record", "find_altered", "index_bytes", "mark_altered",
           "mark_restored", "read_manifest", "read_marks", "reconcile_index"]

MANIFEST = "manifest.jsonl"
ALTERED = "altered"  # the key of a mark line: the name of the video it marks

_log = logging.getLogger(__name__)


def read_manifest(folder: str | os.PathLike) -> list[dict]:
    """Every episode record of ``folder``'s manifest, in the order written (complete lines
    only; the marks of altered videos, ``read_marks``, are none): a video's has ``file``, an
    episode kept without a video (``recording.select``) has only ``record``. [] if there is
    no manifest; OSError if it is a symlink (never followed) or not a regular file.

    An episode rendered later (``render_later``) has its video's line appended after its line
    without a video: the video's line takes that line's place (same run id and ``record``)."""
    records = [record for record in _manifest_lines(folder) if ALTERED not in record]
    waiting = {(record.get("run_id"), record["record"]): index for index, record in enumerate(records)
               if "file" not in record and isinstance(record.get("record"), str)}
    if not waiting:
        return records
    out: list[dict | None] = list(records)
    for index, record in enumerate(records):
        key = (record.get("run_id"), record.get("record"))
        if isinstance(record.get("file"), str) and waiting.get(key, index) < index:
            out[waiting.pop(key)] = record
            out[index] = None
    return [record for record in out if record is not None]


def read_marks(folder: str | os.PathLike) -> dict[str, dict]:
    """{file name: its latest mark} of the videos of ``folder`` that were found altered
    after they were stored (``mark_altered``)."""
    return {record[ALTERED]: record for record in _manifest_lines(folder) if isinstance(record.get(ALTERED), str)}


def _manifest_lines(folder: str | os.PathLike) -> list[dict]:
    try:
        data = read_regular(Path(folder) / MANIFEST)
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
    """Append ``record`` as one JSON line to ``manifest`` (or another JSON-lines file of
    the folder; a symlink is not followed, and anything but a regular file is refused
    with OSError), flushed to disk.

    If the manifest's last line was cut short (a crash mid-append), a newline goes first,
    so the torn line stays a line of its own (which readers skip) and never swallows this
    record. If writing fails, the bytes of this append that got in are taken back.
    """
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = open_regular(manifest, os.O_RDWR | os.O_CREAT | os.O_APPEND)
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


@dataclass(frozen=True)
class Alteration:
    """A listed video whose file no longer is what its manifest record says (``find_altered``)."""

    file: str
    why: str  # e.g. "1200 bytes, 48213 when stored"
    record: dict  # its manifest record
    found_bytes: int | None  # None: not a regular file any more
    found_sha256: str | None
    new: bool  # not marked so already (a mark of the same bytes)


def find_altered(folder: str | os.PathLike) -> tuple[list[Alteration], list[str]]:
    """(the listed videos of ``folder`` whose size or sha256 differ from their manifest
    record, in manifest order; the marked videos whose file matches its record again).

    Every listed video present is read in full (a video that is gone is none of these;
    one that is a symlink or not a regular file now is altered, and never followed)."""
    folder = Path(folder)
    marks = read_marks(folder)
    altered, restored, seen = [], [], set()
    for record in read_manifest(folder):
        name = record.get("file")
        if not isinstance(name, str) or name in seen or "/" in name or name in ("", ".", ".."):
            continue
        seen.add(name)
        recorded_bytes, recorded_sha256 = record.get("bytes"), record.get("sha256")
        if not isinstance(recorded_bytes, int) or not isinstance(recorded_sha256, str):
            continue  # nothing to check it against
        try:
            found = _size_and_sha256(folder / name)
        except FileNotFoundError:
            continue
        mark = marks.get(name)
        if found == (recorded_bytes, recorded_sha256):
            if mark is not None and not mark.get("restored"):
                restored.append(name)
            continue
        if found is None:
            why = "no longer a regular file"
        elif found[0] != recorded_bytes:
            why = f"{found[0]} bytes, {recorded_bytes} when stored"
        else:
            why = "same size, other bytes (its sha256 differs)"
        found_bytes, found_sha256 = found if found is not None else (None, None)
        new = mark is None or bool(mark.get("restored")) or (mark.get("found_bytes"), mark.get("found_sha256")) != (
            found_bytes, found_sha256)
        altered.append(Alteration(name, why, record, found_bytes, found_sha256, new))
    return altered, restored


def _size_and_sha256(video: Path) -> tuple[int, str] | None:
    """(bytes, sha256) of the regular file ``video``; None if it is a symlink or not a
    regular file; FileNotFoundError if there is none."""
    try:
        fd = open_regular(video)
    except FileNotFoundError:
        raise
    except OSError:
        try:
            mode = os.lstat(video).st_mode
        except FileNotFoundError:
            raise
        if stat.S_ISREG(mode):
            raise  # e.g. unreadable: a fault of the folder, not an alteration
        return None
    with os.fdopen(fd, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return os.fstat(handle.fileno()).st_size, digest


def mark_altered(folder: str | os.PathLike, alteration: Alteration, *, found: str | None = None) -> dict:
    """Append the mark of ``alteration`` to ``folder``'s manifest (the video and its record
    stay as they are); the mark. OSError if it cannot be written."""
    mark = {
        ALTERED: alteration.file,
        "run_id": alteration.record.get("run_id"),
        "found": found or _now(),
        "why": alteration.why,
        "found_bytes": alteration.found_bytes,
        "found_sha256": alteration.found_sha256,
        "bytes": alteration.record.get("bytes"),
        "sha256": alteration.record.get("sha256"),
    }
    append_record(Path(folder) / MANIFEST, mark)
    return mark


def mark_restored(folder: str | os.PathLike, name: str, *, found: str | None = None) -> dict:
    """Append the mark that video ``name``, marked altered before, matches its record again."""
    mark = {ALTERED: name, "found": found or _now(), "restored": True}
    append_record(Path(folder) / MANIFEST, mark)
    return mark


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def index_bytes(metadata: dict) -> int:
    """Bytes of a video's sidecar plus its manifest line (each ends with a newline)."""
    return len(json.dumps(metadata, indent=2)) + len(json.dumps(metadata, separators=(",", ":"))) + 2


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
                    if publish_file(folder, text.encode(), sidecar):
                        _log.info("wrote the missing sidecar of %s from its manifest line", video)
                continue
            record = _sidecar_record(sidecar, name, run_id)
            if record is None:
                record = _recovered_record(video, parse_video_name(name, run_id))
                if record is None:
                    continue
                if not os.path.lexists(sidecar):
                    publish_file(folder, (json.dumps(record, indent=2) + "\n").encode(), sidecar)
            elif record.get("run_id") != run_id:
                continue  # another run's video whose id makes the same name (e.g. run "a-2" vs "a")
            append_record(manifest, record)
        except OSError as error:
            raise store_failed(error, folder=folder, needs=f"indexing {name} needs",
                              needed=index_bytes(record) if record else 4096, video=video,
                              consequence=f"{name} stays unindexed until the index is reconciled again") from error
        listed[name] = record
        added.append(record)
    return added


def _sidecar_record(sidecar: Path, name: str, run_id: str) -> dict | None:
    """The record in ``sidecar`` if it is one for video ``name``; None if there is no
    usable sidecar (a damaged one is logged and left as it is)."""
    try:
        record = json.loads(read_regular(sidecar))
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
    with os.fdopen(open_regular(video), "rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
        info = os.fstat(handle.fileno())
    created = datetime.datetime.fromtimestamp(info.st_mtime, datetime.timezone.utc)
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
        "bytes": info.st_size,
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
        fps = rate.numerator if rate.denominator == 1 else round(float(rate), 3)  # PyAV 19: no int(rate)
    return {"frames": frames, "fps": fps, "width": width, "height": height}
