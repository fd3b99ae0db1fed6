"""The driver's recording session: claimed folder + video store + wandb run, held like a file.

``with recording_session(config) as session:`` (or ``with RecordingSession(options)``):
the folder is claimed when the session opens (``open()``, or when the Algorithm starts),
each finished episode's video is stored as it arrives (tagged by the caller) and published
to every tracker (``sinks``: wandb, TensorBoard, MLflow), the offline gallery is rewritten
after each round, and leaving the block ends the trackers' runs (exit code 0, 130 after
Ctrl-C, 1 after an exception) and releases the folder. The main job, standalone evaluation
and the library hold it so; a Tune trial's ``TrialSession`` opens and closes it around the trial.
A full or unwritable folder costs no training: it is said once, videos wait in memory
(bounded) and are stored when space returns. At resume the session completes the
folder's index, checks every listed video against its record (one altered after it was
stored is named in one warning, marked in the manifest and the gallery, and kept as it is),
and logs to wandb the videos an earlier process stored but wandb never got.
With ``recording.select`` other than ``all`` a round's episodes are held until the round
ends; then the chosen ones are stored as videos (with why they were chosen) and the others
keep their replay record and a manifest line; every one counts in the round's means. An
episode whose eval runner drew no video (the rules cannot choose it: ``wrapper``) has its
record stored as it arrives; only its facts wait for the choice. A new run
(not a resume) whose run id a wandb run in its wandb folder already has is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eval_recorder.errors import StoreFailed
from eval_recorder.folder_guard import FolderClaim, check_claim, claim_folder, folder_owner
from eval_recorder.frames import read_scenarios
from eval_recorder.gallery import GALLERY, write_gallery
from eval_recorder.naming import video_stem
from eval_recorder.options import RecordingOptions, default_wandb_dir
from eval_recorder.recorder import RecordedEpisode
from eval_recorder.run_ids import run_id_refusal
from eval_recorder.selection import ALL, EpisodeFacts, choose, parse_select
from eval_recorder.sinks import Sink
from eval_recorder.stopping import critical, exit_code_for
from eval_recorder.tags import TrainingTag
from eval_recorder.trackers import tracker_sinks
from eval_recorder.store_failure import store_failed
from eval_recorder.video_index import find_altered, mark_altered, mark_restored, read_manifest
from eval_recorder.video_store import VideoStore
from eval_recorder.wandb_from_folder import manifest_table, videos_wandb_missed
from eval_recorder.wandb_sink import WandbSink

__all__ = ["RecordingSession", "StoredVideo", "evaluation_metrics"]

logger = logging.getLogger(__name__)


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
        self.sinks: list[Sink] = []  # wandb first, then the other trackers (each a view of the folder)
        self.evaluation_round = 0
        self.videos: list[StoredVideo] = []
        self.episodes: list[dict] = []  # the manifest lines of every episode kept (with a video or not), in order
        self.checkpoint: str | None = options.checkpoint  # standalone: the checkpoint being evaluated
        self.on_video: Callable[[StoredVideo], None] | None = None  # e.g. a progress bar, per stored video
        self._round_videos: list[StoredVideo] = []
        self._round_records: list[dict] = []  # manifest lines of the round's episodes kept without a video
        self._select = parse_select(options.select)
        # the round's episodes, until it ends (one without a video has its record stored already)
        self._held: list[tuple[RecordedEpisode, TrainingTag, int]] = []
        self._round_count = 0  # episodes published in the current round
        self.recovered: list[dict] = []  # records the folder's reconciliation added at open
        # waiting for disk space: (episode, tag, checkpoint, round, index, why chosen, with its video)
        self.unstored: list[tuple[RecordedEpisode, TrainingTag, str, int, int, str | None, bool]] = []
        self.dropped = 0  # unstored episodes beyond the memory budget (lost)
        self.caught_up: list[dict] = []  # records of earlier processes' videos logged to wandb at resume
        self._trouble: str | None = None  # the store problem last reported (said once per outage)
        self._dropping = False  # the loss of unstored videos was reported (once per outage)
        self._closed = False
        self._inbox = None
        self._lock = threading.RLock()
        self._scenarios: list[tuple[str, bytes]] | None = None
        self._publisher = None  # the RoundPublisher of the Algorithm attached last
        self._gallery_lacks_training = False  # a round's gallery was written before its train() result

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

    def __enter__(self) -> "RecordingSession":
        """The session itself; it opens when the Algorithm starts (or at ``open()``), so a
        config the eval runners cannot record is refused before anything is claimed."""
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Close with the exit code the block ended with: 0, 130 after Ctrl-C (a job that
        knows better, e.g. 143 after SIGTERM, closes the session itself first), the code
        of a SystemExit, 1 after an exception."""
        if exc_type is None:
            code = 0
        elif issubclass(exc_type, KeyboardInterrupt):
            code = exit_code_for(signal.SIGINT)
        elif issubclass(exc_type, SystemExit):
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            code = 1
        self.close(exit_code=code)

    def open(self) -> "RecordingSession":
        """Claim the folder (refusing if it is not ours to use), then start wandb; at resume,
        complete the folder's index and log to wandb what an earlier process could not."""
        with critical():
            return self._open()

    def check(self) -> None:
        """Raise the refusal ``open()`` would meet that can be told now (the folder in use,
        another run's, untrusted files, the run id taken), claiming and writing nothing: for
        a job that opens the session only once its eval runners answered (``open()``
        decides; another run may take the folder in between)."""
        if self.claim is None:
            self._check_run_id()
            check_claim(self.options.video_dir, run_id=self.options.run_id, resume=self.options.resume)

    def _check_run_id(self) -> None:
        # One run id, one run: a new run may not take the id of a wandb run beside it (one
        # `wandb sync` would merge them). A folder with an owner is the claim's to refuse.
        options = self.options
        if not options.resume and not _owner_or_none(options.video_dir):
            refusal = run_id_refusal(options.run_id, wandb_dirs=[default_wandb_dir(options)])
            if refusal is not None:
                raise refusal

    def _open(self) -> "RecordingSession":
        if self.claim is not None:
            return self
        options = self.options
        # The owner record keeps where the wandb run goes (next to the video folder unless
        # the options say where), so that a resumed run writes beside it and finds what wandb got.
        details = {"wandb_dir": str(default_wandb_dir(options))}
        if options.checkpoint_dir:
            details["checkpoint_dir"] = options.checkpoint_dir
        self._check_run_id()
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
            self._check_videos()
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
            mode=options.wandb_mode if "wandb" in options.trackers else "disabled",
            project=options.wandb_project,
            entity=options.wandb_entity,
            run_id=options.run_id,
            run_dir=wandb_dir,
            job_type=options.wandb_job_type,
            name=options.wandb_name,
            resume=options.resume,
            config=options.config,
            console=options.wandb_console,
        )
        self.sinks = [self.wandb, *tracker_sinks(options, wandb_dir)]
        for sink in self.sinks:
            sink.start()
        if options.resume:
            self._log_what_wandb_missed(wandb_dir)
        return self

    def _check_videos(self) -> None:
        """At resume: every listed video's size and sha256 against its manifest record. The
        videos altered since they were stored (a third party cut or replaced one under its
        final name) are named in one warning and marked in the manifest (a line appended; the
        gallery shows the mark); each is kept as it is. A video that matches its record again
        is marked so."""
        folder = self.claim.path
        try:
            altered, restored = find_altered(folder)
        except OSError as error:
            logger.warning("could not check the videos in %s against the manifest (%s); they are not checked this "
                           "time", folder, error)
            return
        new = [alteration for alteration in altered if alteration.new]
        marked = True
        try:
            for alteration in new:
                mark_altered(folder, alteration)
            for name in restored:
                mark_restored(folder, name)
        except OSError as error:  # said once as the folder's trouble; the warning still names them
            marked = False
            self._store_trouble(store_failed(error, folder=folder, needs="marking altered videos needs",
                                             needed=4096, consequence="the marks are missing from the manifest"))
        if new:
            details = ", ".join(f"{alteration.file} ({alteration.why})" for alteration in new)
            one = len(new) == 1
            kept = ("it is kept as it is" if one else "they are kept as they are") + (
                " and marked altered in the manifest and the gallery" if marked else "")
            if one:
                logger.warning("1 video in %s changed after it was stored (its size or sha256 no longer match its "
                               "manifest record): %s; %s.", folder, details, kept)
            else:
                logger.warning("%d videos in %s changed after they were stored (their sizes or sha256s no longer "
                               "match their manifest records): %s; %s.", len(new), folder, details, kept)
        if new or restored:
            self.write_gallery()

    def _log_what_wandb_missed(self, wandb_dir: Path) -> None:
        """Log to wandb, once each, this run's videos that are in the folder but in no wandb
        run an earlier process of the run wrote (e.g. it was killed before wandb flushed)."""
        if not self.wandb.active:
            return
        folders = {wandb_dir} | ({Path(self.claim.owner["wandb_dir"])} if self.claim.owner.get("wandb_dir") else set())
        for path, record in videos_wandb_missed(self.claim.path, self.options.run_id, wandb_folders=folders,
                                                own_run_dir=self.wandb.run_dir):
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
        """The saved scenarios evaluation plays, in turn: (file name, bytes) of every file
        of ``options.scenarios`` that a frame source plays, by name (none without it)."""
        if self._scenarios is None:
            self._scenarios = read_scenarios(self.options.scenarios)
        return self._scenarios

    def attach(self, algorithm, *, session_token: str | None = None):
        """The driver's publisher of ``algorithm``'s evaluation rounds into this (open)
        session, its inbox named after ``session_token``; called when the Algorithm starts.
        A stop finishes the round under way through ``finish_interrupted_round``."""
        from eval_recorder.publisher import RoundPublisher

        self._publisher = RoundPublisher(self, algorithm, session_token=session_token)
        return self._publisher

    def finish_interrupted_round(self, *, timeout_seconds: float, hurry: threading.Event | None = None) -> int:
        """After a stop (Ctrl-C, SIGTERM): store what reached the driver of the round under
        way, if an Algorithm is attached; how many were stored (never raises)."""
        if self._publisher is None:
            return 0
        return self._publisher.finish_interrupted_round(timeout_seconds=timeout_seconds, hurry=hurry)

    @property
    def round_episodes(self) -> int:
        """Episodes that reached the driver in the current round (stored, waiting or dropped)."""
        return self._round_count

    def begin_round(self) -> int:
        """A new evaluation round starts; its number (a resumed run goes on counting)."""
        with critical(), self._lock:
            self._decide_held()  # (a round that never ended: e.g. its evaluation raised)
            self.evaluation_round += 1  # also for a round that records nothing (e.g. its runner died)
            self._round_videos = []
            self._round_records = []
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
            if self._select[0].kind != ALL:  # chosen when the round's episodes are all in
                if not episode.mp4:  # its runner drew no video: the rules cannot choose it; its record now
                    self._store_record(episode, tag, self.checkpoint, self.evaluation_round, index)
                    episode = dataclasses.replace(episode, record=None)  # only its facts wait for the choice
                self._held.append((episode, tag, index))
                return None
            if not episode.mp4:  # its video was dropped on its runner: its record only
                self._store_record(episode, tag, self.checkpoint, self.evaluation_round, index)
                return None
            video = self._store(episode, tag, self.checkpoint, self.evaluation_round, index)
            if video is not None:
                self._round_videos.append(video)
        if video is not None and self.on_video is not None:
            self.on_video(video)
        return video

    def _decide_held(self) -> None:
        """The round's held episodes are all in: store the chosen ones' videos (with why),
        keep the others' replay records and manifest lines."""
        held, self._held = self._held, []
        if not held:
            return
        facts = [EpisodeFacts(index=index, episode_return=episode.episode_return,
                              completion=episode.facts.get("completion"),
                              agents_arrived=episode.facts.get("agents_arrived"),
                              num_agents=episode.facts.get("num_agents")) for episode, _tag, index in held]
        try:
            reasons = {chosen.index: chosen.reason for chosen in choose(self._select, facts)}
        except ValueError as error:  # e.g. failed:N for an env that reports no arrivals
            logger.error("%s No video of evaluation round %d is kept.", error, self.evaluation_round)
            reasons = {}
        for episode, tag, index in held:
            if index in reasons and not episode.mp4:  # not drawn on its runner (which knew another select)
                logger.warning("episode %d of evaluation round %d was chosen (%s) but its eval runner drew no video "
                               "of it; render it from its replay record with render=.", index, self.evaluation_round,
                               reasons.pop(index))  # fmt: skip
            if index in reasons:
                video = self._store(episode, tag, self.checkpoint, self.evaluation_round, index, chosen=reasons[index])
                if video is not None:
                    self._round_videos.append(video)
                    if self.on_video is not None:
                        self.on_video(video)
            elif episode.mp4:  # (one without a video has its record stored as it arrived)
                self._store_record(episode, tag, self.checkpoint, self.evaluation_round, index)

    def _store_record(self, episode, tag, checkpoint, evaluation_round, index) -> dict | None:
        stem = video_stem(env=episode.env_label, training_iteration=tag.training_iteration,
                          evaluation_round=evaluation_round, episode_index=index, run_id=self.options.run_id)
        try:
            metadata = self.store.store_record(episode=episode, stem=stem, tag=tag, evaluation_round=evaluation_round,
                                               episode_index=index, checkpoint=checkpoint)
        except StoreFailed as error:
            self._store_trouble(error)
            self._keep_unstored((dataclasses.replace(episode, mp4=b""), tag, checkpoint, evaluation_round, index,
                                 None, False))  # its video is not kept: only its record waits
            return None
        if metadata is None:  # no record reached the driver: the episode still counts in the means
            metadata = {"episode_return": episode.episode_return, "episode_length": episode.episode_length,
                        "env_steps": tag.env_steps, "completion": episode.facts.get("completion"),
                        "training_iteration": tag.training_iteration}
        self.episodes.append(metadata)
        if evaluation_round == self.evaluation_round:
            self._round_records.append(metadata)
        return metadata

    def _store(self, episode, tag, checkpoint, evaluation_round, index, chosen: str | None = None) -> StoredVideo | None:
        stem = video_stem(env=episode.env_label, training_iteration=tag.training_iteration,
                          evaluation_round=evaluation_round, episode_index=index, run_id=self.options.run_id)
        try:
            path, metadata = self.store.store(
                episode=episode, stem=stem, tag=tag, evaluation_round=evaluation_round,
                episode_index=index, checkpoint=checkpoint, chosen=chosen,
            )
        except StoreFailed as error:
            self._store_trouble(error)
            if error.video is None:  # nothing of it reached the folder: keep it for later
                self._keep_unstored((episode, tag, checkpoint, evaluation_round, index, chosen, True))
                return None
            path, metadata = error.video, error.metadata  # stored; its index follows later
        else:
            if self._trouble is not None:
                logger.warning("video folder %s takes videos again", self.store.folder)
                self._trouble = None
                self._dropping = False
        video = StoredVideo(path, metadata)
        self.videos.append(video)
        self.episodes.append(metadata)
        for sink in self.sinks:
            sink.log_video(path, metadata, step=tag.training_iteration)
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
            episode, tag, checkpoint, evaluation_round, index, chosen, with_video = self.unstored.pop(0)
            if not with_video:
                if self._store_record(episode, tag, checkpoint, evaluation_round, index) is None:
                    self.unstored.insert(0, self.unstored.pop())
                    return
                continue
            video = self._store(episode, tag, checkpoint, evaluation_round, index, chosen=chosen)
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
            self._decide_held()
            stored = list(self._round_videos)
            records = list(self._round_records)
            if not stored and not records:
                return []
            self.write_gallery()
            self._gallery_lacks_training = True
            for step in sorted({m["training_iteration"] for m in [*(v.metadata for v in stored), *records]}):
                at_step = [video for video in stored if video.metadata["training_iteration"] == step]
                others = [record for record in records if record["training_iteration"] == step]
                for sink in self.sinks:
                    sink.log_metrics(evaluation_metrics(at_step, others), step=step)
            return stored

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
        with the video embedded; a resumed run's table holds its earlier processes' too."""
        if self.wandb is None or not self.wandb.active or self.claim is None:
            return
        table = manifest_table(self.claim.path, self.options.run_id)
        if table is not None:
            columns, rows, step = table
            self.wandb.log_table("eval/episodes", columns=columns, rows=rows, step=step)

    def log_training(self, metrics: dict[str, float], *, step: int) -> None:
        """Log training metrics at ``step`` (``train/return_mean`` also to the folder's
        training record, for the gallery's plot); also stores videos waiting for space if
        the folder has room again (each iteration checks)."""
        with critical(), self._lock:
            if self._closed:
                return
            if self.store is not None and self.unstored:
                self._retry_unstored()
            # The gallery plots the training return beside the evaluation's: a round ends
            # inside train(), before its result, so its page is written again with it.
            if self.store is not None and metrics.get("train/return_mean") is not None:
                recorded = self.store.record_training(step, env_steps=metrics.get("env_steps"),
                                                      return_mean=metrics["train/return_mean"])
                if recorded and self._gallery_lacks_training:
                    self.write_gallery()
            self._gallery_lacks_training = False
            for sink in self.sinks:
                sink.log_metrics(metrics, step=step)

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
                self._decide_held()  # a round cut off: what reached the driver is decided and kept
                self._retry_unstored()
                if self.store.unindexed:
                    try:
                        self.store.reconcile()
                    except StoreFailed as error:
                        self._store_trouble(error)
                if self.unstored or self.dropped:
                    logger.error("%d videos could not be stored in %s (the folder is full or unwritable) and are "
                                 "lost with this process", len(self.unstored) + self.dropped, self.store.folder)
            if self.wandb is not None and (hurry is None or not hurry.is_set()):
                self.publish_manifest_table()
            for sink in self.sinks:
                sink.finish(exit_code=exit_code, give_up=hurry)
            if self.claim is not None:
                self.claim.release()


def _owner_or_none(video_dir) -> dict:
    """The owner record of ``video_dir`` ({} if none, or if the folder cannot be looked at:
    the claim then says why)."""
    try:
        return folder_owner(video_dir)
    except OSError:
        return {}


def evaluation_metrics(videos: list[StoredVideo], others: list[dict] = ()) -> dict[str, float]:
    """Means over one round's episodes (those with a video and the manifest lines of
    ``others``, kept without one), under ``eval/`` (the sink adds ``training_iteration``);
    ``eval/completion_rate`` for envs that report completion (Flatland)."""
    metadata = [video.metadata for video in videos] + list(others)
    count = len(metadata)
    metrics = {
        "env_steps": metadata[0]["env_steps"],
        "eval/return_mean": sum(m["episode_return"] for m in metadata) / count,
        "eval/episode_length_mean": sum(m["episode_length"] for m in metadata) / count,
        "eval/videos": len(videos),
    }
    if all(m.get("completion") is not None for m in metadata):
        metrics["eval/completion_rate"] = sum(m["completion"] for m in metadata) / count
    return metrics
