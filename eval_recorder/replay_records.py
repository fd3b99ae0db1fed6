"""Replay records in the video folder: their names and how the driver writes them.

Every evaluation episode's replay record (``RecordedEpisode.record``, made on the eval runner
and sent through Ray with the episode) is written by the driver beside the episode's video,
its name sharing the video's stem: the core's own record (``eval_recorder.episode_record``)
as ``<stem>.episode.npz``; a plug-in frame source's own kind through its
``publish_record`` (Flatland: a flatland Trajectory folder ``<stem>/``). Each appears
complete or not at all and never replaces anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from eval_recorder.atomic_files import publish_file
from eval_recorder.frames import plugin_sources

__all__ = ["EPISODE", "EPISODE_SUFFIX", "names_taken", "publish_record", "record_name", "record_names"]

EPISODE = "episode"  # the core's record kind (EpisodeCapture / EpisodeRecord)
EPISODE_SUFFIX = ".episode.npz"


def _plugin(kind: str):
    for source in plugin_sources():
        if source.record_kind == kind:
            return source
    raise ValueError(f"no frame source writes replay records of kind {kind!r}; install the plug-in that made them.")


def record_name(kind: str, stem: str) -> str:
    """The name a record of ``kind`` for the video stem ``stem`` gets."""
    return f"{stem}{EPISODE_SUFFIX}" if kind == EPISODE else _plugin(kind).record_name(stem)


def record_names(stem: str) -> list[str]:
    """Every name a record of ``stem`` may take (of any kind): a stem is free only if none exists."""
    names = [f"{stem}{EPISODE_SUFFIX}"]
    for source in plugin_sources():
        if source.record_kind is not None:
            names.append(source.record_name(stem))
    return names


def names_taken(folder: Path, stem: str) -> bool:
    """Whether a record name of ``stem`` exists in ``folder`` (a symlink counts)."""
    return any(os.path.lexists(Path(folder) / name) for name in record_names(stem))


def publish_record(kind: str, data: bytes, folder: Path, stem: str) -> str | None:
    """Write the record ``data`` of ``kind`` into ``folder`` for the video stem ``stem``;
    its name, or None if that name is taken (nothing changed). OSError if it cannot be written."""
    folder = Path(folder)
    if kind == EPISODE:
        name = record_name(kind, stem)
        return name if publish_file(folder, data, folder / name) else None
    return _plugin(kind).publish_record(data, folder, stem)
