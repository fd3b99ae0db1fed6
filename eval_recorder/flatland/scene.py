"""A Flatland episode as the encoder helper process draws it, off the env's stepping thread.

The rails of an episode do not move: what a frame needs beyond them is, per train, its cell
and direction, its previous cell and direction, and whether it is broken down. So the eval
runner's stepping thread only packs those few numbers (``state_of``: 7 small integers per
train) after each recorded step, and the static part once per episode (``scene_of``: the
rail grid, the level-free crossings, the stations, the frame cap). The encoder helper
process (``eval_recorder.encoding``, which imports this module only when it serves a
source that draws this way, ``FlatlandFrames.drawn_beside``) rebuilds from them an object
that holds what ``FrameRenderer`` reads of a ``RailEnv`` (``_SceneEnv``), draws each frame
with the very renderer the stepping thread used before (the same pixels, byte for byte:
tests/test_offthread_drawing.py) and encodes it on its own core. Nothing here imports
flatland's env: the helper loads numpy, PIL, the renderer and flatland's grid module only.
"""

from __future__ import annotations

import pickle
import struct
from types import SimpleNamespace

import numpy as np

__all__ = ["SceneDrawing", "scene_of", "state_of"]

_NONE = -1  # a position or direction that is None
_FIELDS = 7  # row, col, direction, old row, old col, old direction, broken down (0/1)


def scene_of(rail_env, *, max_side: int) -> bytes:
    """What stays fixed during the episode just reset, packed (pickle of plain values and the grid)."""
    agents = rail_env.agents
    return pickle.dumps({
        "width": rail_env.width, "height": rail_env.height, "max_side": max_side,
        "grid": np.ascontiguousarray(rail_env.rail.grid),
        "level_free": sorted(tuple(position) for position in rail_env.resource_map.level_free_positions),
        "waypoints": [None if agent is None else [[waypoint.position for waypoint in group] for group in agent.waypoints]
                      for agent in agents],
    }, protocol=pickle.HIGHEST_PROTOCOL)


def state_of(rail_env) -> bytes:
    """The trains' state the frame after this step shows: ``_FIELDS`` int16 per train."""
    values: list[int] = []
    append = values.extend
    for agent in rail_env.agents:
        current = None if agent is None else agent.current_configuration
        if current is None or current[0] is None:
            append((_NONE,) * _FIELDS)
            continue
        (row, col), direction = current
        old = agent.old_configuration
        if old is not None and old[0] is not None:
            (old_row, old_col), old_direction = old
        else:
            old_row = old_col = old_direction = _NONE
        append((row, col, direction, old_row, old_col, _NONE if old_direction is None else old_direction,
                agent.malfunction_handler.malfunction_down_counter > 0))
    return struct.pack(f"<{len(values)}h", *values)


class _SceneEnv:
    """What ``FrameRenderer`` reads of a RailEnv, made from ``scene_of`` and posed by ``state_of``."""

    def __init__(self, scene: dict) -> None:
        self.width, self.height = scene["width"], scene["height"]
        self.rail = SimpleNamespace(grid=scene["grid"])
        self.resource_map = SimpleNamespace(level_free_positions=set(scene["level_free"]))
        self.agents = [
            None if waypoints is None else SimpleNamespace(
                current_configuration=None, old_configuration=None,
                malfunction_handler=SimpleNamespace(malfunction_down_counter=0),
                waypoints=[[SimpleNamespace(position=position) for position in group] for group in waypoints])
            for waypoints in scene["waypoints"]
        ]

    def get_num_agents(self) -> int:
        return len(self.agents)

    def pose(self, state: bytes) -> None:
        rows = np.frombuffer(state, dtype="<i2").reshape(-1, _FIELDS).tolist()
        if len(rows) != len(self.agents):
            raise ValueError(f"a state of {len(rows)} trains for a scene of {len(self.agents)}")
        for agent, (row, col, direction, old_row, old_col, old_direction, broken) in zip(self.agents, rows):
            if agent is None:
                continue
            if row == _NONE:
                agent.current_configuration = agent.old_configuration = None
                continue
            agent.current_configuration = ((row, col), direction)
            agent.old_configuration = (None if old_row == _NONE else
                                       ((old_row, old_col), None if old_direction == _NONE else old_direction))
            agent.malfunction_handler.malfunction_down_counter = int(broken)


class SceneDrawing:
    """In the encoder helper: the frames (yuv420p) of one episode, from its scene and states."""

    def __init__(self, scene: bytes) -> None:
        from eval_recorder.flatland.rendering import FrameRenderer

        values = pickle.loads(scene)
        self._env = _SceneEnv(values)
        self._renderer = FrameRenderer(self._env, max_side=values["max_side"])
        self._renderer.new_episode()

    def frame(self, state: bytes) -> np.ndarray:
        """The frame of ``state``, (height * 3 // 2, width) uint8 yuv420p, a new array."""
        self._env.pose(state)
        return self._renderer.render_yuv420p()
