"""The training side of a video folder's plot: one JSON line per train() call of the run
(``TRAINING``, beside the manifest, never listed in it), with the iteration, its env steps
and RLlib's mean training-episode return (``result["env_runners"]["episode_return_mean"]``).

The driver appends a line when it logs a train() result (``VideoStore.record_training``);
the gallery reads them (``read_training``, ``train_returns``) to draw the training return
beside the evaluation return. A missing or damaged file only means no training line.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

__all__ = ["TRAINING", "read_training", "train_returns", "training_record"]

TRAINING = "training.jsonl"

_MAX_BYTES = 64 * 1024 * 1024  # far beyond any run's lines (about 100 bytes each): read no more


def training_record(*, training_iteration: int, env_steps, return_mean, run_id: str) -> dict:
    """The line of one train() call; a return that is not a finite number becomes null."""
    number = return_mean if isinstance(return_mean, (int, float)) and not isinstance(return_mean, bool) else None
    return {
        "training_iteration": training_iteration,
        "env_steps": env_steps,
        "episode_return_mean": float(number) if number is not None and math.isfinite(number) else None,
        "run_id": run_id,
    }


def read_training(folder: str | os.PathLike) -> list[dict]:
    """Every complete record of ``folder``'s training file, in the order written; [] if
    there is none, or it is not a regular file (a symlink is not followed)."""
    try:
        fd = os.open(Path(folder) / TRAINING, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return []
        data = handle.read(_MAX_BYTES)
    records = []
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash, or damage
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def train_returns(records: list[dict], *, run_ids: set[str] | None = None) -> list[tuple[int, float]]:
    """(training iteration, mean training return) per iteration, oldest first, of the
    records of ``run_ids`` (all if None); for an iteration logged twice (a run resumed from
    an earlier checkpoint) the later line. Lines without a whole iteration or a finite
    return are left out."""
    by_iteration: dict[int, float] = {}
    for record in records:
        iteration, value = record.get("training_iteration"), record.get("episode_return_mean")
        if run_ids is not None and record.get("run_id") not in run_ids:
            continue
        if not isinstance(iteration, int) or isinstance(iteration, bool):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        by_iteration[iteration] = float(value)
    return sorted(by_iteration.items())
