"""What the driver needs to store and publish videos: ``RecordingOptions`` and its defaults.

The options stay on the driver: env runners never see them (nor the video folder).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from eval_recorder.folder_guard import check_video_dir
from eval_recorder.frames import DEFAULT_MAX_SIDE
from eval_recorder.naming import check_run_id, reads_as_text
from eval_recorder.selection import parse_select
from eval_recorder.trackers import TRACKERS

__all__ = ["RecordingOptions", "default_wandb_dir", "new_run_id"]


def new_run_id() -> str:
    """A fresh run id (8 lowercase hex digits), never one Hydra reads unquoted as a number (such
    as 72e47061), so ``wandb.run_id=<id>`` as a user types it keeps it."""
    while True:
        run_id = uuid.uuid4().hex[:8]
        if reads_as_text(run_id):
            return run_id


@dataclass
class RecordingOptions:
    """Where and how the driver stores and publishes videos."""

    video_dir: str | None
    """Folder the videos, sidecars and manifest go to (only the driver writes it). None: a
    ``videos/`` folder inside the Algorithm's own log folder (a Tune trial's folder),
    chosen on the driver when the Algorithm starts."""
    run_id: str = field(default_factory=new_run_id)
    """Identifies the run: owner of the folder, wandb run id, part of every file name."""
    resume: bool = False
    """Continue run ``run_id`` in its own folder (appends; never overwrites)."""
    fps: int = 10
    """Frames per second of the videos."""
    max_side: int = DEFAULT_MAX_SIDE
    """Longest frame side in pixels; 0 keeps the frames' own size."""
    frame_every: int = 1
    """Record every k-th env step (plus the reset frame and the last step)."""
    overlay: bool = True
    """Burn a label (iteration, episode step, agents arrived) into each frame."""
    select: str = "all"
    """Which of a round's episodes become videos, chosen once the round's episodes are all
    in: ``all`` (every one), or a list such as ``worst:1,best:1``, ``failed:2`` (Flatland:
    not every train arrived), ``first:2``; worst and best by completion, then return (by
    return for envs that report no completion). Every episode keeps its replay record and
    manifest line and counts in the round's means."""
    trackers: tuple[str, ...] = ("wandb",)
    """Where videos and metrics are published beside the folder, each its own run at step =
    training iteration: any of ``wandb``, ``tensorboard``, ``mlflow``; () for none."""
    mlflow_tracking_uri: str | None = None
    """The MLflow tracking server; None: a local MLflow store in the run folder (no server)."""
    mlflow_experiment: str = "eval_recorder"
    """The MLflow experiment runs are logged to."""
    wandb_mode: str = "offline"
    """offline (default, no account needed; ``wandb sync`` later) | online | disabled."""
    wandb_project: str = "eval_recorder"
    wandb_entity: str | None = None
    wandb_dir: str | None = None
    """Folder the wandb run directory (``wandb/offline-run-...``) is made in; default: the
    video folder's parent (``runs/a/videos`` -> ``runs/a/wandb``), or ``<video_dir>-wandb``
    beside the video folder when that parent is the working directory: wandb never writes
    into the working directory. A resumed run keeps the folder of the run it continues.
    TensorBoard's event files and the local MLflow store go into the same folder."""
    wandb_job_type: str = "train"
    wandb_name: str | None = None
    """Display name of the wandb run (default: the run id)."""
    wandb_console: bool = False
    """Let wandb print its own lines (banners, where the run is, how to sync it) on the
    console; by default it prints nothing there (the summary of the CLI says where the run is)."""
    checkpoint: str | None = None
    """Checkpoint the evaluated weights came from (standalone evaluation), else None."""
    config: dict = field(default_factory=dict)
    """Run configuration stored with the wandb run."""
    checkpoint_dir: str | None = None
    """Where this run saves its checkpoints; kept in the folder's owner record so that a
    resumed run finds them."""
    scenarios: str | None = None
    """A folder of saved scenarios (Flatland: flatland's ``RailEnvPersister`` files): each
    evaluation round plays each of them once, in name order."""
    unstored_budget_mb: int = 256
    """Memory for videos that could not be stored (full or unwritable folder) while they
    wait to be stored; beyond it the oldest are dropped (and said to be lost)."""
    eval_seed: int | None = 1000
    """Seed of the evaluation episodes when the config sets none (same seed, same
    episodes every round); None leaves the config's seed alone."""

    def __post_init__(self) -> None:
        if self.video_dir is not None:
            check_video_dir(self.video_dir)  # FolderRefused: "" or "." would be the working directory
        check_run_id(self.run_id)
        parse_select(self.select)  # ValueError: what is wrong and what to write
        self.trackers = tuple(self.trackers)
        for tracker in self.trackers:
            if tracker not in TRACKERS:
                raise ValueError(f"trackers must be chosen from {', '.join(TRACKERS)}, got {tracker!r}; "
                                 f"e.g. trackers=[wandb,tensorboard].")


def default_wandb_dir(options: RecordingOptions) -> Path:
    """The folder ``options``' wandb run directory is made in (see ``RecordingOptions.wandb_dir``)."""
    if options.wandb_dir:
        return Path(os.path.abspath(options.wandb_dir))
    video_dir = Path(os.path.abspath(options.video_dir))
    if video_dir.parent == Path(os.path.abspath(os.getcwd())):
        return video_dir.with_name(f"{video_dir.name}-wandb")
    return video_dir.parent
