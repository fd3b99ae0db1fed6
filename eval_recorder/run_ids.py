"""One run id, one run: finding the runs that already own a run id, so that a new run with
that id is refused (resuming is the way to continue a run).

A run id names a video folder's owner, every video file and the wandb run; two runs sharing
one would give different videos the same file name and merge two wandb runs in one
``wandb sync``. Who owns an id: a run folder whose video folder's owner record names it (live
or finished; the Hydra application finds them under ``outputs/``), or a wandb run directory
of it (``wandb/offline-run-<date>_<time>-<id>``, or ``run-...`` of an online run) in a wandb
folder. ``run_id_refusal`` turns the first one found into the refusal; nothing is written
or locked to tell.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from eval_recorder.errors import FolderRefused
from eval_recorder.folder_guard import live_holder
from eval_recorder.naming import run_id_override

__all__ = ["run_id_refusal", "wandb_runs_of"]

# wandb names a run's directory <mode prefix>run-<YYYYMMDD>_<HHMMSS>-<run id>
_WANDB_RUN_DIR = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>.+)$")
_ADVICE = "or choose another wandb.run_id (or leave it out for a new one)."


def wandb_runs_of(run_id: str, wandb_dir: str | os.PathLike) -> list[Path]:
    """The wandb run directories of ``run_id`` in ``wandb_dir`` (the folder given to
    ``wandb.init(dir=...)``: runs live in its ``wandb/`` folder), in name order."""
    runs = Path(wandb_dir) / "wandb"
    try:
        with os.scandir(runs) as entries:
            names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:  # no wandb folder (or none that can be read): no run of it there
        return []
    return [runs / name for name in sorted(names)
            if (match := _WANDB_RUN_DIR.match(name)) is not None and match["id"] == run_id]


def run_id_refusal(run_id: str, *, video_folders: list[tuple[Path, Path]] = (),
                   wandb_dirs: list[Path] = ()) -> FolderRefused | None:
    """The refusal of a new run with id ``run_id`` if another run owns it: one of
    ``video_folders`` ((run folder, its video folder) pairs whose owner record names
    ``run_id``), named as live if a process holds it, or a wandb run of ``run_id`` in one of
    ``wandb_dirs``; None if no run owns it."""
    for run_folder, video_folder in video_folders:
        holder = live_holder(video_folder)
        if holder is not None:
            return FolderRefused(
                f"run id {run_id} already belongs to a live run in {run_folder} (pid {holder.get('pid', '?')}, host "
                f"{holder.get('host', '?')}); wait for it to end and continue it with recording.resume=true "
                f"{run_id_override(run_id)}, {_ADVICE}")
        return FolderRefused(
            f"run id {run_id} already belongs to the run in {run_folder}; continue that run with "
            f"recording.resume=true {run_id_override(run_id)}, {_ADVICE}")
    for wandb_dir in dict.fromkeys(Path(folder) for folder in wandb_dirs):
        for run in wandb_runs_of(run_id, wandb_dir):
            return FolderRefused(
                f"run id {run_id} already belongs to wandb run {run}; continue that run with "
                f"recording.resume=true {run_id_override(run_id)}, {_ADVICE}")
    return None
