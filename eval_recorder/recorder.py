"""The video of one env's episodes on the env runner: frames → encoder → finished mp4 bytes.

``VideoRecorder`` asks its frame source for the reset frame and a frame every
``frame_every`` steps (the last step's frame always), burns the label in and streams them
to an encoder (a source that draws beside the env, ``FrameSource.drawn_beside``, gives the
frame's state instead, and the encoder helper process draws it); at the episode's end it returns a ``RecordedEpisode``: the complete mp4
bytes and the episode's facts, which travel to the driver through Ray, never through a
shared path. The encoder writes into a private temporary file on the runner's own machine
(not the video folder, which only the driver writes), so memory stays flat during the episode.

A source drawn beside the env does not make the env wait for its video either: ``finish``
asks the helper to finish the mp4 and returns the episode without it; the video being drawn
(``PendingVideo``) is in ``drawing`` and the env plays the next episode meanwhile.

``start(later=True)`` (a source drawn beside, with a narrower ``recording.select``) opens no
encoder: each due frame's state and label are only kept (a few bytes), and ``finish`` returns
the episode without its video, which ``draw_later()`` then hands to the encoder helper as a
whole (``PendingVideo``) if the episode may be chosen; the helper draws it on its own core
while the env plays on.

What can go wrong while an episode is recorded costs that episode's video only: ``start``,
``capture`` and ``finish`` raise a ``RecordingError`` (``NoFrames``: the frames;
``EncoderFailed``: the encoder or its helper process; ``ScratchFailed``: the scratch
folder), the recording is dropped, and the next ``start`` records again (with a new
encoder helper if the old one is gone). The wrapper turns each into a ``DroppedEpisode``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from eval_recorder.encoding import StreamingEncoder, start_encoder_process
from eval_recorder.errors import EncoderFailed, NoFrames
from eval_recorder.frames import RGB, YUV420P, FrameSource
from eval_recorder.scratch import new_episode_file, remove_orphans, scratch_failure

__all__ = ["DroppedEpisode", "PendingVideo", "RecordedEpisode", "VideoRecorder"]

_FULL_OR_UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class RecordedEpisode:
    """One finished, recorded evaluation episode, as produced on an eval runner."""

    mp4: bytes
    env_label: str  # short label of the env (naming.env_label): the first part of the file name
    env_seed: int | None  # the seed its reset got (replays the episode), None if the env was reset without one
    episode_length: int  # env steps
    episode_return: float  # summed over agents
    frames: int
    fps: int
    width: int
    height: int
    runner_index: int
    runner_host: str
    runner_pid: int
    runner_sequence: int  # n-th recorded episode of this env on that runner
    runner_env: int = 0  # which env of that runner (n-th made in its process): runners may hold several
    frame_every: int = 1  # a frame was recorded every this many env steps (plus the last step)
    weights_seq_no: int | None = None  # version of the weights that chose every action (stamped by the callback)
    agent_returns: dict[str, float] | None = None  # per agent, for multi-agent envs
    facts: dict[str, Any] = field(default_factory=dict)
    """What the frame source knows of the episode (Flatland: num_agents, agents_arrived,
    completion, and scenario when a saved scenario was played)."""
    evaluation_round: int | None = None  # the driver's evaluation round it was played in
    record: bytes | None = None
    """The episode's replay record (``to_bytes()`` of its capture), None if it could not be kept."""
    record_kind: str | None = None  # "episode" (eval_recorder.episode_record) or a frame source's record_kind


@dataclass(frozen=True)
class DroppedEpisode:
    """The video of one evaluation episode was dropped on an eval runner: why, and which one."""

    cause: str  # one sentence, the same for every episode dropped for the same reason
    env_label: str
    env_seed: int | None
    step: int  # env steps into the episode when it was dropped
    runner_index: int
    runner_host: str
    runner_pid: int
    evaluation_round: int | None = None  # stamped on the eval runner, like RecordedEpisode's


