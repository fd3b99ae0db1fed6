"""Reading back what a wandb run wrote: its transaction log (``run-<id>.wandb``).

For a run id it finds the logs (one per process of a resumed run, offline or online),
reads their records (a log cut short by a kill ends at its last whole record) and their
history rows, and counts which videos reached the media panel, per sha256 of the mp4.

The log is what wandb itself keeps and what ``wandb sync`` uploads, so it says truthfully
what wandb got, also after a kill -9 (a row wandb had not written yet is not in it). Its
format: a 7-byte header (``:W&B``, magic 0xBEE1, version 0) followed by LevelDB-log framed
records (32 KiB blocks; each chunk has a 4-byte checksum, a 2-byte length and a 1-byte
type: 1 full, 2 first, 3 middle, 4 last) whose payloads are ``wandb_internal_pb2.Record``
protobufs.
"""

from __future__ import annotations

import collections
import json
import logging
import struct
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["history_items", "logged_videos", "read_records", "run_logs"]

logger = logging.getLogger(__name__)

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
VIDEO_KEY_PREFIX = "eval/video/"


def run_logs(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """The transaction logs of run ``run_id`` under ``wandb_dir`` (the folder given to
    ``wandb.init(dir=...)``: runs live in its ``wandb/`` folder), oldest first."""
    runs = Path(wandb_dir) / "wandb"
    logs = [path for pattern in (f"offline-run-*-{run_id}", f"run-*-{run_id}")
            for folder in runs.glob(pattern) for path in [folder / f"run-{run_id}.wandb"] if path.is_file()]
    return sorted(logs, key=lambda path: path.parent.name.split("run-", 1)[1])


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a wandb transaction log")
    offset, pending = _HEADER, b""
    while offset + 7 <= len(data):
        block_left = _BLOCK - offset % _BLOCK
        if block_left < 7:  # block trailer padding
            offset += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset: offset + 7])
        if offset + 7 + length > len(data):
            return  # the last record was cut short
        chunk = data[offset + 7: offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def read_records(log: str | Path) -> list:
    """Every ``wandb_internal_pb2.Record`` of the transaction log ``log``, in order (up to
    the last whole one)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    records = []
    for payload in _payloads(Path(log).read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:
            break
        records.append(record)
    return records


def history_items(records: Iterable) -> list[dict]:
    """The history rows among ``records`` as {flattened key: decoded JSON value}."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                try:
                    row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
                except ValueError:
                    continue
            rows.append(row)
    return rows


def logged_videos(logs: Iterable[str | Path]) -> collections.Counter:
    """How often each video (by the sha256 of its mp4) is referenced by a history row under
    ``eval/video/`` in the transaction logs ``logs``. (wandb keeps one value per key and
    step: of two videos logged under one key at one step, only the last counts, as only
    it shows in wandb.) A log that cannot be read counts as having logged nothing."""
    counts: collections.Counter = collections.Counter()
    for log in logs:
        try:
            rows = history_items(read_records(log))
        except (OSError, ValueError) as error:
            logger.warning("wandb run log %s cannot be read (%s); its videos count as not logged", log, error)
            continue
        for row in rows:
            for key, value in row.items():
                if key.startswith(VIDEO_KEY_PREFIX) and key.endswith("/sha256") and isinstance(value, str):
                    if row.get(key.removesuffix("sha256") + "_type") == "video-file":
                        counts[value] += 1
    return counts
