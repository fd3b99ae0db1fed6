"""The Flatland env as RLlib sees it, with recording for evaluation runners.

Holds:
  ENV_NAME             the name under which the env is registered with Ray Tune/RLlib.
  register_env()       registers ``make_env`` under ENV_NAME (idempotent).
  make_env(config)     builds a ``RailEnv`` wrapped as an RLlib ``MultiAgentEnv``; with
                       ``render: human`` in the config, a ``RecordingRailEnv``.
  RecordingRailEnv     records every episode it runs (frames off-screen, streamed to
                       an encoder) and keeps the finished videos until the driver
                       collects them.
  collect_recorded()   run on an env runner (via Ray): hands over its finished videos.
  set_label_iteration() run on an eval runner (via Ray) before a round: the iteration
                       its burned-in labels show.
  RENDER_MODES         the ``render`` values understood.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flatland.env_generation.env_generator import env_generator
from flatland.envs.predictions import ShortestPathPredictorForRailEnv
from flatland.envs.step_utils.states import TrainState
from flatland.ml.observations.flatten_tree_observation_for_rail_env import FlattenedNormalizedTreeObsForRailEnv
from flatland.ml.ray.ray_multi_agent_rail_env import RayMultiAgentWrapper

from eval_recorder.overlay import label_text
from eval_recorder.recorder import EpisodeRecorder, RecordedEpisode
from eval_recorder.flatland.rendering import DEFAULT_MAX_SIDE

__all__ = ["ENV_CONFIG_KEYS", "ENV_NAME", "RENDER_MODES", "RecordingRailEnv", "collect_recorded", "make_env", "register_env"]

ENV_NAME = "eval_recorder_flatland"
RENDER_MODES = ("human",)

# env_config keys that shape the rail world (passed to flatland's env_generator) ...
_GENERATOR_KEYS = (
    "n_agents",
    "x_dim",
    "y_dim",
    "n_cities",
    "max_rail_pairs_in_city",
    "max_rails_between_cities",
    "malfunction_interval",
    "seed",
)
# ... and all keys of the world and its observations (render, fps, ... are recording's).
ENV_CONFIG_KEYS = (*_GENERATOR_KEYS, "tree_depth", "predictor_depth")


def register_env() -> None:
    """Make ENV_NAME known to RLlib in this process (env runners look it up by name)."""
    from ray.tune.registry import register_env as ray_register_env

    ray_register_env(ENV_NAME, make_env)


def make_env(env_config: dict[str, Any]) -> RayMultiAgentWrapper:
    """Build the env described by ``env_config`` (an RLlib ``EnvContext`` or a dict)."""
    generator_args = {key: env_config[key] for key in _GENERATOR_KEYS if key in env_config}
    obs_builder = FlattenedNormalizedTreeObsForRailEnv(
        max_depth=env_config.get("tree_depth", 2),
        predictor=ShortestPathPredictorForRailEnv(max_depth=env_config.get("predictor_depth", 10)),
    )
    rail_env, _, _ = env_generator(obs_builder_object=obs_builder, **generator_args)
    render = env_config.get("render")
    if render is None:
        return RayMultiAgentWrapper(rail_env)
    if render not in RENDER_MODES:
        raise ValueError(f"render must be one of {RENDER_MODES} or null, got {render!r}")
    return RecordingRailEnv(
        rail_env,
        fps=env_config.get("fps", 10),
        max_side=env_config.get("max_side", DEFAULT_MAX_SIDE),
        runner_index=getattr(env_config, "worker_index", 0),
        seed=env_config.get("seed"),
        overlay=env_config.get("overlay", True),
        frame_every=env_config.get("frame_every", 1),
    )


class RecordingRailEnv(RayMultiAgentWrapper):
    """A Flatland ``MultiAgentEnv`` that records each of its episodes to an mp4.

    Every reset starts a recording with the reset frame; every step adds a frame.
    ``finish_recording()`` (called by the recording callback when RLlib reports the
    episode ended) closes the video and keeps it until ``pop_recorded()``. Each episode
    gets a concrete seed, kept with its video, so it can be replayed.
    """

    def __init__(
        self,
        rail_env,
        *,
        fps: int,
        max_side: int,
        runner_index: int,
        seed: int | None,
        overlay: bool = True,
        frame_every: int = 1,
    ) -> None:
        super().__init__(rail_env)  # no render_mode: flatland would open a window
        self._recorder = EpisodeRecorder(
            rail_env, fps=fps, max_side=max_side, runner_index=runner_index, frame_every=frame_every,
            label=self._label if overlay else None,
        )
        self._seeds = np.random.default_rng(seed)
        self._steps = 0
        self._finished: list[RecordedEpisode] = []
        # Training iteration of the weights this runner evaluates with (set by the driver
        # before each evaluation round); shown in the burned-in label.
        self.label_iteration: int | None = None

    def _label(self) -> str:
        rail_env = self.wrap()
        return label_text(
            training_iteration=self.label_iteration,
            step=self._steps,
            extra=f"arrived {_arrived(rail_env)}/{rail_env.get_num_agents()}",
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seeds = np.random.default_rng(seed)
        else:
            seed = int(self._seeds.integers(2**31 - 1))
        result = super().reset(seed=seed, options=options)
        self._steps = 0
        self._recorder.start(env_seed=seed)
        return result

    def step(self, action_dict):
        result = super().step(action_dict)
        self._steps += 1
        self._recorder.capture()
        return result

    def finish_recording(self, *, weights_seq_no: int, episode_return: float) -> None:
        """Close the current episode's video; keep it for the driver to collect."""
        if not self._recorder.recording:
            return
        rail_env = self.wrap()
        self._finished.append(
            self._recorder.finish(
                weights_seq_no=weights_seq_no,
                episode_length=self._steps,
                num_agents=rail_env.get_num_agents(),
                agents_arrived=_arrived(rail_env),
                episode_return=episode_return,
            )
        )

    def pop_recorded(self) -> list[RecordedEpisode]:
        """Hand over (and forget) the videos finished so far."""
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        self._recorder.discard()
        super().close()


def _arrived(rail_env) -> int:
    return sum(agent.state == TrainState.DONE for agent in rail_env.agents)


def set_label_iteration(env_runner, history) -> None:
    """Runs on an eval runner before a round: label its videos with the training iteration
    of the weights version it holds (``history`` is the driver's WeightsHistory)."""
    version = getattr(env_runner, "_weights_seq_no", None)  # RLlib stamps this on every action
    if version is None:
        return
    try:
        iteration = history.tag_for(version, env_steps_now=0).training_iteration
    except ValueError:
        iteration = None
    for env in recording_envs(env_runner):
        env.label_iteration = iteration


def recording_envs(env_runner) -> list[RecordingRailEnv]:
    """The recording envs of an env runner (none on training runners)."""
    vector_env = getattr(env_runner, "env", None)
    if vector_env is None:
        return []
    envs = getattr(vector_env.unwrapped, "envs", [])
    return [env.unwrapped for env in envs if isinstance(env.unwrapped, RecordingRailEnv)]


def collect_recorded(env_runner) -> list[RecordedEpisode]:
    """Runs on an env runner (local or remote): its finished videos, in the order recorded."""
    return [video for env in recording_envs(env_runner) for video in env.pop_recorded()]
