"""Library use: add eval-only recording to your own RLlib ``AlgorithmConfig``.

Holds:
  add_recording()      returns a copy of your config in which only evaluation env
                       runners record (``render: human`` in the evaluation env config),
                       with the recording callback added beside your own callbacks.
  recording_session()  the driver-side session of such a config (folder, videos, wandb
                       run), e.g. to ``close()`` it when you are done.
"""

from __future__ import annotations

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.utils import force_list

from eval_recorder.callback import TRAINING_RENDER_REFUSED, bound_session_token, callback_class, is_recording_callback
from eval_recorder.flatland.envs import ENV_NAME, RENDER_MODES, register_env
from eval_recorder.session import RecordingOptions, RecordingSession, get_session, register_session

__all__ = ["add_recording", "recording_session"]


def add_recording(
    config: AlgorithmConfig, options: RecordingOptions | RecordingSession, *, render: str = "human"
) -> AlgorithmConfig:
    """A copy of ``config`` whose evaluation episodes are recorded, tagged, stored and published.

    ``config`` must use the env ``eval_recorder.flatland.envs.ENV_NAME`` (its ``env_config`` as
    for ``eval_recorder.flatland.envs.make_env``), evaluate (``evaluation_interval`` set) and must
    not ask its training env runners to render. Nothing is written until the Algorithm
    is built: then the driver claims ``options.video_dir`` and starts the wandb run
    (pass an already opened RecordingSession to claim the folder earlier).
    Callbacks already in ``config`` stay and fire as before. With
    ``options.video_dir=None`` (Ray Tune), every trial's driver opens its own session:
    videos in ``videos/`` inside its trial folder, its trial id as run id, its own wandb
    run named after the trial.

    Example::

        config = add_recording(my_ppo_config, RecordingOptions(video_dir="videos"))
        algo = config.build_algo()
        algo.train()
        recording_session(config).close()
    """
    if config.env != ENV_NAME:
        raise ValueError(f"recording needs the env {ENV_NAME!r} (eval_recorder.flatland.envs.make_env), got {config.env!r}")
    if (config.env_config or {}).get("render") is not None:
        raise ValueError(TRAINING_RENDER_REFUSED)
    if not config.evaluation_interval:
        raise ValueError("recording records evaluation episodes; set evaluation(evaluation_interval=N) first")
    if render not in RENDER_MODES:
        raise ValueError(f"render must be one of {RENDER_MODES}, got {render!r}")
    register_env()
    session = options if isinstance(options, RecordingSession) else RecordingSession(options)
    recorded = config.copy(copy_frozen=False)
    evaluation_overrides = dict(config.evaluation_config or {})
    evaluation_overrides["env_config"] = {
        **dict(config.env_config or {}),
        **dict(evaluation_overrides.get("env_config") or {}),
        "render": render,
        "fps": session.options.fps,
        "max_side": session.options.max_side,
        "frame_every": session.options.frame_every,
        "overlay": session.options.overlay,
    }
    # RLlib's env checker resets and steps each new env once; on a recording env that
    # renders frames nobody keeps. Training runners check the very same env anyway.
    evaluation_overrides["disable_env_checking"] = True
    recorded.evaluation(evaluation_config=evaluation_overrides)
    if session.options.video_dir is None:  # e.g. Tune trials: each opens its own session
        recording = callback_class(options=session.options)
    else:
        recording = callback_class(session_token=register_session(session))
    # Keep the user's callbacks; drop RLlib's no-op default and any recording callback a
    # config brings along (e.g. one restored from a checkpoint, bound to a gone session).
    users = [cls for cls in force_list(config.callbacks_class)
             if cls is not RLlibCallback and not is_recording_callback(cls)]
    recorded.callbacks(callbacks_class=users + [recording])
    return recorded


def recording_session(config: AlgorithmConfig) -> RecordingSession:
    """The driver session that ``add_recording`` attached to ``config``."""
    for cls in force_list(config.callbacks_class):
        token = bound_session_token(cls)
        if token is not None:
            return get_session(token)
    if any(is_recording_callback(cls) for cls in force_list(config.callbacks_class)):
        raise ValueError("this config records without a video_dir: each Algorithm (Tune trial) holds its own session")
    raise ValueError("this config has no recording; make it with add_recording()")
