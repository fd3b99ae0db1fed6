"""Small helpers shared by tests."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from eval_recorder.recorder import RecordedEpisode

ROOT = Path(__file__).resolve().parents[1]


def in_use_message(folder: Path, run_id: str, pid: int) -> str:
    """The refusal of a claim of ``folder`` while run ``run_id`` (process ``pid``) holds it:
    its start time as the lock file records it, in UTC."""
    started = json.loads((Path(folder) / ".eval_recorder.lock").read_text())["started"]
    since = datetime.datetime.fromisoformat(started).astimezone(datetime.timezone.utc)
    return (f"video folder {folder} is in use by run {run_id}, pid {pid}, since {since:%Y-%m-%d %H:%M:%S} UTC "
            f"(host {socket.gethostname()}); choose another recording.video_dir, or wait for run {run_id} to end "
            f"and continue it with recording.resume=true wandb.run_id={run_id}.")


def continue_command(run_folder: Path, run_id: str, *overrides: str, cwd: Path | None = None) -> str:
    """The command a run of ``run_eval.py`` with ``overrides`` (this interpreter, started
    in ``cwd``, default the working directory) prints to be continued in ``run_folder``."""
    here = Path(cwd or Path.cwd())

    def typed(path) -> str:  # as a user types it from there
        path = Path(path).absolute()
        return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)

    python = typed(sys.executable)
    return shlex.join([python if "/" in python else f"./{python}", typed(ROOT / "run_eval.py"), *overrides,
                       "recording.resume=true", f"wandb.run_id={run_id}", f"hydra.run.dir={typed(run_folder)}"])


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden ones too)."""
    folder = Path(folder)
    result = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            result[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def episode(**overrides) -> RecordedEpisode:
    """A RecordedEpisode with fixed facts (``overrides`` replace some)."""
    fields = dict(
        mp4=b"\x00\x00\x00\x18ftypisom", env_label="flatland", weights_seq_no=3, env_seed=77, episode_length=41,
        episode_return=-12.5, frames=42, fps=10, width=484, height=484, runner_index=1,
        runner_host="nodeA", runner_pid=4242, runner_sequence=5,
        facts={"num_agents": 3, "agents_arrived": 2, "completion": 2 / 3},
    )
    fields.update(overrides)
    return RecordedEpisode(**fields)


def play_episode(env, seed: int, action=1) -> None:
    """Play one episode of gymnasium env ``env`` from ``seed``, always taking ``action``."""
    env.reset(seed=seed)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated


def evaluate_trajectory(videos: Path, record: dict):
    """Replay the episode's stored flatland Trajectory with flatland's own TrajectoryEvaluator
    (it checks every step's positions, rewards, dones and infos; raises if one differs); the
    RailEnv at its end, and the Trajectory's per-step malfunction counters (the event log)."""
    from flatland.evaluators.trajectory_evaluator import TrajectoryEvaluator
    from flatland.trajectories.trajectories import Trajectory

    name = record["record"]
    trajectory = Trajectory.load_existing(videos / name, name)
    env = TrajectoryEvaluator(trajectory).evaluate(tqdm_kwargs={"disable": True})
    malfunctions = [info["malfunction"] for info in trajectory.trains_rewards_dones_infos["info"]]
    return env, malfunctions
