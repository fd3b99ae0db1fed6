"""Every error eval_recorder raises on purpose, under one base class.

Each message is one sentence: what is wrong and what to do. The ones a library user meets
are exported from ``eval_recorder`` (``tests/test_public_api.py`` pins them); catch
``eval_recorder.RecordingError`` for all of them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "EncoderFailed",
    "FolderRefused",
    "NoFrames",
    "RecordingError",
    "RecordingInTraining",
    "ReplayDiverged",
    "RunnerRefused",
    "ScratchFailed",
    "StoreFailed",
    "TRAINING_RENDER_REFUSED",
    "UserError",
]

TRAINING_RENDER_REFUSED = (
    "render is set for the training env runners, but recording is evaluation-only; "
    "remove render from the training env config and set it in the evaluation config "
    "(evaluation.render=human)."
)


class RecordingError(Exception):
    """Base class of the errors eval_recorder raises (the message says what to do)."""


class FolderRefused(RecordingError):
    """This run may not use the video folder (message: what is wrong, what to do)."""


class NoFrames(RecordingError, ValueError):
    """The env cannot be recorded; the message says why and what to do."""


class RunnerRefused(RecordingError, ValueError):
    """An eval runner cannot record (its env's frames, its scratch folder) or did not answer
    the check made before anything is claimed; the message says which and what to do."""


class EncoderFailed(RecordingError, RuntimeError):
    """An episode's video could not be encoded: its encoder failed, or the encoder helper
    process died or answered nothing within its deadline. Costs that episode's video only.

    ``cause``: what happened, in words; ``errno``: the OS error behind it, if one was named."""

    def __init__(self, message: str, *, cause: str, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.errno = errno_code


class ScratchFailed(RecordingError, OSError):
    """The eval runner's scratch folder (``eval_recorder.scratch``) could not take an
    episode's video (full, read-only, gone); the message names the folder and how to
    choose another."""


class RecordingInTraining(RecordingError, ValueError):
    """``render`` was set for the training env runners: recording is evaluation-only."""

    def __init__(self, message: str = TRAINING_RENDER_REFUSED) -> None:
        super().__init__(message)


class UserError(RecordingError):
    """What the user asked for cannot work; the message says what to do instead (the
    entry points of the Hydra application exit with code 2)."""


class StoreFailed(RecordingError, OSError):
    """The video folder could not take a video (or its index entries); nothing half-written
    is left behind.

    ``reason``: ``"full"`` (ENOSPC, EDQUOT), ``"unwritable"`` (EACCES, EPERM, EROFS, the
    folder is gone) or ``"failed"`` (any other OSError, e.g. EIO). ``folder``: the video
    folder. ``needed_bytes``: what the files to write hold. ``free_bytes``: free space
    measured after the failure (None if unknown). ``video``: None if the video was not
    stored (keep the episode and store it again later); else the path the video has in the
    folder: only its sidecar and/or manifest line are missing, and the store writes them
    on its next ``store``/``reconcile`` call (or ``reconcile_index`` does after a crash).
    ``metadata``: the video's full record when ``video`` is set. ``errno``: the OS error.
    """

    def __init__(self, message: str, *, reason: str, folder: Path, needed_bytes: int,
                 free_bytes: int | None = None, video: Path | None = None, metadata: dict | None = None,
                 errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code
        self.reason = reason
        self.folder = folder
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.video = video
        self.metadata = metadata


class ReplayDiverged(RecordingError):
    """An episode's replay from its record differs from the record: the env does not repeat
    the episode from its seed (or initial state) and the recorded actions.

    The message names the first step that differs (``step``: 1 for the first ``step()``
    after the reset) and, for a multi-agent env, the agent (``agent``: its id, else None);
    ``field`` is what differs (``"reward"``, ``"terminated"``, ``"truncated"``, ...),
    ``replayed`` and ``recorded`` its two values.
    """

    def __init__(self, message: str, *, step: int, agent=None, field: str, replayed=None, recorded=None) -> None:
        super().__init__(message)
        self.step = step
        self.agent = agent
        self.field = field
        self.replayed = replayed
        self.recorded = recorded
