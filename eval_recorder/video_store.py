"""Storing one finished video in the (claimed) video folder: ``VideoStore`` gives its mp4
a name no file has, then writes its JSON sidecar and appends its manifest line, each
complete before it appears (``atomic_files``), never overwriting anything. When the folder
cannot take a video it raises ``StoreFailed``; index entries it could not write follow with
the next video or ``VideoStore.reconcile``, which also repairs what a crash left.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from eval_recorder.atomic_files import publish_file
from eval_recorder.errors import StoreFailed
from eval_recorder.naming import numbered_stem, video_metadata
from eval_recorder.store_failure import store_failed
from eval_recorder.video_index import MANIFEST, append_record, index_bytes, read_manifest, reconcile_index

__all__ = ["VideoStore"]

_MAX_NAME_ATTEMPTS = 10_000


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
              checkpoint: str | None) -> tuple[Path, dict]:
        """Write ``episode``'s mp4 and sidecar under ``stem`` (or the next free variant)
        and append its manifest line; StoreFailed if the folder cannot take them.

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
        item = _Unindexed(video_path, metadata_for(video_path.name))
        try:
            self._write_index(item)
        except FileExistsError:
            raise
        except OSError as error:
            self._unindexed.append(item)
            raise self._index_failed(error, item) from error
        return video_path, item.metadata

    def reconcile(self) -> list[dict]:
        """Complete the index of this run's videos: first the entries this store could not
        write (with their full records), then ``reconcile_index`` for what a crash left.
        Returns the records added by ``reconcile_index`` (recovered ones); StoreFailed if
        the folder still cannot take them."""
        self._write_unindexed()
        return reconcile_index(self.folder, run_id=self.run_id)

    def _publish_video(self, mp4: bytes, stem: str) -> Path:
        for attempt in range(1, _MAX_NAME_ATTEMPTS + 1):
            name = numbered_stem(stem, attempt)
            # The sidecar name is reserved with the video: a taken one also moves us on.
            if (self.folder / f"{name}.json").exists():
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

