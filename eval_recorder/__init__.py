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

from eval_recorder.api import add_recording, recording_session
from eval_recorder.folder_guard import FolderRefused
from eval_recorder.frames import FrameSource, RenderFrames
from eval_recorder.recorder import RecordedEpisode
from eval_recorder.session import RecordingOptions, RecordingSession
from eval_recorder.wrapper import RecordEpisodes, RecordMultiAgentEpisodes, record_episodes

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
