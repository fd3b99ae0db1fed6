"""Drawing a stored Flatland episode again, from its flatland Trajectory folder in the video folder.

``read_trajectory(folder)`` reads the record ``publish_trajectory`` wrote (flatland's own
layout: ``serialised_state/<name>.pkl`` and ``event_logs/*.tsv``) back into a
``FlatlandEpisode``, with flatland's own readers and without writing anything (flatland's
``Trajectory.load_existing`` would make an ``outputs/`` folder inside the record).
``record_frames(folder, max_side=..., steps=...)`` first replays the whole episode
(``trajectory.check_replay``: ``ReplayDiverged`` names the first step that differs, before
any frame), then draws the frame of each step asked for on a RailEnv of the initial state
whose trains are posed where the record has them (``trajectory.rail_env_at`` / ``pose``),
with the renderer the live recording uses (``FrameRenderer.render_yuv420p``), and the
label's extra text the live frame source gives at that step (``arrived N/M``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from eval_recorder.frames import YUV420P

__all__ = ["read_trajectory", "record_frames"]


def read_trajectory(folder: Path) -> "FlatlandEpisode":  # noqa: F821 (imported below, with flatland)
    """The ``FlatlandEpisode`` of the flatland Trajectory folder ``folder`` (episode id: its
    name); ValueError saying what is missing if it is not one. Nothing is written."""
    from flatland.trajectories.trajectories import SERIALISED_STATE_SUBDIR, Trajectory

    from eval_recorder.atomic_files import read_regular
    from eval_recorder.flatland.trajectory import FlatlandEpisode

    folder = Path(folder)
    name = folder.name
    state = folder / SERIALISED_STATE_SUBDIR / f"{name}.pkl"
    try:
        initial_state = read_regular(state)
    except OSError as error:
        raise ValueError(f"{folder} is not a flatland trajectory of episode {name} ({state} cannot be read: "
                         f"{error.strerror or error})") from None
    trajectory = Trajectory(data_dir=folder, ep_id=name)
    try:
        actions = trajectory._read_actions(episode_only=True)
        positions = trajectory._read_trains_positions(episode_only=True)
        outcomes = trajectory._read_trains_rewards_dones_infos(episode_only=True)
        arrived = trajectory._read_trains_arrived(episode_only=True)
    except Exception as error:  # pandas' and ast's many ways of failing on a damaged tsv
        raise ValueError(f"the event logs of {folder} cannot be read ({type(error).__name__}: {error})") from None
    import pickle

    n = len(pickle.loads(initial_state)["agents"])
    steps = int(positions["env_time"].max()) if len(positions) else 0
    shape = (steps, n)
    arrays = {
        "actions": np.zeros(shape, dtype=np.int8), "positions": np.full((steps, n, 3), -1, dtype=np.int16),
        "rewards": np.zeros(shape, dtype=np.float64), "dones": np.zeros(shape, dtype=bool),
        "action_required": np.zeros(shape, dtype=bool), "states": np.zeros(shape, dtype=np.int8),
        "malfunction": np.zeros(shape, dtype=np.int32), "speed": np.zeros((steps, n, 2), dtype=np.int32),
    }
    for env_time, agent, action in zip(actions["env_time"], actions["agent_id"], actions["action"]):
        arrays["actions"][int(env_time), int(agent)] = int(action.value if hasattr(action, "value") else action)
    for env_time, agent, position in zip(positions["env_time"], positions["agent_id"], positions["position"]):
        if position is not None:
            (row, col), direction = position
            arrays["positions"][int(env_time) - 1, int(agent)] = (row, col, direction)
    for env_time, agent, reward, done, info in zip(outcomes["env_time"], outcomes["agent_id"], outcomes["reward"],
                                                   outcomes["done"], outcomes["info"]):
        at = (int(env_time) - 1, int(agent))
        arrays["rewards"][at] = float(reward)
        arrays["dones"][at] = bool(done)
        arrays["action_required"][at] = bool(info["action_required"])
        arrays["states"][at] = int(info["state"])
        arrays["malfunction"][at] = int(info["malfunction"])
        speed = Fraction(info["speed"])
        arrays["speed"][at] = (speed.numerator, speed.denominator)
    ended = len(arrived) > 0
    success_rate = float(arrived["success_rate"].iloc[-1]) if ended else None
    normalized = float(arrived["normalized_reward"].iloc[-1]) if ended else None
    return FlatlandEpisode(initial_state=initial_state, n_agents=n, steps=steps, ended=ended, success_rate=success_rate,
                           normalized_reward=normalized, arrays=arrays)


def record_frames(folder: Path, *, max_side: int, steps: Iterable[int]) -> Iterator[tuple[str, np.ndarray, str]]:
    """``(pixel format, frame, label extra)`` of each of ``steps`` (ascending; 0: after the
    reset) of the episode stored in the flatland Trajectory folder ``folder``, drawn as the
    live recording draws them; the replay is checked first (``ReplayDiverged``), so nothing
    is yielded for an episode that does not replay. No ``steps``: only the check."""
    from flatland.envs.step_utils.states import TrainState

    from eval_recorder.flatland.rendering import FrameRenderer
    from eval_recorder.flatland.trajectory import check_replay, pose, rail_env_at

    episode = read_trajectory(folder)
    check_replay(episode)
    wanted = list(steps)
    if not wanted:
        return
    env = rail_env_at(episode)
    renderer = FrameRenderer(env, max_side=max_side)
    renderer.new_episode()
    for step in wanted:
        if not 0 <= step <= episode.steps:
            raise ValueError(f"step {step} is not in the episode of {episode.steps} steps stored in {folder}")
        pose(env, episode, step)
        arrived = sum(agent.state == TrainState.DONE for agent in env.agents)  # as FlatlandFrames.label_extra
        yield YUV420P, renderer.render_yuv420p(), f"arrived {arrived}/{env.get_num_agents()}"
