"""Users' own envs, as a user's package would hold them (importable on every Ray worker:
the tests put tests/ on PYTHONPATH). Used through env.setup / env.factory and add_recording."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

FLATLAND_ENV = "user_flatland"


def flatland_env(env_config=None, *, seed: int = 0):
    """The flatland-rl example's way (flatland.ml.ray.examples.flatland_training_with_parameter_sharing):
    ``ray_env_generator`` with an observation builder from flatland's registry (the global
    observation), not eval_recorder's tree observation."""
    from flatland.ml.ray.examples.flatland_observation_builders_registry import (
        register_flatland_ray_cli_observation_builders,
    )
    from flatland.ml.ray.wrappers import ray_env_generator
    from ray.tune.registry import registry_get_input

    register_flatland_ray_cli_observation_builders()
    config = dict(env_config or {})
    return ray_env_generator(
        n_agents=config.get("n_agents", 2), x_dim=config.get("x_dim", 30), y_dim=config.get("y_dim", 30),
        n_cities=2, max_rail_pairs_in_city=2, max_rails_between_cities=2, seed=config.get("seed", seed),
        obs_builder_object=registry_get_input("GlobalObsForRailEnvGym")(),
    )


def register() -> None:
    """env.setup=support.user_envs:register — registers the user's Flatland env by name."""
    from ray.tune.registry import register_env

    register_env(FLATLAND_ENV, lambda config: flatland_env(config))


def make_blocks(env_config=None):
    """env.factory=support.user_envs:make_blocks — a tiny gymnasium env rendering rgb_array."""
    config = dict(env_config or {})
    return Blocks(size=int(config.get("size", 64)))


def make_blind(env_config=None):
    """An env that renders nothing (render_mode None)."""
    return Blocks(render_mode=None)


class Blocks(gym.Env):
    """A block walks right or left on a line of 8 cells; reward 1 at the right end."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode="rgb_array", size=64):
        self.render_mode = render_mode
        self.size = size
        self.observation_space = gym.spaces.Box(0.0, 1.0, (8,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.position, self.steps = 0, 0

    def _observation(self):
        observation = np.zeros(8, np.float32)
        observation[self.position] = 1.0
        return observation

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.steps = int(self.np_random.integers(0, 4)), 0
        return self._observation(), {}

    def step(self, action):
        self.position = min(7, max(0, self.position + (1 if action == 1 else -1)))
        self.steps += 1
        reward = 1.0 if self.position == 7 else 0.0
        return self._observation(), reward, self.position == 7, self.steps >= 20, {}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = np.full((self.size, self.size, 3), 230, np.uint8)
        cell = self.size // 8
        frame[:, self.position * cell:(self.position + 1) * cell] = (200, 30, 30)
        return frame
