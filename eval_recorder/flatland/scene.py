"""A Flatland episode as the encoder helper process draws it, off the env's stepping thread.

The rails of an episode do not move: what a frame needs beyond them is, per train, its cell
and direction, its previous cell and direction, and whether it is broken down. So the eval
runner's stepping thread only packs those few numbers (``TrainRows``: 10 small integers per
train, the same row the episode's trajectory keeps) after each step, and the static part
once per episode (``scene_of``: the rail grid, the level-free crossings, the stations, the
frame cap). The encoder helper
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

__all__ = ["SceneDrawing", "TrainRows", "scene_of", "state_of"]

_NONE = -1  # a position or direction that is None
# Per train: row, col, direction, old row, old col, old direction, malfunction down counter,
# train state, speed, distance in the cell (the last two: indices into TrainRows.fractions).
_FIELDS = 10
_DONE = 6  # TrainState.DONE


class TrainRows:
    """The rows of ``rail_env``'s trains as its current step leaves them: ``_FIELDS`` int16 per
    train, packed (``row()``), made once per step for both the frame drawn beside the env and
    the episode's trajectory. Packed bytes keep the garbage collector out of the way: the
    episode's steps hold no Python objects per train. Speeds and distances are Fractions
    (flatland's, a few objects again and again): each row holds its index in ``fractions``,
    which keeps every one it indexed alive (so its id stays its own)."""

    def __init__(self, rail_env) -> None:
        self._trains = [None if agent is None else (agent, agent.malfunction_handler, agent.speed_counter)
                        for agent in rail_env.agents]
        self.fractions: list = []
        self._indices: dict[int, int] = {}
        self.arrived = 0  # trains at their target in the last row made

    def index_of(self, value) -> int:
        """``value``'s index in ``fractions`` (added if new)."""
        index = self._indices.get(id(value))
        if index is None:
            index = self._indices[id(value)] = len(self.fractions)
            self.fractions.append(value)
        return index

    def row(self) -> bytes:
        """The trains' rows now (see the class docstring)."""
        values: list[int] = []
        append, indices, index = values.extend, self._indices, self.index_of
        arrived = 0
        for train in self._trains:
            if train is None:
                append((_NONE,) * _FIELDS)
                continue
            agent, handler, counter = train
            current, state = agent.current_configuration, agent.state
            arrived += state == _DONE
            speed, distance = counter.speed, counter.distance
            found = indices.get(id(speed))
            speed = index(speed) if found is None else found
            found = indices.get(id(distance))
            distance = index(distance) if found is None else found
            if current is None or current[0] is None:
                append((_NONE, _NONE, _NONE, _NONE, _NONE, _NONE, handler.malfunction_down_counter, state, speed,
                        distance))
                continue
            (row, col), direction = current
            old = agent.old_configuration
            if old is not None and old[0] is not None:
                (old_row, old_col), old_direction = old
                if old_direction is None:
                    old_direction = _NONE
            else:
                old_row = old_col = old_direction = _NONE
            append((row, col, direction, old_row, old_col, old_direction, handler.malfunction_down_counter, state,
                    speed, distance))
        self.arrived = arrived
        return struct.pack(f"<{len(values)}h", *values)


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
    """The trains' state the frame after this step shows (``TrainRows``' row, when none is made this step)."""
    return TrainRows(rail_env).row()


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
        for agent, (row, col, direction, old_row, old_col, old_direction, broken, *_) in zip(self.agents, rows):
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