class VideoRecorder:
    """Records the episodes of one env, one at a time, from its frame source.

    ``frame_every=k`` records the reset frame, then the frame after every k-th step,
    and always the frame after the episode's last step (so a video shows how the
    episode ended). The video plays at ``fps`` either way: k > 1 makes it k times
    faster and cheaper (fewer frames rendered and encoded).
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        fps: int,
        runner_index: int,
        frame_every: int = 1,
        label: Callable[[], str] | None = None,
        runner_env: int = 0,
    ) -> None:
        """``label``, if given, returns the text burned into each frame as it is captured."""
        if frame_every < 1:
            raise ValueError(f"frame_every must be >= 1, got {frame_every}")
        remove_orphans()  # unfinished episodes of eval runners that died on this machine
        with contextlib.suppress(OSError):  # (the first episode says why, if the helper cannot start)
            start_encoder_process()  # the process's one encoder helper loads FFmpeg while the env resets
        self.source = source
        self._label = label
        self._fps = fps
        self._frame_every = frame_every
        self._runner_index = runner_index
        self._runner_env = runner_env
        self._encoder: StreamingEncoder | None = None
        self._pixel_format = RGB
        self._seed: int | None = None
        self._sequence = 0
        self._steps = 0
        self._last_step_skipped = False
        self._later: _Later | None = None  # the episode's frames kept to draw after it ended
        self.undrawn: _Later | None = None  # the last finished episode's, for draw_later()
        self.drawing: PendingVideo | None = None  # the last finished episode's video, still drawn beside

    @property
    def recording(self) -> bool:
        return self._encoder is not None or self._later is not None

    @property
    def runner_index(self) -> int:
        return self._runner_index

    def start(self, env_seed: int | None, *, later: bool = False) -> None:
        """Begin a new episode's video (discarding an unfinished one) with the reset frame;
        ``later``: keep its frames' states to draw after it ended (a source drawn beside only)."""
        self.discard()
        self.undrawn = self.drawing = None
        self.source.new_episode()
        drawing = self.source.drawn_beside
        if drawing is not None:  # drawn by the encoder helper: its size and scene, no frame here
            pixel_format, frame = YUV420P, None
            width, height = self.source.frame_size()
            drawing = (drawing, self.source.scene())
        else:
            pixel_format, frame = self.source.frame()
            if pixel_format == RGB:
                height, width = frame.shape[:2]
            else:
                height, width = frame.shape[0] * 2 // 3, frame.shape[1]
        if later and drawing is not None:  # its states are kept; the encoder helper draws them later
            self._later = _Later(drawing, width, height, [])
        else:
            path = new_episode_file()
            try:
                self._encoder = StreamingEncoder(path, width=width, height=height, fps=self._fps, drawing=drawing)
            except BaseException:
                _remove(path)
                raise
        self._pixel_format = pixel_format
        self._seed = env_seed
        self._steps = 0
        self._last_step_skipped = False
        self._send(frame)

    def capture(self) -> None:
        """Called after every env step: adds the frame of the env's current state if it is due."""
        if not self.recording:
            return
        self._steps += 1
        self._last_step_skipped = self._steps % self._frame_every != 0
        if not self._last_step_skipped:
            self._send(self._next_frame())

    def _next_frame(self):
        if self.source.drawn_beside is not None:
            return None  # the encoder helper draws it (_send)
        pixel_format, frame = self.source.frame()
        if pixel_format != self._pixel_format or frame.shape != self._shape:
            raise NoFrames(
                f"the frame source changed its frames in the middle of an episode "
                f"({self._pixel_format} {self._shape} to {pixel_format} {frame.shape})"
            )
        return frame

    @property
    def _shape(self) -> tuple[int, ...]:
        encoder = self._encoder
        if self._pixel_format == RGB:
            return (encoder.height, encoder.width, 3)
        return (encoder.height * 3 // 2, encoder.width)

    def _send(self, frame) -> None:
        """Hand ``frame`` to the encoder, which burns the label (if set) into its copy; no
        ``frame``: the source's state, which the encoder helper draws (``drawn_beside``)."""
        label = None if self._label is None else self._label()
        if self._later is not None:
            self._later.frames.append((self.source.state(), label))
            return
        with _ScratchErrors():
            try:
                if frame is None:
                    self._encoder.add_state(self.source.state(), label=label)
                elif self._pixel_format == RGB:
                    self._encoder.add(frame, label=label)
                else:
                    self._encoder.add_yuv420p(frame, label=label)
            except ValueError as error:  # a plug-in source's frame of the wrong shape or dtype
                raise NoFrames(f"the frame source {type(self.source).__name__} gave a frame the encoder cannot "
                               f"take ({error}); make its frame() return what FrameSource.frame() describes.") from None

    def finish(
        self, *, env_label: str, episode_length: int, episode_return: float,
        agent_returns: dict[str, float] | None = None,
    ) -> RecordedEpisode:
        """Finish the mp4 of the current episode and return it with the episode's facts (kept
        to draw later: without its mp4, its frames in ``undrawn``; drawn beside the env: without
        its mp4, which the helper finishes while the env plays on, in ``drawing``)."""
        if not self.recording:
            raise RuntimeError("finish() without a recording in progress")
        if self._last_step_skipped:
            # The env still shows the last step: a reset would have discarded this recording.
            self._send(self._next_frame())
            self._last_step_skipped = False
        encoder, self._encoder = self._encoder, None
        later, self._later = self._later, None
        if later is not None:
            mp4, frames, (width, height) = b"", len(later.frames), (later.width, later.height)
            self.undrawn = later
        elif self.source.drawn_beside is not None:  # the helper draws on: the env need not wait for it
            mp4, frames, (width, height) = b"", encoder.frames, (encoder.width, encoder.height)
            try:
                with _ScratchErrors():
                    encoder.finish_later()
            except BaseException:
                encoder.abort()
                _remove(encoder.path)
                raise
            self.drawing = PendingVideo(encoder)
        else:
            width, height = encoder.width, encoder.height
            try:
                with _ScratchErrors():
                    frames = encoder.close()
                    mp4 = encoder.path.read_bytes()
            finally:
                _remove(encoder.path)
        return self._episode(mp4=mp4, frames=frames, width=width, height=height, env_seed=self._seed,
                             env_label=env_label, episode_length=episode_length, episode_return=episode_return,
                             agent_returns=agent_returns)  # fmt: skip

    def unrecorded(
        self, *, env_seed: int | None, env_label: str, episode_length: int, episode_return: float,
        agent_returns: dict[str, float] | None = None,
    ) -> RecordedEpisode:
        """The episode that just ended without a video (it was dropped), with its facts: what
        travels to the driver for its replay record."""
        return self._episode(mp4=b"", frames=0, width=0, height=0, env_seed=env_seed, env_label=env_label,
                             episode_length=episode_length, episode_return=episode_return,
                             agent_returns=agent_returns)  # fmt: skip

    def _episode(self, *, mp4: bytes, frames: int, width: int, height: int, env_seed: int | None, env_label: str,
                 episode_length: int, episode_return: float, agent_returns: dict[str, float] | None) -> RecordedEpisode:
        self._sequence += 1
        return RecordedEpisode(
            mp4=mp4,
            env_label=env_label,
            env_seed=env_seed,
            episode_length=episode_length,
            episode_return=float(episode_return),
            agent_returns=agent_returns,
            facts=self.source.facts(),
            frames=frames,
            fps=self._fps,
            width=width,
            height=height,
            runner_index=self._runner_index,
            runner_host=socket.gethostname(),
            runner_pid=os.getpid(),
            runner_sequence=self._sequence,
            runner_env=self._runner_env,
            frame_every=self._frame_every,
        )

    def draw_later(self) -> PendingVideo:
        """Hand the last finished episode's kept frames to the encoder helper, which draws and
        encodes them while the env plays on; raises a ``RecordingError`` if it cannot start."""
        later, self.undrawn = self.undrawn, None
        if later is None:
            raise RuntimeError("draw_later() without a finished episode kept to draw")
        path = new_episode_file()
        try:
            with _ScratchErrors():
                encoder = StreamingEncoder(path, width=later.width, height=later.height, fps=self._fps,
                                           drawing=later.drawing, frames=later.frames)
                encoder.finish_later()
        except BaseException:
            _remove(path)
            raise
        return PendingVideo(encoder)

    def verify(self) -> None:
        """Finish the recording in progress and keep nothing, raising what its encoder raises
        (e.g. a drawing that fails in the encoder helper): a probe's check."""
        encoder, self._encoder = self._encoder, None
        if encoder is None:
            return
        try:
            with _ScratchErrors():
                encoder.close()
        finally:
            _remove(encoder.path)

    def discard(self) -> None:
        """Drop an unfinished recording (the episode was cut off); nothing is kept."""
        self._later = None
        if self._encoder is not None:
            encoder, self._encoder = self._encoder, None
            encoder.abort()
            _remove(encoder.path)


@dataclass
class _Later:
    """An episode's frames kept to draw after it ended: the drawing, the size, (state, label) per frame."""

    drawing: tuple[str, bytes]
    width: int
    height: int
    frames: list


class PendingVideo:
    """An episode's video the encoder helper is drawing: ``done()`` without waiting, ``result()``
    waits (raising a ``RecordingError`` if it failed) and returns (mp4 bytes, frames)."""

    def __init__(self, encoder: StreamingEncoder) -> None:
        self._encoder = encoder

    def done(self) -> bool:
        return self._encoder.done()

    def result(self) -> tuple[bytes, int]:
        encoder = self._encoder
        try:
            with _ScratchErrors():
                frames = encoder.wait()
                return encoder.path.read_bytes(), frames
        finally:
            _remove(encoder.path)

    def abort(self) -> None:
        self._encoder.abort()
        _remove(self._encoder.path)


class _ScratchErrors:
    """``with _ScratchErrors():`` an encoder failure that is the scratch folder's (full,
    read-only) as ScratchFailed, which names the folder and what to do. A class, not a
    generator: it is entered on the stepping thread for every frame."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, EncoderFailed):
            if error.errno in _FULL_OR_UNWRITABLE:
                raise scratch_failure(OSError(error.errno, os.strerror(error.errno))) from None
        elif isinstance(error, OSError):  # reading the finished file back
            if error.errno in _FULL_OR_UNWRITABLE:
                raise scratch_failure(error) from None
        return False


def _remove(path) -> None:
    with contextlib.suppress(OSError):  # a scratch folder gone read-only: remove_orphans tries again later
        path.unlink(missing_ok=True)
