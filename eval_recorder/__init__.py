"""eval_recorder: videos of the evaluation episodes of RLlib policies, each labelled with
the training iteration whose weights it shows, kept safely on disk and published to wandb.

The public API (everything else may move; ``tests/test_public_api.py`` pins this list):

  add_recording(config, options)   a copy of an RLlib AlgorithmConfig whose evaluation
                                   episodes are recorded (any env, any new-API-stack
                                   algorithm)
  recording_session(config)        the driver session of such a config (``close()`` it)
  RecordingOptions                 where and how videos are stored and published
  RecordingSession                 the driver's folder claim + video store + wandb run
  RecordEpisodes                   the recording wrapper for a gymnasium env
  RecordMultiAgentEpisodes         the recording wrapper for an RLlib MultiAgentEnv
  record_episodes(env, ...)        wraps an env in the one of the two that fits it
  RecordedEpisode                  one finished episode: mp4 bytes and its facts
  FrameSource, RenderFrames        where frames come from (plug-ins: the
                                   ``eval_recorder.frame_sources`` entry point group)
  FolderRefused                    the error of a video folder that may not be used
"""

import importlib

# Names are imported when first used (PEP 562): importing a module of the package (e.g.
# ``eval_recorder.app.config`` for ``run_eval.py --help``) does not import RLlib and torch (~3 s).
_WHERE = {
    "add_recording": "eval_recorder.api",
    "recording_session": "eval_recorder.api",
    "FolderRefused": "eval_recorder.folder_guard",
    "FrameSource": "eval_recorder.frames",
    "RenderFrames": "eval_recorder.frames",
    "RecordedEpisode": "eval_recorder.recorder",
    "RecordingOptions": "eval_recorder.session",
    "RecordingSession": "eval_recorder.session",
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
    "RecordEpisodes",
    "RecordMultiAgentEpisodes",
    "RecordedEpisode",
    "RecordingOptions",
    "RecordingSession",
    "RenderFrames",
    "add_recording",
    "record_episodes",
    "recording_session",
]
