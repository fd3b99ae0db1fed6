"""Standalone evaluation of saved checkpoints (``python run_eval.py checkpoint=PATH``).

Holds:
  CheckpointInfo        what a checkpoint is, read from its files without building it:
                        algorithm, stored config, training iteration, lifetime env steps,
                        the policy's observation and action spaces.
  inspect_checkpoint()  reads and validates one checkpoint folder (UserError if it is
                        missing, not a checkpoint, truncated, corrupt, of another
                        algorithm or of another env).
  find_checkpoints()    PATH is a checkpoint, or a run folder holding several: all of
                        them in order of training iteration.
  evaluate_checkpoints(cfg, output_dir, checkpoint, env_overridden)
                        validates everything first, then claims the video folder and
                        evaluates each checkpoint through the same recording path as
                        periodic evaluation (add_recording + the callback + the session).
"""

from __future__ import annotations

import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_recorder.app.algorithms import (
    POLICY_ID,
    UserError,
    check_config,
    env_config,
    evaluation_settings,
    recording_options,
    start_ray,
)
from eval_recorder.flatland.envs import ENV_NAME

__all__ = ["CheckpointInfo", "evaluate_checkpoints", "find_checkpoints", "inspect_checkpoint"]

_MARKER = "rllib_checkpoint.json"
_ENV_STEPS_KEY = "env_runners--num_env_steps_sampled_lifetime"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    algorithm_class: type
    config: dict[str, Any]
    training_iteration: int
    env_steps: int
    observation_space: Any
    action_space: Any


def _load_pickle(path: Path, checkpoint: Path):
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except FileNotFoundError:
        raise UserError(
            f"checkpoint {checkpoint} is incomplete: {path.relative_to(checkpoint)} is missing; "
            f"point checkpoint= at a complete RLlib checkpoint."
        ) from None
    except Exception:
        raise UserError(
            f"checkpoint {checkpoint} is corrupt: {path.relative_to(checkpoint)} cannot be read; "
            f"point checkpoint= at an intact RLlib checkpoint."
        ) from None


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read and validate one RLlib algorithm checkpoint folder."""
    path = Path(path).expanduser().resolve()
    if not (path / _MARKER).is_file():
        raise UserError(f"{path} is not an RLlib checkpoint (no {_MARKER}); point checkpoint= at one.")
    try:
        json.loads((path / _MARKER).read_text())
    except ValueError:
        raise UserError(
            f"checkpoint {path} is corrupt: {_MARKER} is not valid JSON; point checkpoint= at an intact RLlib checkpoint."
        ) from None
    class_and_args = _load_pickle(path / "class_and_ctor_args.pkl", path)
    state = _load_pickle(path / "algorithm_state.pkl", path)
    try:
        algorithm_class = class_and_args["class"]
        config = class_and_args["ctor_args_and_kwargs"][0][0]
        iteration = int(state["training_iteration"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError(
            f"checkpoint {path} is corrupt: its algorithm state lacks the config or the training iteration; "
            f"point checkpoint= at an intact RLlib checkpoint."
        ) from None
    from ray.rllib.algorithms.ppo import PPO

    if not (isinstance(algorithm_class, type) and issubclass(algorithm_class, PPO)):
        name = getattr(algorithm_class, "__name__", algorithm_class)
        raise UserError(f"checkpoint {path} was written by {name}, not PPO; eval_recorder evaluates PPO checkpoints.")
    if config.get("env") != ENV_NAME:
        raise UserError(
            f"checkpoint {path} was trained on env {config.get('env')!r}, not {ENV_NAME!r}; "
            f"eval_recorder evaluates policies trained with it."
        )
    module_dir = path / "learner_group" / "learner" / "rl_module" / POLICY_ID
    module_args = _load_pickle(module_dir / "class_and_ctor_args.pkl", path)
    if not (module_dir / "module_state.pkl").is_file():
        raise UserError(
            f"checkpoint {path} is incomplete: {(module_dir / 'module_state.pkl').relative_to(path)} is missing; "
            f"point checkpoint= at a complete RLlib checkpoint."
        )
    kwargs = module_args["ctor_args_and_kwargs"][1]
    stats = state.get("metrics_logger", {}).get("stats", {})
    env_steps = int(stats.get(_ENV_STEPS_KEY, {}).get("lifetime_sum", 0))
    return CheckpointInfo(
        path=path,
        algorithm_class=algorithm_class,
        config=config,
        training_iteration=iteration,
        env_steps=env_steps,
        observation_space=kwargs.get("observation_space"),
        action_space=kwargs.get("action_space"),
    )


def find_checkpoints(path: str | Path) -> list[CheckpointInfo]:
    """The checkpoint at ``path``, or every checkpoint below it, by training iteration."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass an RLlib checkpoint folder or a run folder holding checkpoints.")
    if (path / _MARKER).exists():
        return [inspect_checkpoint(path)]
    found = sorted(
        marker.parent
        for marker in path.rglob(_MARKER)
        # hidden folders are unfinished saves (see main_job._save); nested ones are components
        if not any(part.startswith(".") for part in marker.parent.relative_to(path).parts)
        and not _nested(marker.parent, path)
    )
    if not found:
        raise UserError(f"{path} is not an RLlib checkpoint and holds none (no {_MARKER} in it or below); "
                        f"pass an RLlib checkpoint folder or a run folder holding checkpoints.")
    infos = [inspect_checkpoint(folder) for folder in found]
    return sorted(infos, key=lambda info: (info.training_iteration, str(info.path)))


