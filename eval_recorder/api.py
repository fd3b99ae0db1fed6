"""Library use: add eval-only recording to your own RLlib ``AlgorithmConfig``.

``add_recording()`` returns a copy of your config in which only evaluation env runners
record (your env inside the recording wrapper, ``render: human`` in the evaluation env
config), with the recording callback beside your own callbacks; ``recording_session()``
gives the driver-side session of such a config, which you hold with ``with``.
"""

from __future__ import annotations

import uuid

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.utils import force_list

from eval_recorder.callback import bound_session, callback_class, is_recording_callback
from eval_recorder.errors import RecordingInTraining
from eval_recorder.eval_env import RECORDING_KEY, RENDER_KEY, RecordingEnvCreator
from eval_recorder.frames import most_agents, scenario_kinds
from eval_recorder.options import RecordingOptions
from eval_recorder.session import RecordingSession

__all__ = ["RENDER_MODES", "add_recording", "recording_session"]

RENDER_MODES = ("human",)
_REGISTERED_PREFIX = "eval_recorder_recording_"


def add_recording(
    config: AlgorithmConfig, options: RecordingOptions | RecordingSession, *, render: str = "human"
) -> AlgorithmConfig:
    """A copy of ``config`` whose evaluation episodes are recorded, tagged, stored and published.

    ``config`` may use any env RLlib takes (a registered name, a gymnasium id, an env
    class) and any new-API-stack algorithm; it must evaluate (``evaluation_interval``
    set) and must not ask its training env runners to render. Only the evaluation env
    runners get the recording wrapper around your env: Flatland envs are drawn by the
    fast renderer, any other env by its own ``render()`` (``rgb_array``; gymnasium ids
    are made with ``render_mode="rgb_array"``; your own env creator or class must render
    ``rgb_array`` frames itself). Evaluation episodes get a fixed seed
    (``options.eval_seed``) unless your evaluation config sets one; with
    ``options.scenarios`` each round plays each saved scenario once.

    Nothing is written until the Algorithm is built: then the eval runners show they can
    record, the driver claims ``options.video_dir`` and starts the wandb run (pass an
    already opened RecordingSession to claim the folder earlier). Callbacks already in
    ``config`` stay and fire as before. With ``options.video_dir=None`` (Ray Tune), every
    trial's driver opens its own session: videos in ``videos/`` inside its trial folder,
    its trial id as run id, its own wandb run named after the trial.

    Example::

        config = add_recording(my_config, RecordingOptions(video_dir="videos"))
        with recording_session(config):
            algo = config.build_algo()
            algo.train()
            algo.stop()
    """
    if config.env is None:
        raise ValueError("recording needs an env: set config.environment(...) first")
    if (config.env_config or {}).get(RENDER_KEY) is not None:
        raise RecordingInTraining()
    if not config.evaluation_interval:
        raise ValueError("recording records evaluation episodes; set evaluation(evaluation_interval=N) first")
    if render not in RENDER_MODES:
        raise ValueError(f"render must be one of {RENDER_MODES}, got {render!r}")
    from ray.tune.registry import register_env

    session = options if isinstance(options, RecordingSession) else RecordingSession(options)
    options = session.options
    recorded = config.copy(copy_frozen=False)
    evaluation_overrides = dict(config.evaluation_config or {})
    user_env = evaluation_overrides.get("env") or config.env
    if isinstance(user_env, str) and user_env.startswith(_REGISTERED_PREFIX):
        user_env = config.env  # a config recorded before (e.g. restored from a checkpoint)
    # The eval runners' env: the user's, made by RLlib's rules, inside the recording wrapper.
    env_name = f"{_REGISTERED_PREFIX}{uuid.uuid4().hex[:12]}"
    register_env(env_name, RecordingEnvCreator(user_env))
    evaluation_overrides["env"] = env_name
    user_env_config = {
        key: value
        for key, value in {**dict(config.env_config or {}), **dict(evaluation_overrides.get("env_config") or {})}.items()
        if key not in (RENDER_KEY, RECORDING_KEY)
    }
    settings = {
        "fps": options.fps,
        "max_side": options.max_side,
        "frame_every": options.frame_every,
        "overlay": options.overlay,
    }
    scenarios = session.scenarios() if options.scenarios else []
    if options.scenarios and not scenarios:
        raise ValueError(f"{options.scenarios} holds no {scenario_kinds()}; point scenarios at a folder of them")
    if scenarios:
        # RLlib fixes an eval runner's agent ids (its action spaces) when it makes the env:
        # each env starts in the scenario with the most trains, so every scenario's agents fit.
        settings["spaces_scenario"] = most_agents(scenarios)
    evaluation_overrides["env_config"] = {**user_env_config, RENDER_KEY: render, RECORDING_KEY: settings}
    # RLlib's env checker resets and steps each new env once; on a recording env that
    # renders frames nobody keeps. Training runners check the very same env anyway.
    evaluation_overrides["disable_env_checking"] = True
    if evaluation_overrides.get("seed") is None and options.eval_seed is not None:
        evaluation_overrides["seed"] = options.eval_seed
    recorded.evaluation(evaluation_config=evaluation_overrides)
    if scenarios:
        recorded.evaluation(evaluation_duration=len(scenarios), evaluation_duration_unit="episodes")
    if options.video_dir is None:  # e.g. Tune trials: each opens its own session
        recording = callback_class(options=options)
    else:
        recording = callback_class(session=session)
    # Keep the user's callbacks; drop RLlib's no-op default and any recording callback a
    # config brings along (e.g. one restored from a checkpoint, bound to a gone session).
    users = [cls for cls in force_list(config.callbacks_class)
             if cls is not RLlibCallback and not is_recording_callback(cls)]
    recorded.callbacks(callbacks_class=users + [recording])
    return recorded


def recording_session(config: AlgorithmConfig) -> RecordingSession:
    """The driver session that ``add_recording`` attached to ``config``: hold it with
    ``with recording_session(config):`` around building and training the Algorithm (it
    opens when the Algorithm starts; leaving the block finishes the wandb run and
    releases the folder), or ``close()`` it yourself."""
    for cls in force_list(config.callbacks_class):
        session = bound_session(cls)
        if session is not None:
            return session
    if any(is_recording_callback(cls) for cls in force_list(config.callbacks_class)):
        raise ValueError("this config records without a video_dir: each Algorithm (Tune trial) holds its own session")
    raise ValueError("this config has no recording; make it with add_recording()")
