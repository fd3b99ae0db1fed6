"""Flatland's frame source: the fast renderer for any env that holds a ``RailEnv``.

``FlatlandFrames`` (plugged in through the ``eval_recorder.frame_sources`` entry point)
recognises a flatland ``RailEnv`` inside an env — flatland-rl's RLlib wrappers, gymnasium
wrappers, or a bare RailEnv — whatever its observation builder, generators, malfunctions
and speed profiles, draws it with ``FrameRenderer`` (flatland's PILSVG picture, pixel for
pixel) beside the env — the stepping thread packs each recorded step's train state, the
encoder helper process draws it (``drawn_beside``, ``eval_recorder.flatland.scene``) —
reports trains, trains arrived and completion, and plays saved scenarios
(``RailEnvPersister`` files).
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import numpy as np

from eval_recorder.flatland.scene import scene_of, state_of
from eval_recorder.frames import YUV420P, FrameSource, count_frame

__all__ = ["FlatlandFrames", "arrived", "find_rail_env"]

_MAX_DEPTH = 8
SCENARIO_SUFFIXES = (".pkl", ".mpk")  # RailEnvPersister's pickle and msgpack files


def find_rail_env(env: Any):
    """The flatland ``RailEnv`` that ``env`` is or wraps (through ``wrap()``, ``unwrapped``,
    ``env``, ``_wrap``, ``rail_env``), else None. Never imports flatland: an env can hold a
    RailEnv only if flatland is already imported."""
    rail_env_module = sys.modules.get("flatland.envs.rail_env")
    if rail_env_module is None:
        return None
    rail_env_class = rail_env_module.RailEnv
    seen: set[int] = set()
    todo = [env]
    while todo and len(seen) < _MAX_DEPTH * 4:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, rail_env_class):
            return current
        inner = getattr(current, "__dict__", {})
        todo.extend(inner.get(name) for name in ("_wrap", "env", "rail_env", "_env"))
        if callable(getattr(type(current), "wrap", None)):
            try:
                todo.append(current.wrap())
            except Exception:
                pass
    return None


def arrived(rail_env) -> int:
    """Trains that reached their target."""
    from flatland.envs.step_utils.states import TrainState

    return sum(agent.state == TrainState.DONE for agent in rail_env.agents)


class FlatlandFrames(FrameSource):
    """Frames of the RailEnv inside an env, drawn by the fast renderer (yuv420p)."""

    label = "flatland"
    plays_scenarios = True
    scenario_files = "saved Flatland scenarios (.pkl or .mpk files of RailEnvPersister)"

    drawn_beside = "eval_recorder.flatland.scene:SceneDrawing"

    def __init__(self, env: Any, rail_env, *, max_side: int) -> None:
        self._env = env
        self.rail_env = rail_env
        self._max_side = max_side
        self._renderer = None  # made by the first frame() drawn here (recording draws beside: scene.py)
        self._capture = None  # the episode's TrajectoryCapture, whose trains' rows the frames reuse

    @classmethod
    def find(cls, env: Any, *, max_side: int) -> "FlatlandFrames | None":
        rail_env = find_rail_env(env)
        return None if rail_env is None else cls(env, rail_env, max_side=max_side)

    def new_episode(self) -> None:
        if self._renderer is not None:
            self._renderer.new_episode()

    def frame(self) -> tuple[str, np.ndarray]:
        if self._renderer is None:
            from eval_recorder.flatland.rendering import FrameRenderer

            self._renderer = FrameRenderer(self.rail_env, max_side=self._max_side)
        frame = self._renderer.render_yuv420p()
        count_frame()
        return YUV420P, frame

    def frame_size(self) -> tuple[int, int]:
        from eval_recorder.flatland.rendering import frame_size

        return frame_size(self.rail_env, max_side=self._max_side)

    def scene(self) -> bytes:
        return scene_of(self.rail_env, max_side=self._max_side)

    def state(self) -> bytes:
        count_frame()
        row = self._row_now()
        return state_of(self.rail_env) if row is None else row

    def label_extra(self) -> str:
        done = arrived(self.rail_env) if self._row_now() is None else self._capture.rows.arrived
        return f"arrived {done}/{self.rail_env.get_num_agents()}"

    def _row_now(self) -> bytes | None:
        """The trains' row of this step if the episode's trajectory capture made it (made once per step)."""
        return None if self._capture is None else self._capture.row_now()

    def facts(self) -> dict[str, Any]:
        agents, done = self.rail_env.get_num_agents(), arrived(self.rail_env)
        return {"num_agents": agents, "agents_arrived": done, "completion": done / agents if agents else 0.0}

    record_kind = "flatland"

    def replay_capture(self) -> "_TrajectoryRecord":
        self._capture = None
        record = _TrajectoryRecord(self.rail_env)
        self._capture = record.capture
        return record

    @classmethod
    def publish_record(cls, data: bytes, folder, stem: str) -> str | None:
        from eval_recorder.flatland.trajectory import FlatlandEpisode, publish_trajectory

        written = publish_trajectory(FlatlandEpisode.from_bytes(data), folder, cls.record_name(stem))
        return None if written is None else written.name

    @classmethod
    def render_record(cls, path, *, max_side: int, steps):
        from eval_recorder.flatland.record_frames import record_frames; return record_frames(path, max_side=max_side, steps=steps)  # noqa: E702

    @classmethod
    def record_name(cls, stem: str) -> str:
        return stem  # a flatland Trajectory folder, its episode id the video's stem

    @classmethod
    def is_scenario(cls, name: str) -> bool:
        return name.endswith(SCENARIO_SUFFIXES)

    @classmethod
    def scenario_agents(cls, name: str, data: bytes) -> int:
        return scenario_agents(name, data)

    def load_scenario(self, name: str, data: bytes) -> dict[str, Any]:
        """Load the saved scenario ``data`` (a RailEnvPersister file named ``name``) into the
        env, keeping its observation builder; returns the reset options that keep it."""
        from flatland.envs.persistence import RailEnvPersister

        RailEnvPersister.load(self.rail_env, env_dict=load_scenario_dict(name, data),
                              obs_builder=self.rail_env.obs_builder)
        _refresh_wrappers(self._env, self.rail_env)
        return {"regenerate_rail": False, "regenerate_schedule": False}


class _TrajectoryRecord:
    """The RailEnv's TrajectoryCapture, stepped as the recording wrapper steps any capture."""

    def __init__(self, rail_env) -> None:
        from eval_recorder.flatland.trajectory import TrajectoryCapture

        self.capture = TrajectoryCapture(rail_env)

    def step_multi(self, actions, rewards, terminateds, truncateds) -> None:
        self.capture.step(actions)

    def step(self, action, reward, terminated, truncated) -> None:
        self.capture.step(action)

    def finish(self):
        return self.capture.finish()


def load_scenario_dict(name: str, data: bytes) -> dict:
    """The env dict of a RailEnvPersister file's bytes (``.pkl``: pickle; ``.mpk``: msgpack)."""
    if name.endswith(".mpk"):
        import msgpack

        return msgpack.unpackb(data, use_list=False, raw=False)
    return pickle.load(io.BytesIO(data))


def scenario_agents(name: str, data: bytes) -> int:
    """How many trains the saved scenario ``data`` (file ``name``) runs."""
    env_dict = load_scenario_dict(name, data)
    return len(env_dict.get("agents", env_dict.get("agents_static", ())))


def _refresh_wrappers(env: Any, rail_env) -> None:
    """A scenario may have another number of trains: flatland-rl's RayMultiAgentWrapper
    fixes its agents and spaces when made, so remake them for the loaded RailEnv."""
    from flatland.ml.ray.ray_multi_agent_rail_env import RayMultiAgentWrapper

    seen: set[int] = set()
    current = env
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RayMultiAgentWrapper) and current.wrap() is rail_env:
            RayMultiAgentWrapper.__init__(current, rail_env, render_mode=current.render_mode)
            return
        current = getattr(current, "__dict__", {}).get("env")
