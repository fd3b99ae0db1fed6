"""Read an offline wandb run back: its records and history rows, waiting for wandb's
service to finish writing (the framing of the transaction log is read by
``eval_recorder.wandb_history``, which the resume path uses too)."""

from __future__ import annotations

import time
from pathlib import Path

from eval_recorder.wandb_history import history_items, read_records


def run_records(run_dir: Path, *, wait_s: float = 15.0) -> list:
    """Every ``wandb_internal_pb2.Record`` of the offline run in ``run_dir``, in order.

    wandb's service writes the log asynchronously, also after ``finish()`` returned: wait
    (up to ``wait_s``) for the ``exit`` record, which a finished run writes last."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        records = read_records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def history_rows(run_dir: Path) -> list[dict]:
    """Every history row of the offline run in ``run_dir`` as {flattened key: decoded json value}."""
    return history_items(run_records(run_dir))
