"""The main job: PPO training with recorded periodic evaluation (``python run_eval.py``).

Holds:
  train_with_recording(cfg, output_dir)   claims the video folder (before Ray starts),
      trains ``training.iterations`` iterations with recorded evaluation, saves
      checkpoints, prints one line per iteration and a summary; returns an exit code.
  checkpoint_dir()   where the checkpoint of an iteration goes.

Exit codes: 0 done; 2 the user asked for something that cannot work (one sentence on
stderr says what and what to do; nothing of the user's was touched).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from eval_recorder.algo_config import UserError, check_config, ppo_config
from eval_recorder.api import add_recording
from eval_recorder.envs import register_env
from eval_recorder.folder_guard import FolderRefused
from eval_recorder.session import RecordingOptions, RecordingSession, new_run_id
from eval_recorder.video_store import MANIFEST

__all__ = ["checkpoint_dir", "train_with_recording"]

logger = logging.getLogger(__name__)


def checkpoint_dir(output_dir: Path, iteration: int) -> Path:
    """``<output_dir>/checkpoints/it000012``: one folder per saved iteration."""
    return Path(output_dir) / "checkpoints" / f"it{iteration:06d}"


def _say(message: str) -> None:
    print(message, flush=True)


def train_with_recording(cfg, output_dir: Path) -> int:
    """Run the main job; the exit code is returned (see module docstring)."""
    output_dir = Path(output_dir)
    try:
        check_config(cfg)
        run_id = cfg.wandb.run_id or new_run_id()
        options = RecordingOptions(
            video_dir=cfg.recording.video_dir,
            run_id=run_id,
            resume=cfg.recording.resume,
            fps=cfg.recording.fps,
            max_side=cfg.recording.max_side,
            wandb_mode=cfg.wandb.mode.value if hasattr(cfg.wandb.mode, "value") else str(cfg.wandb.mode),
            wandb_project=cfg.wandb.project,
            wandb_entity=cfg.wandb.entity,
            wandb_dir=str(output_dir),
            config=_plain(cfg),
        )
        session = RecordingSession(options).open()  # refuses a folder in use before Ray starts
    except (UserError, FolderRefused, ValueError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    _say(f"run {run_id}: videos go to {session.video_dir}")
    try:
        return _train(cfg, output_dir, session)
    finally:
        session.close()


def _train(cfg, output_dir: Path, session: RecordingSession) -> int:
    import ray

    _say(f"starting Ray ({cfg.ray.num_cpus} CPUs) ...")
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, ignore_reinit_error=True)
    register_env()
    config = ppo_config(cfg)
    if cfg.evaluation.render is not None:
        config = add_recording(config, session, render=cfg.evaluation.render)
    _say("building PPO (env runners start, the first rail drawing takes a few seconds) ...")
    algo = config.build_algo()
    try:
        last_checkpoint = None
        for _ in range(cfg.training.iterations):
            before = len(session.videos)
            result = algo.train()
            iteration = result["training_iteration"]
            _say(_iteration_line(result, new_videos=session.videos[before:], total=cfg.training.iterations))
            every = cfg.training.checkpoint_every
            if (every and iteration % every == 0) or iteration == cfg.training.iterations:
                last_checkpoint = algo.save_to_path(str(checkpoint_dir(output_dir, iteration)))
        _summary(session, last_checkpoint)
        return 0
    finally:
        algo.stop()
        ray.shutdown()


def _iteration_line(result: dict, *, new_videos: list, total: int) -> str:
    runners = result.get("env_runners", {})
    parts = [
        f"iteration {result['training_iteration']}/{total}",
        f"env steps {int(runners.get('num_env_steps_sampled_lifetime', 0))}",
    ]
    if runners.get("episode_return_mean") is not None:
        parts.append(f"train return {runners['episode_return_mean']:.2f}")
    if new_videos:
        completion = sum(v.metadata["completion"] for v in new_videos) / len(new_videos)
        parts.append(f"eval completion {completion:.2f}")
    parts.append(f"videos written {len(new_videos)}")
    return " | ".join(parts)


def _summary(session: RecordingSession, checkpoint) -> None:
    _say(f"videos written: {len(session.videos)} in {session.video_dir}")
    _say(f"manifest: {session.video_dir / MANIFEST}")
    if checkpoint is not None:
        _say(f"checkpoint: {checkpoint}")
    run_dir = session.wandb.run_dir if session.wandb else None
    if run_dir is not None:
        _say(f"wandb run: {run_dir}")
        if session.wandb.mode == "offline":
            _say(f"upload it with: wandb sync {run_dir}")


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
