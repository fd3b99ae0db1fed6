"""Render later: videos of stored episodes, drawn again on the driver from their replay records.

``render_records(path, ...)`` takes a video folder (every episode its manifest lists with a
replay record and no video) or one episode's record in it (a ``<stem>/`` flatland
Trajectory, a ``<stem>.episode.npz``) and makes each episode's video as the live recorder
would have made it at those settings: the same frames (``frame_steps``: the reset frame,
every ``frame_every``-th step, always the last), the same label (``overlay.label_text`` with
the iteration whose weights acted, the step, and the frame source's extra text or the return
so far), the same encoder. A plug-in's record is drawn by its frame source
(``FrameSource.render_record``); the core's own record (``episode_record``) is replayed in
an env the caller gives and drawn by its ``render()`` (``frames.RenderFrames``).

Guarded like every write: the paths are checked, every episode's replay is checked (a record
that does not replay is refused, naming the first step that differs) and a folder a live run
holds is refused — all before anything is written — then the folder is claimed
(``folder_guard``) for the run that owns it. Each video is encoded into a hidden temporary
file in the folder and appears complete under its record's stem (``atomic_files``), then its
poster, sidecar and a manifest line that supersedes the episode's line without a video
(``video_index.read_manifest``); the gallery is rebuilt at the end. Nothing is overwritten:
after an interruption, a second call finds the video an earlier one left without its index
(the same bytes) and completes it, and renders the rest.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from eval_recorder.atomic_files import publish_file, read_regular
from eval_recorder.errors import FolderRefused, UserError
from eval_recorder.frames import DEFAULT_MAX_SIDE, RGB, RenderFrames, plugin_sources
from eval_recorder.overlay import label_text
from eval_recorder.replay_records import EPISODE, EPISODE_SUFFIX
from eval_recorder.video_index import MANIFEST, append_record, read_manifest

__all__ = ["RENDERED", "RenderSettings", "frame_steps", "render_records", "rendered_mp4"]

RENDERED = "later"  # the sidecar's "rendered" field of a video drawn from its record
_TEMP_MARK = ".render-"  # hidden temporary files of the encoder: .<stem>.mp4.render-<pid>.tmp

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderSettings:
    """How stored episodes are drawn (the live recording's ``recording.*`` options)."""

    fps: int = 10
    max_side: int = DEFAULT_MAX_SIDE
    overlay: bool = True
    frame_every: int = 1

    def check(self) -> None:
        for name, value, least in (("fps", self.fps, 1), ("frame_every", self.frame_every, 1),
                                   ("max_side", self.max_side, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"recording.{name}={value} cannot render a video; give an integer of at least {least}.")


@dataclass(frozen=True)
class _Episode:
    """One stored episode to render: its manifest line and its record."""

    line: dict
    record: Path
    kind: str  # "episode" or a plug-in's record_kind
    stem: str

    @property
    def video_name(self) -> str:
        return f"{self.stem}.mp4"


def frame_steps(episode_length: int, frame_every: int) -> list[int]:
    """The env steps whose frames a live recording keeps (``recorder.VideoRecorder``): the
    reset (0), every ``frame_every``-th step, and always the last step."""
    steps = [0, *range(frame_every, episode_length + 1, frame_every)]
    if episode_length > 0 and steps[-1] != episode_length:
        steps.append(episode_length)
    return steps


def render_records(path: str | os.PathLike, *, fps: int = 10, max_side: int = DEFAULT_MAX_SIDE, overlay: bool = True,
                   frame_every: int = 1, env: Any = None) -> list:
    """Render the stored episodes at ``path`` (a video folder: each episode with a replay
    record and no video; or one episode's record in it) into videos in that folder; the
    stored videos (``session.StoredVideo``), in manifest order. ``env``: for records of the
    core's kind (``.episode.npz``), the env to replay them in (a function making one, or
    an env), made as the evaluation made it (``render_mode="rgb_array"``).

    Raises ``UserError`` (the path, an episode that already has a video, settings),
    ``FolderRefused`` (a live run holds the folder) or ``ReplayDiverged`` (a record does not
    replay) before anything is written."""
    from eval_recorder.folder_guard import claim_folder, folder_owner, in_use_refusal, untrusted_file_refusal
    from eval_recorder.session import StoredVideo

    settings = RenderSettings(fps=fps, max_side=max_side, overlay=overlay, frame_every=frame_every)
    settings.check()
    folder, episodes = find_episodes(path)
    if not episodes:
        return []
    refusal = untrusted_file_refusal(folder) or in_use_refusal(folder)
    if refusal is not None:
        raise refusal
    run_id = folder_owner(folder).get("run_id")
    if not isinstance(run_id, str):
        raise UserError(f"{folder} has no owner record of the run that made it; render only into a video folder "
                        "that a run of eval_recorder made.")
    make_env = _env_factory(env)
    for episode in episodes:  # every replay checked before anything is written
        for _ in _frames(episode, settings, make_env, steps=[]):
            pass
    claim = claim_folder(folder, run_id=run_id, resume=True)
    stored = []
    try:
        _remove_own_temporaries(folder)
        for episode in episodes:
            metadata = _render_one(folder, episode, settings, make_env)
            if metadata is not None:
                stored.append(StoredVideo(folder / metadata["file"], metadata))
        try:
            from eval_recorder.gallery import write_gallery

            write_gallery(folder)
        except OSError as error:
            _log.warning("the gallery of %s could not be rebuilt (%s); the videos are stored", folder, error)
    finally:
        claim.release()
    return stored


# ---- which episodes -----------------------------------------------------------------------


def find_episodes(path: str | os.PathLike) -> tuple[Path, list[_Episode]]:
    """(the video folder, the episodes to render) of ``path``; UserError if it is neither a
    video folder nor an episode's record in one, or names an episode that has a video.
    Nothing is written."""
    given = Path(os.path.expanduser(os.fspath(path)))
    if not os.path.lexists(given):
        raise UserError(f"render={path} does not exist; give a video folder or one episode's replay record in it "
                        f"(<stem>/ or <stem>{EPISODE_SUFFIX}).")
    absolute = Path(os.path.abspath(given))
    if absolute.is_dir() and not absolute.is_symlink() and os.path.lexists(absolute / MANIFEST):
        folder, record_name = absolute, None
    else:
        folder, record_name = absolute.parent, absolute.name
        if not os.path.lexists(folder / MANIFEST):
            raise UserError(f"render={path} is neither a video folder (one with {MANIFEST}) nor an episode's replay "
                            f"record in one; give a video folder or one episode's record in it.")
    try:
        lines = read_manifest(folder)
    except OSError as error:
        raise UserError(f"the manifest of {folder} cannot be read ({error.strerror or error}); give a video folder "
                        "whose manifest.jsonl is a regular file.") from None
    if record_name is not None:
        line = next((line for line in lines if line.get("record") == record_name), None)
        if line is None:
            raise UserError(f"render={path} is not the replay record of an episode listed in {folder / MANIFEST}; give "
                            f"a video folder or one episode's record in it (<stem>/ or <stem>{EPISODE_SUFFIX}).")
        if isinstance(line.get("file"), str) and os.path.lexists(folder / line["file"]):
            raise UserError(f"the episode of {record_name} already has its video {line['file']}; nothing was rendered.")
        return folder, [_episode(folder, line)]
    return folder, [_episode(folder, line) for line in lines
                    if isinstance(line.get("record"), str) and not isinstance(line.get("file"), str)]


def _episode(folder: Path, line: dict) -> _Episode:
    name = line["record"]
    if not name or "/" in name or name in (".", "..") or (folder / name).is_symlink():
        raise UserError(f"the replay record {name!r} listed in {folder / MANIFEST} is not an entry of that folder "
                        "(a symbolic link, or a path elsewhere), and nothing planted is read; put back the record "
                        "eval_recorder wrote there.")
    if name.endswith(EPISODE_SUFFIX):
        return _Episode(line, folder / name, EPISODE, name.removesuffix(EPISODE_SUFFIX))
    for source in plugin_sources():
        if source.record_kind is not None and source.record_name(name) == name:
            return _Episode(line, folder / name, source.record_kind, name)
    raise UserError(f"no installed frame source reads the replay record {folder / name}; install the plug-in that "
                    "wrote it.")


# ---- drawing --------------------------------------------------------------------------------


def _env_factory(env: Any) -> Callable[[], Any] | None:
    if env is None:
        return None
    if callable(env) and not hasattr(env, "step"):
        return env
    return lambda: env


def _frames(episode: _Episode, settings: RenderSettings, make_env, *, steps: list[int]) -> Iterator[tuple]:
    """(pixel format, frame, label extra) of ``steps`` of ``episode``, after its replay was checked."""
    if episode.kind != EPISODE:
        source = next(source for source in plugin_sources() if source.record_kind == episode.kind)
        try:
            yield from source.render_record(episode.record, max_side=settings.max_side, steps=steps)
        except ValueError as error:  # a damaged or foreign record (what is wrong, in its sentence)
            raise UserError(f"{str(error).rstrip('.')}; the episode cannot be rendered from this record.") from None
        return
    if make_env is None:
        raise UserError(f"the episode of {episode.record.name} is replayed in its env, which was not given; pass the "
                        "env (render_records(..., env=...)), or render the folder of a run_eval.py run.")
    yield from _replayed_frames(episode.record, make_env, max_side=settings.max_side, steps=steps)


def _replayed_frames(path: Path, make_env, *, max_side: int, steps: list[int]) -> Iterator[tuple]:
    from eval_recorder.episode_record import EpisodeRecord, replay

    try:
        record = EpisodeRecord.from_bytes(read_regular(path))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read as an episode's replay record ({error}); give a record that "
                        "eval_recorder wrote.") from None
    ended = replay(make_env, record)  # ReplayDiverged at the first step that differs
    _close(ended)
    if not steps:
        return
    env = make_env()
    try:
        env.reset(seed=record.seed, options=record.options)
        source = RenderFrames(env, max_side=max_side)
        source.new_episode()
        returns: dict = {}
        wanted = iter(steps)
        due = next(wanted, None)
        for step in range(0, record.steps + 1):
            if step > 0:
                action = record.actions_at(step)
                if record.multi_agent:
                    _, rewards, *_ = env.step(action)
                else:
                    _, reward, *_ = env.step(action)
                    rewards = {None: reward}
                for agent, reward in rewards.items():
                    returns[agent] = returns.get(agent, 0.0) + float(reward)
            if step == due:
                pixel_format, frame = source.frame()
                yield pixel_format, frame, f"return {sum(returns.values()):.1f}"
                due = next(wanted, None)
    finally:
        _close(env)


def _close(env) -> None:
    close = getattr(env, "close", None)
    if callable(close):
        close()


def rendered_mp4(episode: _Episode, settings: RenderSettings, make_env, scratch: Path) -> tuple[bytes, dict]:
    """The episode's mp4 (encoded into the file ``scratch``, removed after) and its video
    fields (frames, frame_every, fps, width, height)."""
    from eval_recorder.encoding import StreamingEncoder

    line = episode.line
    steps = frame_steps(int(line["episode_length"]), settings.frame_every)
    iteration = line.get("training_iteration")
    encoder = None
    try:
        for step, (pixel_format, frame, extra) in zip(steps, _frames(episode, settings, make_env, steps=steps)):
            if encoder is None:
                height, width = frame.shape[:2] if pixel_format == RGB else (frame.shape[0] * 2 // 3, frame.shape[1])
                encoder = StreamingEncoder(scratch, width=width, height=height, fps=settings.fps)
            label = label_text(training_iteration=iteration, step=step, extra=extra) if settings.overlay else None
            (encoder.add if pixel_format == RGB else encoder.add_yuv420p)(np.ascontiguousarray(frame), label=label)
        frames = encoder.close()
        mp4 = read_regular(scratch)
    except BaseException:
        if encoder is not None:
            encoder.abort()
        raise
    finally:
        scratch.unlink(missing_ok=True)
    return mp4, {"frames": frames, "frame_every": settings.frame_every, "fps": settings.fps, "width": encoder.width,
                 "height": encoder.height}


# ---- storing --------------------------------------------------------------------------------


def _render_one(folder: Path, episode: _Episode, settings: RenderSettings, make_env) -> dict | None:
    """Render and store one episode (claimed folder); its video's record, None if it was left as it is."""
    from eval_recorder.poster import poster_name, write_poster

    video = folder / episode.video_name
    listed = {line.get("file") for line in read_manifest(folder)}
    if episode.video_name in listed:
        return None  # rendered meanwhile
    scratch = folder / f".{episode.video_name}{_TEMP_MARK}{os.getpid()}.tmp"
    mp4, fields = rendered_mp4(episode, settings, make_env, scratch)
    if not publish_file(folder, mp4, video):
        try:
            same = read_regular(video) == mp4
        except OSError:
            same = False
        if not same:
            _log.warning("%s exists and is not this rendering; it is left as it is and %s is not rendered", video,
                         episode.record.name)
            return None
        # an interrupted rendering left this video without its index: completed below
    metadata = {"file": video.name, **{key: value for key, value in episode.line.items() if key != "record"}, **fields,
                "bytes": len(mp4), "sha256": hashlib.sha256(mp4).hexdigest()}
    try:
        write_poster(video, mp4=mp4)  # None if it exists: an interrupted rendering's own
    except Exception as error:  # a poster is a view of the video: its faults cost nothing else
        _log.warning("no poster for %s (%s: %s)", video.name, type(error).__name__, error)
    if os.path.lexists(folder / poster_name(video.name)):
        metadata["poster"] = poster_name(video.name)
    metadata.update({
        "record": episode.line["record"], "rendered": RENDERED,
        "render_settings": {"fps": settings.fps, "max_side": settings.max_side, "overlay": settings.overlay,
                            "frame_every": settings.frame_every},
        "rendered_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
    })
    sidecar = video.with_suffix(".json")
    if not publish_file(folder, (json.dumps(metadata, indent=2) + "\n").encode(), sidecar):
        try:
            kept = json.loads(read_regular(sidecar))
        except (OSError, ValueError):
            kept = None
        if not isinstance(kept, dict) or kept.get("file") != video.name or kept.get("sha256") != metadata["sha256"]:
            raise FolderRefused(f"{sidecar} exists and is not the record of {video.name}; move it away and render "
                                f"{episode.record.name} again.")
        metadata = kept  # an interrupted rendering's own sidecar
    append_record(folder / MANIFEST, metadata)
    return metadata


def _remove_own_temporaries(folder: Path) -> None:
    """Hidden encoder files of renderings that were killed (the folder is claimed: no one else's)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and _TEMP_MARK in entry.name and entry.name.endswith(".tmp") \
                    and entry.is_file(follow_symlinks=False):
                os.unlink(folder / entry.name)
