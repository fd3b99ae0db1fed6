"""Shared fixtures: one local Ray for the test session, configs composed as the CLI does."""

from __future__ import annotations

import os
import subprocess
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
    from eval_recorder.app.algorithms import algorithm_config
    from eval_recorder.app.envs import builtin_env_config
    from eval_recorder.flatland.envs import ENV_NAME, register_env

    register_env()
    return algorithm_config(cfg, env=ENV_NAME, env_config=builtin_env_config(cfg.env, seed=cfg.training.seed),
                            multi_agent=True)


def run_eval_command(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_eval.py"), *overrides]


@pytest.fixture(autouse=True)
def jobs_start_their_own_wandb_service():
    """Once wandb ran in this process (an in-process test), it leaves its service's address in
    WANDB_SERVICE for child processes to share. The jobs a test starts are a user's
    commands: each starts its own service, and a job killed with kill -9 takes its open
    wandb run with it (in a shared service the run stays open, and a resumed run of the
    same id finds it "in use")."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the whole session: 3 logical CPUs on the machine's 2 cores, so that
    an asynchronous algorithm (APPO: a training runner, an eval runner and its learner's
    helper actors) can start."""
    import ray

    # Workers import test-defined callbacks (e.g. a user's own callback) from tests/.
    runtime_env = {"env_vars": {"PYTHONPATH": str(ROOT / "tests")}}
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny training run for the whole session: checkpoints after iterations 1 and 2."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    proc = subprocess.run(
        run_eval_command(*TINY, "training.iterations=2", "training.checkpoint_every=1", "evaluation.render=null",
                         "wandb.mode=disabled", f"hydra.run.dir={run_dir}"),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
