"""What the driver logs to wandb from the video folder's own index (the manifest): the
videos a killed earlier process of the run stored but wandb never got, and the run's
manifest as a wandb table. Local files are the source of truth; wandb is a view of them.
"""

from __future__ import annotations

from pathlib import Path

from eval_recorder.video_index import read_manifest
from eval_recorder.wandb_history import logged_videos, run_logs

__all__ = ["TABLE_COLUMNS", "manifest_table", "videos_wandb_missed"]

TABLE_COLUMNS = ["training_iteration", "env_steps", "episode_index", "episode_return", "completion",
                 "episode_length", "checkpoint", "video"]


def videos_wandb_missed(folder: Path, run_id: str, *, wandb_folders: set[Path],
                        own_run_dir: Path | None) -> list[tuple[Path, dict]]:
    """(path, record) of every video of run ``run_id`` in ``folder`` that no wandb run of
    it under ``wandb_folders`` (other than the one at ``own_run_dir``) logged. What wandb got
    is read from the runs' own transaction logs (``run-<id>.wandb``), the only record that
    is true even after a kill -9."""
    own = own_run_dir.resolve() if own_run_dir else None
    logs = [log for wandb_folder in sorted(wandb_folders) for log in run_logs(wandb_folder, run_id)
            if log.parent.resolve() != own]
    logged = logged_videos(logs)
    missed = []
    for record in read_manifest(folder):
        if record.get("run_id") != run_id or not isinstance(record.get("file"), str):
            continue
        if logged[record.get("sha256")] > 0:  # a multiset: videos with the same bytes count apart
            logged[record.get("sha256")] -= 1
            continue
        path = folder / record["file"]
        if path.is_file() and isinstance(record.get("training_iteration"), int):
            missed.append((path, record))
    return missed


def manifest_table(folder: Path, run_id: str) -> tuple[list[str], list[list], int] | None:
    """(columns, rows, step) of run ``run_id``'s manifest as a table, one row per video
    still in ``folder`` with the video last (iteration, env steps, episode, return,
    completion, length, checkpoint); step: the latest iteration. None without videos."""
    records = [r for r in read_manifest(folder) if r.get("run_id") == run_id and isinstance(r.get("file"), str)
               and (folder / r["file"]).exists()]
    if not records:
        return None
    rows = [[r.get(c) for c in TABLE_COLUMNS[:-1]] + [folder / r["file"]] for r in records]
    return list(TABLE_COLUMNS), rows, max(r["training_iteration"] for r in records)
