"""eval_recorder: videos of the evaluation episodes of RLlib policies, each labelled with
the training iteration whose weights it shows, kept safely on disk and published to wandb.

The public API is ``__all__`` below (everything else may move; ``tests/test_public_api.py``
pins it): ``add_recording(config, options)`` gives a copy of an RLlib AlgorithmConfig whose
evaluation episodes are recorded; ``with recording_session(config):`` holds its driver
session (folder claim, video store, wandb run); ``RecordEpisodes`` /
``RecordMultiAgentEpisodes`` / ``record_episodes`` are the recording wrappers;
``render_records(path)`` draws stored episodes (their replay records) into videos later;
``FrameSource`` / ``RenderFrames`` say where frames come from (plug-ins: the
``eval_recorder.frame_sources`` entry point group); the errors a user meets all derive
from ``RecordingError`` (``eval_recorder.errors``).
"""

import importlib

# Names are imported when first used (PEP 562): importing a module of the package (e.g.
# ``eval_recorder.app.config`` for ``run_eval.py --help``) does not import RLlib and torch,
# which take seconds.
_WHERE = {
    "add_recording": "eval_recorder.api",
    "recording_session": "eval_recorder.api",
    "FolderRefused": "eval_recorder.errors",
    "NoFrames": "eval_recorder.errors",
    "RecordingError": "eval_recorder.errors",
    "RecordingInTraining": "eval_recorder.errors",
    "FrameSource": "eval_recorder.frames",
    "RenderFrames": "eval_recorder.frames",
    "RecordedEpisode": "eval_recorder.recorder",
    "RecordingOptions": "eval_recorder.options",
    "RecordingSession": "eval_recorder.session",
    "ReplayDiverged": "eval_recorder.errors",
    "render_records": "eval_recorder.render_later",
    "RecordEpisodes": "eval_recorder.wrapper",
    "RecordMultiAgentEpisodes": "eval_recorder.wrapper",
    "record_episodes": "eval_recorder.wrapper",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'eval_recorder' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "FolderRefused",
    "FrameSource",
    "NoFrames",
    "RecordEpisodes",
    "RecordMultiAgentEpisodes",
    "RecordedEpisode",
    "RecordingError",
    "RecordingInTraining",
    "RecordingOptions",
    "RecordingSession",
    "RenderFrames",
    "ReplayDiverged",
    "add_recording",
    "record_episodes",
    "recording_session",
    "render_records",
]
