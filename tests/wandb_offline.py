"""Read an offline wandb run back: the history rows of its ``run-<id>.wandb`` file.

The file is wandb's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0)
followed by LevelDB-log framed records (32 KiB blocks; each chunk has a 4-byte checksum,
a 2-byte length and a 1-byte type: 1 full, 2 first, 3 middle, 4 last) whose payloads are
``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a wandb transaction log")
    offset, pending = _HEADER, b""
    while offset + 7 <= len(data):
        block_left = _BLOCK - offset % _BLOCK
        if block_left < 7:  # block trailer padding
            offset += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
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


def _read_records(log: Path) -> list:
    records = []
    for payload in _payloads(log.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def run_records(run_dir: Path, *, wait_s: float = 15.0) -> list:
    """Every ``wandb_internal_pb2.Record`` of the offline run in ``run_dir``, in order.

    wandb's service writes the log asynchronously, also after ``finish()`` returned: wait
    (up to ``wait_s``) for the ``exit`` record, which a finished run writes last."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        records = _read_records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def history_rows(run_dir: Path) -> list[dict]:
    """Every history row of the offline run in ``run_dir`` as {flattened key: decoded json value}."""
    rows = []
    for record in run_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
