"""Shared fixtures: one local Ray for the test session, configs composed as the CLI does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tiny but real: PPO on the small Flatland env, few steps per iteration.
TINY = (
    "algorithm.train_batch_size=200",
    "algorithm.minibatch_size=64",
    "algorithm.num_epochs=1",
    "algorithm.hidden=[16]",
    "evaluation.episodes=2",
)


def compose_config(*overrides: str):
    """The run_eval.py config with ``overrides``, composed by Hydra exactly as the CLI does."""
    from hydra import compose, initialize_config_dir

    from eval_recorder.app.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def flatland_config(cfg):
    """The RLlib config the main job builds for ``cfg`` on the built-in Flatland env."""
    from eval_recorder.app.algorithms import algorithm_config, builtin_env_config
    from eval_recorder.flatland.envs import ENV_NAME, register_env

    register_env()
    return algorithm_config(cfg, env=ENV_NAME, env_config=builtin_env_config(cfg.env, seed=cfg.training.seed),
                            multi_agent=True)


def run_eval_command(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_eval.py"), *overrides]


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs for the whole session (the machine has 2 cores)."""
    import ray

    # Workers import test-defined callbacks (e.g. a user's own callback) from tests/.
    runtime_env = {"env_vars": {"PYTHONPATH": str(ROOT / "tests")}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    yield
    ray.shutdown()
