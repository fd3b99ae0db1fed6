"""From the Hydra config to an RLlib ``AlgorithmConfig`` (no recording yet: see api.add_recording).

Checks a config before anything starts, builds the algorithm's config for an env (one
policy shared by all agents of a multi-agent env) with its training and evaluation
settings, gives the driver's RecordingOptions, and starts or joins Ray.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from eval_recorder.api import RENDER_MODES
from eval_recorder.app.envs import hook_path
from eval_recorder.errors import TRAINING_RENDER_REFUSED, UserError
from eval_recorder.trackers import TRACKERS

# Every Ray worker that unpickles a config made here (its policy mapping, shared_policy)
# imports this module, and with it flatland, whose persistence module patches msgpack with
# msgpack_numpy on import, as it is patched in the driver. Ray serializes with msgpack: an
# object the patched driver puts (e.g. the learner's optimizer state, when a checkpoint is
# saved) keeps its arrays encoded in a worker that is not patched, and the checkpoint then
# cannot be restored. So workers must import flatland as the driver does.
import eval_recorder.flatland.envs  # noqa: F401

__all__ = [
    "ALGORITHMS",
    "POLICY_ID",
    "algorithm_config",
    "build_algorithm",
    "check_config",
    "evaluation_overrides",
    "evaluation_settings",
    "recording_options",
    "start_ray",
]

ALGORITHMS = ("PPO", "APPO", "IMPALA", "DQN")
POLICY_ID = "p0"  # one policy shared by all agents of a multi-agent env
# How long an evaluation round waits for a restarted eval runner when none is healthy
# (then the round is skipped, training goes on): ample time for Ray to restart a runner
# killed mid-episode.
EVAL_RUNNER_RECOVERY_SECONDS = 60.0
_FPS_RANGE = (1, 60)
RAY_CLIENT_PREFIX = "ray://"  # Ray Client addresses need ray[client], which is not installed
_MIN_SIDE = 16  # smallest longest frame side the encoder takes comfortably (libx264 needs some macroblocks)


def check_config(cfg) -> None:
    """Raise UserError for a config that cannot work (nothing has started yet)."""
    if cfg.env.render is not None:
        raise UserError(TRAINING_RENDER_REFUSED)
    if cfg.evaluation.render is not None and cfg.evaluation.render not in RENDER_MODES:
        raise UserError(f"evaluation.render must be one of {list(RENDER_MODES)} or null, got {cfg.evaluation.render!r}.")
    for tracker in cfg.trackers:
        if tracker not in TRACKERS:
            raise UserError(f"trackers must be chosen from {', '.join(TRACKERS)}, got {tracker!r}; "
                            f"e.g. trackers=[wandb,tensorboard].")
    if "mlflow" in cfg.trackers and importlib.util.find_spec("mlflow") is None:
        raise UserError("trackers has mlflow, but mlflow is not installed; install it with "
                        "pip install -e '.[mlflow]' or drop mlflow from trackers.")
    if cfg.algorithm.name not in ALGORITHMS:
        raise UserError(f"algorithm.name must be one of {', '.join(ALGORITHMS)}, got {cfg.algorithm.name!r}.")
    positive = {
        "training.iterations": cfg.training.iterations,
        "algorithm.train_batch_size": cfg.algorithm.train_batch_size,
        "algorithm.minibatch_size": cfg.algorithm.minibatch_size,
        "algorithm.num_epochs": cfg.algorithm.num_epochs,
        "algorithm.replay_capacity": cfg.algorithm.replay_capacity,
        "evaluation.interval": cfg.evaluation.interval,
        "evaluation.episodes": cfg.evaluation.episodes,
        "recording.frame_every": cfg.recording.frame_every,
        "ray.num_cpus": cfg.ray.num_cpus,
        "env.n_agents": cfg.env.n_agents,
        "env.x_dim": cfg.env.x_dim,
        "env.y_dim": cfg.env.y_dim,
    }
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"{key} must be at least 1, got {value}.")
    if not cfg.env.build_timeout > 0:
        raise UserError(f"env.build_timeout must be more than 0 seconds, got {cfg.env.build_timeout}.")
    low, high = _FPS_RANGE
    if not low <= cfg.recording.fps <= high:
        raise UserError(f"recording.fps must be between {low} and {high} (what video players handle), "
                        f"got {cfg.recording.fps}.")
    if cfg.recording.max_side != 0 and cfg.recording.max_side < _MIN_SIDE:
        raise UserError(f"recording.max_side must be 0 (no cap) or at least {_MIN_SIDE} pixels, "
                        f"got {cfg.recording.max_side}.")
    if cfg.env.factory and cfg.env.id:
        raise UserError("env.factory and env.id both name your env; give only one of them.")
    if cfg.training.num_env_runners < 0 or cfg.evaluation.num_env_runners < 0:
        raise UserError("training.num_env_runners and evaluation.num_env_runners cannot be negative.")
    if cfg.evaluation.parallel_to_training and cfg.evaluation.num_env_runners < 1:
        raise UserError(
            "evaluation.parallel_to_training=true needs evaluation.num_env_runners of at least 1 "
            "(evaluation then runs beside training)."
        )
    if cfg.algorithm.name in ("APPO", "IMPALA") and cfg.training.num_env_runners < 1 and cfg.checkpoint is None:
        raise UserError(f"{cfg.algorithm.name} samples on remote env runners: set training.num_env_runners to at least 1.")
    if str(cfg.ray.address or "").startswith(RAY_CLIENT_PREFIX):
        raise UserError(
            f"ray.address={cfg.ray.address} is a Ray Client address, which needs ray[client] (not installed); "
            f"give the head's address as printed by `ray start --head` (ray.address=HOST:6379), or ray.address=auto "
            f"on a cluster node."
        )
    runners = cfg.training.num_env_runners + cfg.evaluation.num_env_runners
    if cfg.ray.address is None and runners > cfg.ray.num_cpus:
        raise UserError(
            f"{runners} env runners need {runners} CPUs but ray.num_cpus={cfg.ray.num_cpus}; "
            f"lower training.num_env_runners / evaluation.num_env_runners or raise ray.num_cpus."
        )


def recording_options(cfg, *, output_dir: Path, **overrides):
    """The driver's RecordingOptions from ``cfg.recording``, ``cfg.wandb`` and ``cfg.env``
    (wandb run and checkpoints under ``output_dir``); ``overrides`` replace fields."""
    from eval_recorder.options import RecordingOptions, new_run_id

    options = dict(
        video_dir=cfg.recording.video_dir,
        run_id=cfg.wandb.run_id or new_run_id(),
        resume=cfg.recording.resume,
        fps=cfg.recording.fps,
        max_side=cfg.recording.max_side,
        frame_every=cfg.recording.frame_every,
        overlay=cfg.recording.overlay,
        select=cfg.recording.select,
        wandb_mode=str(getattr(cfg.wandb.mode, "value", cfg.wandb.mode)),
        wandb_project=cfg.wandb.project,
        wandb_entity=cfg.wandb.entity,
        wandb_dir=str(output_dir),
        scenarios=cfg.env.scenarios,
        eval_seed=cfg.evaluation.seed,
        trackers=tuple(cfg.trackers),
        mlflow_tracking_uri=cfg.mlflow.tracking_uri,
        mlflow_experiment=cfg.mlflow.experiment,
        wandb_console=True,  # the console sends wandb's lines to run_eval.log (verbose=true: the terminal)
    )
    options.update(overrides)
    return RecordingOptions(**options)


def build_algorithm(config):
    """``config.build_algo()``, leaving nothing in ``~/ray_results``.

    An Algorithm built outside Tune makes itself an empty log folder in Ray's default
    storage path (``~/ray_results/<date>_<time>...``), which no part of RLlib's new API
    stack writes into; every run would leave one there. Ray reads that path once, into a
    module constant of its Trainable, and offers no setting for it: while the Algorithm is
    built the constant points at a temporary folder, removed again with the empty log folder.
    """
    import shutil
    import tempfile

    from ray.tune.trainable import trainable

    scratch = tempfile.mkdtemp(prefix="eval_recorder-ray-logdir-")
    default = trainable.DEFAULT_STORAGE_PATH
    trainable.DEFAULT_STORAGE_PATH = scratch
    try:
        return config.build_algo()
    finally:
        trainable.DEFAULT_STORAGE_PATH = default
        shutil.rmtree(scratch, ignore_errors=True)


def algorithm_config(cfg, *, env, env_config: dict, multi_agent: bool):
    """The RLlib config of ``cfg.algorithm`` on ``env``: for a multi-agent env one policy
    shared by all agents (parameter sharing), evaluation as ``cfg.evaluation`` says."""
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import get_trainable_cls

    algorithm, training = cfg.algorithm, cfg.training
    model = {"fcnet_hiddens": list(algorithm.hidden)}
    config = (
        get_trainable_cls(algorithm.name).get_default_config()
        .environment(env, env_config=env_config)
        .env_runners(num_env_runners=training.num_env_runners, num_cpus_per_env_runner=1)
        .training(train_batch_size_per_learner=algorithm.train_batch_size, lr=algorithm.lr)
        .evaluation(**evaluation_settings(cfg, interval=cfg.evaluation.interval,
                                          parallel=cfg.evaluation.parallel_to_training))
        .debugging(seed=training.seed)
    )
    if multi_agent:
        config = config.multi_agent(policies={POLICY_ID}, policy_mapping_fn=shared_policy).rl_module(
            rl_module_spec=MultiRLModuleSpec(rl_module_specs={POLICY_ID: RLModuleSpec(model_config=model)})
        )
    else:
        config = config.rl_module(model_config=model)
    if algorithm.name == "PPO":
        config = config.training(minibatch_size=algorithm.minibatch_size, num_epochs=algorithm.num_epochs)
    elif algorithm.name == "DQN":
        buffer = "MultiAgentEpisodeReplayBuffer" if multi_agent else "EpisodeReplayBuffer"
        config = config.training(
            train_batch_size_per_learner=32,
            replay_buffer_config={"type": buffer, "capacity": algorithm.replay_capacity},
            num_steps_sampled_before_learning_starts=algorithm.learning_starts,
        ).reporting(min_sample_timesteps_per_iteration=algorithm.train_batch_size)
    return config


def shared_policy(agent_id, *args, **kwargs) -> str:
    """Every agent plays the one shared policy."""
    return POLICY_ID


def evaluation_settings(cfg, *, interval: int, parallel: bool, episodes: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``AlgorithmConfig.evaluation()`` for ``cfg.evaluation``: evaluate
    every ``interval`` iterations (``parallel`` to training or after it) for
    ``evaluation.episodes`` episodes, and wait for a restarted eval runner."""
    return dict(
        evaluation_interval=interval,
        evaluation_duration=episodes or cfg.evaluation.episodes,
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
    """Start a local Ray, or join the cluster at ``ray.address``; says which. ``env.setup``
    runs on every Ray worker before it does anything else."""
    import ray

    runtime_env = {"worker_process_setup_hook": hook_path(cfg.env.setup)} if cfg.env.setup else None
    if cfg.ray.address is None:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, ignore_reinit_error=True,
                 runtime_env=runtime_env)
        return f"started a local Ray ({cfg.ray.num_cpus} CPUs)"
    ray.init(address=cfg.ray.address, ignore_reinit_error=True, runtime_env=runtime_env)
    return f"joined the Ray cluster at {cfg.ray.address} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
