"""Storing one finished video in the (claimed) video folder: ``VideoStore`` gives its mp4
a name no file has, writes its poster (its last frame, ``poster``) and the episode's replay
record (``replay_records``, same stem) beside it, then its JSON sidecar and its manifest line, each complete before it appears (``atomic_files``), never
overwriting anything. When the folder cannot take a video it raises ``StoreFailed``; index
entries it could not write follow with the next video or ``VideoStore.reconcile``, which
also repairs what a crash left (and gives posters to videos without one). A poster that
cannot be written costs nothing else. ``store_record`` keeps an episode without its video
(``recording.select`` did not choose it): its replay record and a manifest line without ``file``. ``record_training`` appends a train() call's return
to the folder's training record (``training_record``).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from eval_recorder.atomic_files import publish_file
from eval_recorder.errors import StoreFailed
from eval_recorder.naming import episode_metadata, numbered_stem, parse_video_name, video_metadata
from eval_recorder.poster import last_frame_jpeg, poster_name
from eval_recorder.replay_records import names_taken, publish_record
from eval_recorder.store_failure import store_failed
from eval_recorder.training_record import TRAINING, training_record
from eval_recorder.video_index import MANIFEST, append_record, index_bytes, read_manifest, reconcile_index

__all__ = ["VideoStore"]

_MAX_NAME_ATTEMPTS = 10_000
# Longest a reconciliation spends writing posters for videos that have none (an older
# folder, a crash between a video and its poster), newest video first; the rest wait for the
# next one. About a tenth of a second each for a Flatland video.
RECONCILE_POSTER_SECONDS = 5.0

_log = logging.getLogger(__name__)


@dataclass
class _Unindexed:
    """A video under its final name whose sidecar (and manifest line) are still to write."""

    video: Path
    metadata: dict
    sidecar_written: bool = False


class VideoStore:
    """Stores finished videos in ``folder`` (which the caller has claimed)."""

    def __init__(self, folder: Path, *, run_id: str) -> None:
        self.folder = Path(folder)
        self.run_id = run_id
        self._unindexed: list[_Unindexed] = []
        self._poster_trouble_said = False
        self._training_trouble_said = False

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    @property
    def unindexed(self) -> list[Path]:
        """Videos stored whose sidecar or manifest line could not be written yet."""
        return [item.video for item in self._unindexed]

    def can_store(self, nbytes: int) -> bool:
        """Whether the folder exists and its filesystem has room for a video of ``nbytes``
        plus its sidecar and manifest line (a cheap check before trying again)."""
        try:
            stats = os.statvfs(self.folder)
        except OSError:
            return False
        block = stats.f_frsize or 4096
        return self.folder.is_dir() and stats.f_bavail * block >= nbytes + 3 * block + 16_384

    def store(self, *, episode, stem: str, tag, evaluation_round: int, episode_index: int,
              checkpoint: str | None, chosen: str | None = None) -> tuple[Path, dict]:
        """Write ``episode``'s mp4, replay record and sidecar under ``stem`` (or the next free
        variant) and append its manifest line; StoreFailed if the folder cannot take them.
        ``chosen``: why ``recording.select`` chose it (kept in its sidecar and manifest line).

        Index entries that an earlier call could not write go first.
        """
        sha256 = hashlib.sha256(episode.mp4).hexdigest()
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")

        def metadata_for(file_name: str) -> dict:
            return video_metadata(
                episode=episode, tag=tag, evaluation_round=evaluation_round, episode_index=episode_index,
                run_id=self.run_id, checkpoint=checkpoint, file_name=file_name, sha256=sha256, created=created,
            )

        needed = len(episode.mp4) + index_bytes(metadata_for(f"{stem}.mp4"))
        not_stored = "the video was not stored"
        try:
            self._write_unindexed()
        except StoreFailed as error:
            raise store_failed(error.__cause__ or error, folder=self.folder, needs=f"storing {stem}.mp4 needs",
                              needed=needed + error.needed_bytes, consequence=not_stored) from error
        try:
            video_path = self._publish_video(episode.mp4, stem)
        except FileExistsError:
            raise
        except OSError as error:
            raise store_failed(error, folder=self.folder, needs=f"storing {stem}.mp4 needs", needed=needed,
                              consequence=not_stored) from error
        metadata = metadata_for(video_path.name)
        poster = self._write_poster(video_path, episode.mp4, reserve=index_bytes(metadata) + 64)
        if poster is not None:
            metadata["poster"] = poster
        record = self._write_record(episode, video_path.name.removesuffix(".mp4"))
        if record is not None:
            metadata["record"] = record
        if chosen is not None:
            metadata["chosen"] = chosen
        item = _Unindexed(video_path, metadata)
        try:
            self._write_index(item)
        except FileExistsError:
            raise
        except OSError as error:
            self._unindexed.append(item)
            raise self._index_failed(error, item) from error
        return video_path, item.metadata

    def store_record(self, *, episode, stem: str, tag, evaluation_round: int, episode_index: int,
                     checkpoint: str | None) -> dict | None:
        """Keep ``episode`` without its video: its replay record under ``stem`` (or the next
        variant no video, sidecar, poster or record has) and a manifest line without ``file``
        (``naming.episode_metadata``); the line, None if the episode has no record (nothing
        written). StoreFailed if the folder cannot take them."""
        if episode.record is None:
            return None
        needs = f"keeping the replay record of {stem} needs"
        try:
            self._write_unindexed()
            for attempt in range(1, _MAX_NAME_ATTEMPTS + 1):
                name = numbered_stem(stem, attempt)
                if self._stem_taken(name):
                    continue
                record = publish_record(episode.record_kind, episode.record, self.folder, name)
                if record is not None:
                    break
            else:
                raise FileExistsError(f"no free name for {stem} in {self.folder}")
            metadata = episode_metadata(
                record_name=record, episode=episode, tag=tag, evaluation_round=evaluation_round,
                episode_index=episode_index, run_id=self.run_id, checkpoint=checkpoint,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            )
            append_record(self.manifest_path, metadata)
        except StoreFailed:
            raise
        except FileExistsError:
            raise
        except OSError as error:
            raise store_failed(error, folder=self.folder, needs=needs, needed=len(episode.record) + 4096,
                               consequence="the episode's record was not kept") from error
        return metadata

    def _write_record(self, episode, stem: str) -> str | None:
        """The replay record of a video's episode beside it; its name, or None if the episode
        has none or it cannot be written (said; the video and its index go on)."""
        if episode.record is None:
            return None
        try:
            return publish_record(episode.record_kind, episode.record, self.folder, stem)
        except Exception as error:
            _log.warning("the replay record of %s could not be written (%s: %s); the video is stored without it",
                         stem, type(error).__name__, error)
            return None

    def _stem_taken(self, name: str) -> bool:
        folder = self.folder
        return (os.path.lexists(folder / f"{name}.mp4") or os.path.lexists(folder / f"{name}.json")
                or os.path.lexists(folder / poster_name(name)) or names_taken(folder, name))

    def reconcile(self) -> list[dict]:
        """Complete the index of this run's videos: first the entries this store could not
        write (with their full records), then ``reconcile_index`` for what a crash left.
        Returns the records added by ``reconcile_index`` (recovered ones); StoreFailed if
        the folder still cannot take them."""
        self._write_unindexed()
        recovered = reconcile_index(self.folder, run_id=self.run_id)
        self._write_missing_posters()
        return recovered

    def record_training(self, training_iteration: int, *, env_steps, return_mean) -> bool:
        """Append a train() call's mean training-episode return (and env steps) to the
        folder's training record (``training_record.TRAINING``), which the gallery plots;
        whether it was written. A failure is logged (once) and costs nothing else."""
        record = training_record(training_iteration=training_iteration, env_steps=env_steps,
                                 return_mean=return_mean, run_id=self.run_id)
        try:
            append_record(self.folder / TRAINING, record)
        except OSError as error:
            # A full or unwritable folder is said by the session when a video meets it.
            level = logging.DEBUG if self._training_trouble_said else logging.INFO
            self._training_trouble_said = True
            _log.log(level, "could not record the training return of iteration %d in %s (%s); the gallery's plot "
                            "lacks it", training_iteration, self.folder / TRAINING, error)
            return False
        return True

    def _write_poster(self, video: Path, mp4: bytes | None, *, reserve: int) -> str | None:
        """Write ``video``'s poster (its last frame, decoded from ``mp4`` or the file) beside
        it, leaving ``reserve`` bytes free for what must follow; the poster's file name, or
        None if it cannot be written (said once) or a file has its name (kept as it is)."""
        poster = video.with_name(poster_name(video.name))
        try:
            if os.path.lexists(poster):
                return None
            data = last_frame_jpeg(video if mp4 is None else mp4)
            if not self.can_store(len(data) + reserve):
                raise OSError(errno.ENOSPC, f"no room for {len(data)} bytes beside what the video's index needs")
            if not publish_file(self.folder, data, poster):
                return None
        except Exception as error:  # a poster is a view of the video: its faults cost nothing else
            self._poster_failed(video, error)
            return None
        return poster.name

    def _poster_failed(self, video: Path, error: Exception) -> None:
        """Say the first failure (a full or unwritable folder only at info level: the
        session says that once, for the videos); later ones at debug level."""
        import av

        if self._poster_trouble_said:
            level = logging.DEBUG
        else:
            disk = isinstance(error, OSError) and not isinstance(error, av.FFmpegError)
            level = logging.INFO if disk else logging.WARNING
        self._poster_trouble_said = True
        _log.log(level, "no poster for %s (%s: %s); the gallery shows its box without one", video.name,
                 type(error).__name__, error)

    def _write_missing_posters(self) -> int:
        """Posters for this run's indexed videos that have none, newest first, for at most
        ``RECONCILE_POSTER_SECONDS``; how many were written."""
        listed = {record.get("file") for record in read_manifest(self.folder) if record.get("run_id") == self.run_id}
        with os.scandir(self.folder) as entries:
            names = {entry.name for entry in entries}
        videos = sorted(
            (name for name in names
             if name in listed and parse_video_name(name, self.run_id) is not None and poster_name(name) not in names),
            reverse=True,
        )
        deadline = time.monotonic() + RECONCILE_POSTER_SECONDS
        written = 0
        for done, name in enumerate(videos):
            if time.monotonic() >= deadline:
                _log.info("%d videos in %s are left without a poster for now (the next reconciliation goes on)",
                          len(videos) - done, self.folder)
                break
            video = self.folder / name
            if not os.path.isfile(video) or os.path.islink(video):
                continue
            if self._write_poster(video, None, reserve=0) is not None:
                written += 1
        return written

    def _publish_video(self, mp4: bytes, stem: str) -> Path:
        for attempt in range(1, _MAX_NAME_ATTEMPTS + 1):
            name = numbered_stem(stem, attempt)
            # The sidecar and poster names are reserved with the video: a taken one also moves us on.
            if (os.path.lexists(self.folder / f"{name}.json") or os.path.lexists(self.folder / poster_name(name))
                    or names_taken(self.folder, name)):
                continue
            video_path = self.folder / f"{name}.mp4"
            if publish_file(self.folder, mp4, video_path):
                return video_path
        raise FileExistsError(f"no free name for {stem} in {self.folder}")

    def _write_index(self, item: _Unindexed) -> None:
        if not item.sidecar_written:
            sidecar = item.video.with_suffix(".json")
            text = json.dumps(item.metadata, indent=2) + "\n"
            if not publish_file(self.folder, text.encode(), sidecar):
                raise FileExistsError(f"sidecar {sidecar} appeared while writing")
            item.sidecar_written = True
        append_record(self.manifest_path, item.metadata)

    def _write_unindexed(self) -> None:
        """Write the index entries earlier calls could not; StoreFailed if still impossible."""
        if not self._unindexed:
            return
        listed = {record.get("file") for record in read_manifest(self.folder)}
        while self._unindexed:
            item = self._unindexed[0]
            if item.video.name in listed:  # reconcile_index got there first
                self._unindexed.pop(0)
                continue
            if not item.sidecar_written and item.video.with_suffix(".json").exists():
                item.sidecar_written = True  # written by reconcile_index; its manifest line follows
            try:
                self._write_index(item)
            except OSError as error:
                raise self._index_failed(error, item) from error
            self._unindexed.pop(0)

    def _index_failed(self, error: OSError, item: _Unindexed) -> StoreFailed:
        return store_failed(
            error, folder=self.folder, needs=f"the sidecar and manifest line of {item.video.name} need",
            needed=index_bytes(item.metadata), video=item.video, metadata=item.metadata,
            consequence="the video is stored; its sidecar and manifest line follow when the folder takes writes again",
        )