def _nested(folder: Path, root: Path) -> bool:
    """True for component checkpoints inside an algorithm checkpoint (e.g. learner_group/)."""
    return any((parent / _MARKER).exists() for parent in folder.parents if parent != root and root in parent.parents)


def _check_spaces(info: CheckpointInfo, env_cfg: dict) -> None:
    from eval_recorder.flatland.envs import make_env

    env = make_env(env_cfg)
    observation_space = env.observation_space[env.agents[0]]
    action_space = env.action_space[env.agents[0]]
    if observation_space != info.observation_space or action_space != info.action_space:
        raise UserError(
            f"the env does not fit the policy of checkpoint {info.path}: the env gives observations "
            f"{observation_space} and actions {action_space}, the policy takes {info.observation_space} "
            f"and {info.action_space}; choose an env like the one it was trained on."
        )


def evaluate_checkpoints(cfg, output_dir: Path, checkpoint: str, *, env_overridden: bool) -> int:
    """Evaluate and record every checkpoint at ``checkpoint``; returns the exit code."""
    from eval_recorder.folder_guard import FolderRefused
    from eval_recorder.session import RecordingSession

    try:
        check_config(cfg)
        infos = find_checkpoints(checkpoint)
        env_configs = []
        for info in infos:
            env_cfg = env_config(cfg.env, seed=cfg.training.seed) if env_overridden else dict(info.config["env_config"])
            _check_spaces(info, env_cfg)
            env_configs.append(env_cfg)
        options = recording_options(cfg, output_dir=output_dir, wandb_job_type="eval",
                                    config={"checkpoints": [str(info.path) for info in infos]})
        run_id = options.run_id
        session = RecordingSession(options).open()
    except (UserError, FolderRefused, ValueError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"run {run_id}: evaluating {len(infos)} checkpoint(s), videos go to {session.video_dir}", flush=True)
    try:
        _evaluate(cfg, infos, env_configs, session)
        _print_table(session)
        return 0
    finally:
        session.close()


def _evaluate(cfg, infos: list[CheckpointInfo], env_configs: list[dict], session) -> None:
    import ray
    from tqdm import tqdm

    print(start_ray(cfg), flush=True)
    from eval_recorder.flatland.envs import register_env

    register_env()
    algo, built_for = None, None
    try:
        bar = tqdm(total=len(infos) * cfg.evaluation.episodes, unit="episode", desc="evaluating", file=sys.stdout)
        for info, env_cfg in zip(infos, env_configs):
            # Checkpoints of one run share a config: one Algorithm serves them, in
            # increasing iteration order (eval runners take only newer weights).
            key = (json.dumps(info.config, sort_keys=True, default=str), json.dumps(env_cfg, sort_keys=True))
            if algo is None or key != built_for[0] or info.training_iteration <= built_for[1]:
                if algo is not None:
                    algo.stop()
                bar.set_description(f"it{info.training_iteration:06d}: building")
                algo = _build(cfg, info, env_cfg, session)
            built_for = (key, info.training_iteration)
            session.checkpoint = str(info.path)
            bar.set_description(f"it{info.training_iteration:06d}: restoring")
            algo.load_checkpoint(str(info.path))
            bar.set_description(f"it{info.training_iteration:06d}: evaluating")
            before = len(session.videos)
            algo.evaluate()
            bar.update(len(session.videos) - before)
        bar.close()
    finally:
        if algo is not None:
            algo.stop()
        ray.shutdown()


def _build(cfg, info: CheckpointInfo, env_cfg: dict, session):
    from eval_recorder.api import add_recording

    config = info.algorithm_class.get_default_config().update_from_dict(info.config)
    config.evaluation_config = None  # the stored evaluation overrides belong to the old run
    config = (
        config.environment(env_config=env_cfg)
        .env_runners(num_env_runners=0)
        .evaluation(**evaluation_settings(cfg, interval=1, parallel=False))
    )
    config = add_recording(config, session, render=cfg.evaluation.render or "human")
    return config.build_algo()


def _print_table(session) -> None:
    header = f"{'iteration':>9}  {'env steps':>9}  {'episode':>7}  {'return':>9}  {'arrived':>7}  {'length':>6}  video"
    print(header, flush=True)
    for video in session.videos:
        m = video.metadata
        print(f"{m['training_iteration']:>9}  {m['env_steps']:>9}  {m['episode_index']:>7}  "
              f"{m['episode_return']:>9.2f}  {m['agents_arrived']:>3}/{m['num_agents']:<3}  {m['episode_length']:>6}  "
              f"{video.path}", flush=True)
    print(f"videos written: {len(session.videos)} in {session.video_dir}", flush=True)
    print(f"gallery: {session.gallery_path} (open it in a browser, no server needed)", flush=True)
