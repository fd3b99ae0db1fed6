"""The index of a video folder: its manifest (one JSON line per video, ``MANIFEST``) and
the videos' JSON sidecars. ``read_manifest`` reads the complete lines, ``append_record``
adds one, flushed, that a line cut short by a crash cannot swallow; ``reconcile_index``
gives every video of a run that a crash left unindexed its missing sidecar and manifest
line (from what its name and file tell, when no record of it survived).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from pathlib import Path

from eval_recorder.atomic_files import publish_file
from eval_recorder.naming import parse_video_name
from eval_recorder.store_failure import store_failed

__all__ = ["MANIFEST", "append_record", "index_bytes", "read_manifest", "reconcile_index"]

MANIFEST = "manifest.jsonl"

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
    """Append ``record`` as one JSON line to ``manifest`` (or another JSON-lines file of
    the folder; a symlink is not followed), flushed to disk.

    If the manifest's last line was cut short (a crash mid-append), a newline goes first,
    so the torn line stays a line of its own (which readers skip) and never swallows this
    record. If writing fails, the bytes of this append that got in are taken back.
    """
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(manifest, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
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
        fps = rate.numerator if rate.denominator == 1 else round(float(rate), 3)  # PyAV 19: no int(rate)
    return {"frames": frames, "fps": fps, "width": width, "height": height}
