"""The driver's recording session: claimed folder + video store + wandb run.

Holds:
  RecordingOptions   everything the driver needs to store and publish videos. It stays
                     on the driver: env runners never see it (nor the video folder).
  RecordingSession   opens the folder claim and the wandb run, stores each finished
                     episode's video as it arrives (tagged by the caller), rewrites the
                     offline gallery after each round and publishes to wandb; closes
                     both at the end. Used by periodic and standalone evaluation alike.
                     A full or unwritable folder costs no training: it is said once,
                     videos wait in memory (bounded) and are stored when space returns.
                     At resume it completes the folder's index and logs to wandb the
                     videos an earlier process stored but wandb never got.
  register_session() / get_session()   the driver-process registry through which the
                     RLlib callback finds its session by an opaque token.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from eval_recorder.folder_guard import FolderClaim, claim_folder
from eval_recorder.gallery import GALLERY, write_gallery
from eval_recorder.naming import check_run_id, video_stem
from eval_recorder.recorder import RecordedEpisode
from eval_recorder.stopping import critical
from eval_recorder.tags import TrainingTag
from eval_recorder.video_store import StoreFailed, VideoStore, read_manifest
from eval_recorder.wandb_history import logged_videos, run_logs
from eval_recorder.wandb_sink import WandbSink

__all__ = [
    "RecordingOptions", "RecordingSession", "StoredVideo", "default_wandb_dir", "get_session", "new_run_id",
    "register_session",
]

SCENARIO_SUFFIXES = (".pkl", ".mpk")

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    """A fresh run id (8 lowercase hex digits)."""
    return uuid.uuid4().hex[:8]


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
    max_side: int = 800
    """Longest frame side in pixels; 0 keeps flatland's size."""
    frame_every: int = 1
    """Record every k-th env step (plus the reset frame and the last step)."""
    overlay: bool = True
    """Burn a label (iteration, episode step, agents arrived) into each frame."""
    wandb_mode: str = "offline"
    """offline (default, no account needed; ``wandb sync`` later) | online | disabled."""
    wandb_project: str = "eval_recorder"
    wandb_entity: str | None = None
    wandb_dir: str | None = None
    """Folder the wandb run directory (``wandb/offline-run-...``) is made in; default: the
    video folder's parent (``runs/a/videos`` -> ``runs/a/wandb``), or ``<video_dir>-wandb``
    beside the video folder when that parent is the working directory: wandb never writes
    into the working directory. A resumed run keeps the folder of the run it continues."""
    wandb_job_type: str = "train"
    wandb_name: str | None = None
    """Display name of the wandb run (default: the run id)."""
    checkpoint: str | None = None
    """Checkpoint the evaluated weights came from (standalone evaluation), else None."""
    config: dict = field(default_factory=dict)
    """Run configuration stored with the wandb run."""
    checkpoint_dir: str | None = None
    """Where this run saves its checkpoints; kept in the folder's owner record so that a
    resumed run finds them."""
    scenarios: str | None = None
    """A folder of saved Flatland scenarios (flatland's ``RailEnvPersister`` files,
    ``.pkl`` or ``.mpk``): each evaluation round plays each of them once, in name order."""
    unstored_budget_mb: int = 256
    """Memory for videos that could not be stored (full or unwritable folder) while they
    wait to be stored; beyond it the oldest are dropped (and said to be lost)."""
    eval_seed: int | None = 1000
    """Seed of the evaluation episodes when the config sets none (same seed, same
    episodes every round); None leaves the config's seed alone."""

    def __post_init__(self) -> None:
        check_run_id(self.run_id)


def default_wandb_dir(options: RecordingOptions) -> Path:
    """The folder ``options``' wandb run directory is made in (see ``RecordingOptions.wandb_dir``)."""
    if options.wandb_dir:
        return Path(os.path.abspath(options.wandb_dir))
    video_dir = Path(os.path.abspath(options.video_dir))
    if video_dir.parent == Path(os.path.abspath(os.getcwd())):
        return video_dir.with_name(f"{video_dir.name}-wandb")
    return video_dir.parent


