"""The built-in Flatland env of ``run_eval.py`` (the embedded default, not the limit).

``make_env`` builds a generated ``RailEnv`` with the tree observation, wrapped for RLlib by
flatland-rl's own ``RayMultiAgentWrapper``; ``register_env()`` makes it known to RLlib as
ENV_NAME. Recording is not this module's business: the recording wrapper
(eval_recorder.wrapper) goes around it on evaluation runners, as around any env.
"""

from __future__ import annotations

from typing import Any

from flatland.env_generation.env_generator import env_generator
from flatland.envs.predictions import ShortestPathPredictorForRailEnv
from flatland.ml.observations.flatten_tree_observation_for_rail_env import FlattenedNormalizedTreeObsForRailEnv
from flatland.ml.ray.ray_multi_agent_rail_env import RayMultiAgentWrapper

from eval_recorder.errors import RecordingInTraining

__all__ = ["ENV_CONFIG_KEYS", "ENV_NAME", "make_env", "register_env"]

ENV_NAME = "eval_recorder_flatland"

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
    """Build the env described by ``env_config`` (an RLlib ``EnvContext`` or a dict):
    flatland-rl's ``RayMultiAgentWrapper`` around a generated ``RailEnv``."""
    if env_config.get("render") is not None:
        raise RecordingInTraining()
    generator_args = {key: env_config[key] for key in _GENERATOR_KEYS if key in env_config}
    obs_builder = FlattenedNormalizedTreeObsForRailEnv(
        max_depth=env_config.get("tree_depth", 2),
        predictor=ShortestPathPredictorForRailEnv(max_depth=env_config.get("predictor_depth", 10)),
    )
    rail_env, _, _ = env_generator(obs_builder_object=obs_builder, **generator_args)
    return RayMultiAgentWrapper(rail_env)
