"""From the Hydra config to an RLlib ``PPOConfig`` (no recording yet: see api.add_recording).

Holds:
  UserError        a mistake in what the user asked for; the entry point prints its
                   one-sentence message and exits with code 2.
  check_config()   refuses configs that cannot work, before anything starts.
  env_config()     the RLlib env_config of an env preset.
  recording_options()  the driver's RecordingOptions from the config.
  ppo_config()     the PPO config: shared policy for all trains, training and
                   evaluation settings.
  evaluation_settings()   the arguments of AlgorithmConfig.evaluation() (training and standalone).
  evaluation_overrides()  the RLlib evaluation_config of ``cfg.evaluation``.
  start_ray()      a local Ray, or joins the cluster at ``ray.address``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from eval_recorder.callback import TRAINING_RENDER_REFUSED
from eval_recorder.api import RENDER_MODES
from eval_recorder.flatland.envs import ENV_CONFIG_KEYS, ENV_NAME

__all__ = [
    "POLICY_ID",
    "UserError",
    "check_config",
    "env_config",
    "evaluation_overrides",
    "evaluation_settings",
    "ppo_config",
    "recording_options",
    "start_ray",
]

POLICY_ID = "p0"  # one policy shared by all trains
# How long an evaluation round waits for a restarted eval runner when none is healthy
# (then the round is skipped, training goes on). Measured: a runner killed mid-episode is
# back in about 6 s on the small env.
EVAL_RUNNER_RECOVERY_SECONDS = 60.0


class UserError(Exception):
    """What the user asked for cannot work; the message says what to do instead."""


def check_config(cfg) -> None:
    """Raise UserError for a config that cannot work (nothing has started yet)."""
    if cfg.env.render is not None:
        raise UserError(TRAINING_RENDER_REFUSED)
    if cfg.evaluation.render is not None and cfg.evaluation.render not in RENDER_MODES:
        raise UserError(f"evaluation.render must be one of {list(RENDER_MODES)} or null, got {cfg.evaluation.render!r}.")
    positive = {
        "training.iterations": cfg.training.iterations,
        "training.train_batch_size": cfg.training.train_batch_size,
        "training.minibatch_size": cfg.training.minibatch_size,
        "training.num_epochs": cfg.training.num_epochs,
        "evaluation.interval": cfg.evaluation.interval,
        "evaluation.episodes": cfg.evaluation.episodes,
        "recording.fps": cfg.recording.fps,
        "recording.frame_every": cfg.recording.frame_every,
        "ray.num_cpus": cfg.ray.num_cpus,
        "env.n_agents": cfg.env.n_agents,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be at least 1, got {value}.")
    if cfg.training.num_env_runners < 0 or cfg.evaluation.num_env_runners < 0:
        raise UserError("training.num_env_runners and evaluation.num_env_runners cannot be negative.")
    if cfg.evaluation.parallel_to_training and cfg.evaluation.num_env_runners < 1:
        raise UserError(
            "evaluation.parallel_to_training=true needs evaluation.num_env_runners of at least 1 "
            "(evaluation then runs beside training)."
        )
    runners = cfg.training.num_env_runners + cfg.evaluation.num_env_runners
    if cfg.ray.address is None and runners > cfg.ray.num_cpus:
        raise UserError(
            f"{runners} env runners need {runners} CPUs but ray.num_cpus={cfg.ray.num_cpus}; "
            f"lower training.num_env_runners / evaluation.num_env_runners or raise ray.num_cpus."
        )


def recording_options(cfg, *, output_dir: Path, **overrides):
    """The driver's RecordingOptions from ``cfg.recording`` and ``cfg.wandb`` (wandb run and
    checkpoints under ``output_dir``); ``overrides`` replace fields."""
    from eval_recorder.session import RecordingOptions, new_run_id

    options = dict(
        video_dir=cfg.recording.video_dir,
        run_id=cfg.wandb.run_id or new_run_id(),
        resume=cfg.recording.resume,
        fps=cfg.recording.fps,
        max_side=cfg.recording.max_side,
        frame_every=cfg.recording.frame_every,
        overlay=cfg.recording.overlay,
        wandb_mode=str(getattr(cfg.wandb.mode, "value", cfg.wandb.mode)),
        wandb_project=cfg.wandb.project,
        wandb_entity=cfg.wandb.entity,
        wandb_dir=str(output_dir),
    )
    options.update(overrides)
    return RecordingOptions(**options)


def env_config(env_cfg, *, seed: int) -> dict[str, Any]:
    """RLlib env_config for ``eval_recorder.flatland.envs.make_env`` from an env preset."""
    config = {key: env_cfg[key] for key in ENV_CONFIG_KEYS if key != "seed"}
    config["seed"] = seed
    return config


def ppo_config(cfg) -> PPOConfig:
    """PPO on the Flatland env of ``cfg.env`` with evaluation as ``cfg.evaluation`` says."""
    training, evaluation = cfg.training, cfg.evaluation
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config(cfg.env, seed=training.seed))
        .multi_agent(policies={POLICY_ID}, policy_mapping_fn=_shared_policy)
        .rl_module(
            rl_module_spec=MultiRLModuleSpec(
                rl_module_specs={POLICY_ID: RLModuleSpec(model_config={"fcnet_hiddens": list(training.hidden)})}
            )
        )
        .env_runners(num_env_runners=training.num_env_runners, num_cpus_per_env_runner=1)
        .training(
            train_batch_size_per_learner=training.train_batch_size,
            minibatch_size=training.minibatch_size,
            num_epochs=training.num_epochs,
            lr=training.lr,
        )
        .evaluation(**evaluation_settings(cfg, interval=evaluation.interval, parallel=evaluation.parallel_to_training))
        .debugging(seed=training.seed)
    )


def evaluation_settings(cfg, *, interval: int, parallel: bool) -> dict[str, Any]:
    """Keyword arguments of ``AlgorithmConfig.evaluation()`` for ``cfg.evaluation``: evaluate
    every ``interval`` iterations (``parallel`` to training or after it) for
    ``evaluation.episodes`` episodes, and wait for a restarted eval runner."""
    return dict(
        evaluation_interval=interval,
        evaluation_duration=cfg.evaluation.episodes,
        evaluation_duration_unit="episodes",
        evaluation_num_env_runners=cfg.evaluation.num_env_runners,
        evaluation_parallel_to_training=parallel,
        evaluation_config=evaluation_overrides(cfg),
        # An eval runner that died is restarted by Ray (RLlib's default
        # restart_failed_env_runners=True), but without a wait RLlib skips every round
        # that starts before the new runner is up. Wait this long for it instead.
        evaluation_unhealthy_workers_timeout_s=EVAL_RUNNER_RECOVERY_SECONDS,
    )


def evaluation_overrides(cfg) -> dict[str, Any]:
    """RLlib evaluation_config from ``cfg.evaluation``: exploration, seed, runner resources."""
    overrides: dict[str, Any] = {"explore": cfg.evaluation.explore, "seed": cfg.evaluation.seed}
    if cfg.evaluation.runner_resources:
        overrides["custom_resources_per_env_runner"] = dict(cfg.evaluation.runner_resources)
    return overrides


def start_ray(cfg) -> str:
    """Start a local Ray, or join the cluster at ``ray.address``; says which."""
    import ray

    if cfg.ray.address is None:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, ignore_reinit_error=True)
        return f"started a local Ray ({cfg.ray.num_cpus} CPUs)"
    ray.init(address=cfg.ray.address, ignore_reinit_error=True)
    return f"joined the Ray cluster at {cfg.ray.address} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def _shared_policy(agent_id, *args, **kwargs) -> str:
    return POLICY_ID