@dataclass(frozen=True)
class StoredVideo:
    path: Path
    metadata: dict


class RecordingSession:
    """Driver-side owner of the video folder and the wandb run of one run.

    Thread-safe: finished episodes may be published from a publisher thread while the
    main thread trains."""

    def __init__(self, options: RecordingOptions) -> None:
        self.options = options
        self.claim: FolderClaim | None = None
        self.store: VideoStore | None = None
        self.wandb: WandbSink | None = None
        self.evaluation_round = 0
        self.videos: list[StoredVideo] = []
        self.checkpoint: str | None = options.checkpoint  # standalone: the checkpoint being evaluated
        self.on_video: Callable[[StoredVideo], None] | None = None  # e.g. a progress bar, per stored video
        self._round_videos: list[StoredVideo] = []
        self._round_count = 0  # episodes published in the current round
        self.recovered: list[dict] = []  # records the folder's reconciliation added at open
        self.unstored: list[tuple[RecordedEpisode, TrainingTag, str, int, int]] = []  # waiting for disk space
        self.dropped = 0  # unstored episodes beyond the memory budget (lost)
        self.caught_up: list[dict] = []  # records of earlier processes' videos logged to wandb at resume
        self._trouble: str | None = None  # the store problem last reported (said once per outage)
        self._dropping = False  # the loss of unstored videos was reported (once per outage)
        self._closed = False
        self._inbox = None
        self._lock = threading.RLock()
        self._scenarios: list[tuple[str, bytes]] | None = None

    @property
    def video_dir(self) -> Path:
        return self.claim.path if self.claim else Path(self.options.video_dir)

    @property
    def is_open(self) -> bool:
        return self.claim is not None

    @property
    def closed(self) -> bool:
        """True once ``close()`` ran: the folder is released, nothing more is written."""
        return self._closed

    def open(self) -> "RecordingSession":
        """Claim the folder (refusing if it is not ours to use), then start wandb; at resume,
        complete the folder's index and log to wandb what an earlier process could not."""
        with critical():
            return self._open()

    def _open(self) -> "RecordingSession":
        if self.claim is not None:
            return self
        options = self.options
        # The owner record keeps where the wandb run goes (next to the video folder unless
        # the options say where), so that a resumed run writes beside it and finds what wandb got.
        details = {"wandb_dir": str(default_wandb_dir(options))}
        if options.checkpoint_dir:
            details["checkpoint_dir"] = options.checkpoint_dir
        self.claim = claim_folder(options.video_dir, run_id=options.run_id, resume=options.resume,
                                  owner_details=details)
        self.store = VideoStore(self.claim.path, run_id=options.run_id)
        # Videos that got their final name but not their index (the run was killed right
        # then) get their sidecar and manifest line before anything else happens. (A new
        # run has no videos yet: files that merely carry its id are none of its business.)
        if options.resume:
            try:
                self.recovered = self.store.reconcile()
            except StoreFailed as error:
                self._store_trouble(error)
        # A resumed run goes on counting its evaluation rounds.
        self.evaluation_round = max(
            (r["evaluation_round"] for r in read_manifest(self.claim.path)
             if r.get("run_id") == options.run_id and isinstance(r.get("evaluation_round"), int)),
            default=0,
        )
        # One run keeps one wandb folder: a resumed run writes its offline part beside the
        # earlier ones (where the folder's owner record says), so that one `wandb sync` uploads all.
        wandb_dir = Path(self.claim.owner.get("wandb_dir") or details["wandb_dir"]) if options.resume \
            else Path(details["wandb_dir"])
        self.wandb = WandbSink(
            mode=options.wandb_mode,
            project=options.wandb_project,
            entity=options.wandb_entity,
            run_id=options.run_id,
            run_dir=wandb_dir,
            job_type=options.wandb_job_type,
            name=options.wandb_name,
            resume=options.resume,
            config=options.config,
        )
        self.wandb.start()
        if options.resume:
            self._log_what_wandb_missed(wandb_dir)
        return self

    def _log_what_wandb_missed(self, wandb_dir: Path) -> None:
        """Log to wandb, once each, this run's videos that are in the folder but in no wandb
        run an earlier process of the run wrote (e.g. it was killed before wandb flushed).
        What wandb got is read from the runs' own transaction logs (``run-<id>.wandb``),
        the only record that is true even after a kill -9."""
        if not self.wandb.active:
            return
        folders = {wandb_dir}
        if self.claim.owner.get("wandb_dir"):
            folders.add(Path(self.claim.owner["wandb_dir"]))
        own = self.wandb.run_dir.resolve() if self.wandb.run_dir else None
        logs = [log for folder in sorted(folders) for log in run_logs(folder, self.options.run_id)
                if log.parent.resolve() != own]
        logged = logged_videos(logs)
        for record in read_manifest(self.claim.path):
            if record.get("run_id") != self.options.run_id or not isinstance(record.get("file"), str):
                continue
            if logged[record.get("sha256")] > 0:  # a multiset: videos with the same bytes count apart
                logged[record.get("sha256")] -= 1
                continue
            path = self.claim.path / record["file"]
            if path.is_file() and isinstance(record.get("training_iteration"), int):
                self.wandb.log_videos([(path, record)], metrics={}, step=record["training_iteration"])
                self.caught_up.append(record)
        if self.caught_up:
            logger.info("%d videos of run %s that reached %s but not wandb were logged to wandb now",
                        len(self.caught_up), self.options.run_id, self.claim.path)

    def inbox(self, name: str | None = None):
        """The inbox eval runners deliver finished episodes to (made on first use, after
        Ray started; ``name`` lets runners find it by name)."""
        with critical(), self._lock:
            if self._inbox is None:
                from eval_recorder.inbox import Inbox

                self._inbox = Inbox(name=name)
            return self._inbox

    def scenarios(self) -> list[tuple[str, bytes]]:
        """The saved scenarios evaluation plays, in turn: (file name, bytes) of every
        ``.pkl`` / ``.mpk`` file of ``options.scenarios``, by name (none without it)."""
        if self._scenarios is None:
            folder = self.options.scenarios
            files = sorted(p for p in Path(folder).iterdir() if p.suffix in SCENARIO_SUFFIXES) if folder else []
            self._scenarios = [(path.name, path.read_bytes()) for path in files]
        return self._scenarios

    @property
    def round_episodes(self) -> int:
        """Episodes that reached the driver in the current round (stored, waiting or dropped)."""
        return self._round_count

    def begin_round(self) -> int:
        """A new evaluation round starts; its number (a resumed run goes on counting)."""
        with critical(), self._lock:
            self.evaluation_round += 1  # also for a round that records nothing (e.g. its runner died)
            self._round_videos = []
            self._round_count = 0
            return self.evaluation_round

    def publish(self, episode: RecordedEpisode, tag: TrainingTag) -> StoredVideo | None:
        """Store one finished episode's video in the folder (the next episode index of the
        current round), then log it to wandb at its training iteration. If the folder is
        full or unwritable, the episode waits in memory (``options.unstored_budget_mb``)
        and is stored as soon as the folder takes writes again; None then."""
        with critical(), self._lock:
            if self.store is None:
                raise RuntimeError("publish() before open()")
            if self._closed:  # the folder is no longer ours: never write it
                logger.error("an episode of %d steps arrived after the recording session closed; it is not stored",
                             episode.episode_length)
                return None
            index = self._round_count  # the n-th episode of the round, stored now or later (or dropped)
            self._round_count += 1
            self._retry_unstored()
            video = self._store(episode, tag, self.checkpoint, self.evaluation_round, index)
            if video is not None:
                self._round_videos.append(video)
        if video is not None and self.on_video is not None:
            self.on_video(video)
        return video

    def _store(self, episode, tag, checkpoint, evaluation_round, index) -> StoredVideo | None:
        stem = video_stem(env=episode.env_label, training_iteration=tag.training_iteration,
                          evaluation_round=evaluation_round, episode_index=index, run_id=self.options.run_id)
        try:
            path, metadata = self.store.store(
                episode=episode, stem=stem, tag=tag, evaluation_round=evaluation_round,
                episode_index=index, checkpoint=checkpoint,
            )
        except StoreFailed as error:
            self._store_trouble(error)
            if error.video is None:  # nothing of it reached the folder: keep it for later
                self._keep_unstored((episode, tag, checkpoint, evaluation_round, index))
                return None
            path, metadata = error.video, error.metadata  # stored; its index follows later
        else:
            if self._trouble is not None:
                logger.warning("video folder %s takes videos again", self.store.folder)
                self._trouble = None
                self._dropping = False
        video = StoredVideo(path, metadata)
        self.videos.append(video)
        self.wandb.log_videos([(path, metadata)], metrics={}, step=tag.training_iteration)
        return video

    def _store_trouble(self, error: StoreFailed) -> None:
        """Say once per outage, in one sentence, what is wrong with the folder (which
        folder, how much is needed) and that training goes on."""
        if self._trouble != error.reason:
            self._trouble = error.reason
            logger.warning("%s; training goes on and videos that cannot be stored wait in memory (up to %d MB) "
                           "until the folder takes writes again.", str(error).removesuffix("."),
                           self.options.unstored_budget_mb)

    def _keep_unstored(self, item) -> None:
        self.unstored.append(item)
        budget = self.options.unstored_budget_mb * 1_000_000
        while sum(len(kept[0].mp4) for kept in self.unstored) > budget and len(self.unstored) > 1:
            self.unstored.pop(0)
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                logger.error("the %d MB kept in memory for videos the video folder %s cannot take are used up: "
                             "the oldest waiting videos are dropped (lost) until the folder takes writes again",
                             self.options.unstored_budget_mb, self.store.folder)

    def _retry_unstored(self) -> None:
        """Store the waiting episodes, oldest first, while the folder takes them."""
        while self.unstored and self.store.can_store(len(self.unstored[0][0].mp4)):
            episode, tag, checkpoint, evaluation_round, index = self.unstored.pop(0)
            video = self._store(episode, tag, checkpoint, evaluation_round, index)
            if video is None:  # still failing: it went back to the end of the queue
                self.unstored.insert(0, self.unstored.pop())
                return
            if self.on_video is not None:
                self.on_video(video)

    def end_round(self) -> list[StoredVideo]:
        """The round's videos are all in: rewrite the gallery, log the round's means to
        wandb (at each training iteration its videos show); returns them."""
        with critical(), self._lock:
            if self._closed:
                return []
            self._retry_unstored()
            stored = list(self._round_videos)
            if not stored:
                return []
            self.write_gallery()
            for step in sorted({video.metadata["training_iteration"] for video in stored}):
                at_step = [video for video in stored if video.metadata["training_iteration"] == step]
                self.wandb.log_metrics(evaluation_metrics(at_step), step=step)
            return stored

    def publish_round(self, episodes: list[tuple[RecordedEpisode, TrainingTag]]) -> list[StoredVideo]:
        """One whole round at once: begin_round, publish each, end_round."""
        self.begin_round()
        for episode, tag in episodes:
            self.publish(episode, tag)
        return self.end_round()

    def write_gallery(self) -> Path | None:
        """Rewrite the folder's offline gallery (index.html); a failure is logged, not raised."""
        try:
            return write_gallery(self.claim.path)
        except Exception as error:  # the gallery is a view: its faults never stop training
            if self._trouble is None:  # a full or unwritable folder was said already
                logger.warning("could not write the gallery in %s: %s", self.claim.path, error)
            return None

    @property
    def gallery_path(self) -> Path:
        return self.video_dir / GALLERY

    def publish_manifest_table(self) -> None:
        """The manifest of this run as a wandb table (``eval/episodes``), one row per video
        with the video embedded: iteration, env steps, episode, return, completion, length,
        checkpoint. A resumed run's table holds the videos of its earlier processes too."""
        if self.wandb is None or not self.wandb.active or self.claim is None:
            return
        records = [r for r in read_manifest(self.claim.path)
                   if r.get("run_id") == self.options.run_id and (self.claim.path / r["file"]).exists()]
        if not records:
            return
        columns = ["training_iteration", "env_steps", "episode_index", "episode_return", "completion",
                   "episode_length", "checkpoint", "video"]
        rows = [[r.get(c) for c in columns[:-1]] + [self.claim.path / r["file"]] for r in records]
        step = max(r["training_iteration"] for r in records)
        self.wandb.log_table("eval/episodes", columns=columns, rows=rows, step=step)

    def log_training(self, metrics: dict[str, float], *, step: int) -> None:
        """Log training metrics at ``step``; also stores videos waiting for space if the
        folder has room again (each iteration checks)."""
        with critical(), self._lock:
            if self._closed:
                return
            if self.store is not None and self.unstored:
                self._retry_unstored()
            if self.wandb is not None:
                self.wandb.log_metrics(metrics, step=step)

    def close(self, exit_code: int = 0, *, hurry: threading.Event | None = None) -> None:
        """Log the manifest table, finish the wandb run with ``exit_code`` (0 done, 1 crashed,
        130/143 stopped by SIGINT/SIGTERM) and release the folder (safe twice). Once
        ``hurry`` is set (a second stop signal), the manifest table is skipped and wandb is
        not waited for."""
        with critical(), self._lock:
            if self._closed:
                return
            self._closed = True
            if self._inbox is not None:
                import ray

                if ray.is_initialized():  # else the actor went down with Ray (a call would start a new Ray)
                    try:
                        self._inbox.close()
                    except Exception:  # Ray is going down: the actor goes with it
                        pass
                self._inbox = None
            if self.store is not None:
                self._retry_unstored()
                if self.store.unindexed:
                    try:
                        self.store.reconcile()
                    except StoreFailed as error:
                        self._store_trouble(error)
                if self.unstored or self.dropped:
                    logger.error("%d videos could not be stored in %s (the folder is full or unwritable) and are "
                                 "lost with this process", len(self.unstored) + self.dropped, self.store.folder)
            if self.wandb is not None:
                if hurry is None or not hurry.is_set():
                    self.publish_manifest_table()
                self.wandb.finish(exit_code=exit_code, give_up=hurry)
            if self.claim is not None:
                self.claim.release()


def evaluation_metrics(videos: list[StoredVideo]) -> dict[str, float]:
    """Means over one round's episodes, under ``eval/`` (the sink adds ``training_iteration``);
    ``eval/completion_rate`` for envs that report completion (Flatland)."""
    count = len(videos)
    metadata = [video.metadata for video in videos]
    metrics = {
        "env_steps": metadata[0]["env_steps"],
        "eval/return_mean": sum(m["episode_return"] for m in metadata) / count,
        "eval/episode_length_mean": sum(m["episode_length"] for m in metadata) / count,
        "eval/videos": count,
    }
    if all(m.get("completion") is not None for m in metadata):
        metrics["eval/completion_rate"] = sum(m["completion"] for m in metadata) / count
    return metrics


_SESSIONS: dict[str, RecordingSession] = {}


def register_session(session: RecordingSession) -> str:
    """Make ``session`` findable by the returned token in this (driver) process."""
    token = uuid.uuid4().hex
    _SESSIONS[token] = session
    return token


def get_session(token: str) -> RecordingSession:
    try:
        return _SESSIONS[token]
    except KeyError:
        raise RuntimeError(
            "this recording callback runs in a process other than the one that called add_recording(); "
            "build the Algorithm in the process that configured recording"
        ) from None
