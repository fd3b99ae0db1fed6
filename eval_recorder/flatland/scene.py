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
from itertools import chain
from operator import attrgetter
from types import SimpleNamespace

import numpy as np

__all__ = ["SceneDrawing", "TrainRows", "scene_of", "state_of", "train_major"]

_NONE = -1  # a position or direction that is None
# Per train: row, col, direction, old row, old col, old direction, malfunction down counter,
# train state, speed, distance in the cell (the last two: indices into TrainRows.fractions).
_FIELDS = 10
_DONE = 6  # TrainState.DONE
_CONFIGURATION = struct.Struct("<3h")
_OFF_MAP = _CONFIGURATION.pack(_NONE, _NONE, _NONE)


class _Configurations(dict):
    """A train's ``((row, col), direction)`` packed as 3 int16 (off the map, or a direction of
    None: -1), each configuration packed once and then looked up."""

    def __missing__(self, configuration) -> bytes:
        if configuration is None or configuration[0] is None:
            packed = _OFF_MAP
        else:
            (row, col), direction = configuration
            packed = _CONFIGURATION.pack(row, col, _NONE if direction is None else direction)
        self[configuration] = packed
        return packed


class _NoTrain:
    """Stands for a train of None (flatland's renderer skips them): every field of its row -1."""

    current_configuration = old_configuration = None
    _state = state = _malfunction_down_counter = malfunction_down_counter = _NONE
    _speed = speed = _distance = distance = None  # indexed as -1 (TrainRows._indices)

    @property
    def state_machine(self):
        return self

    malfunction_handler = speed_counter = state_machine


_NO_TRAIN = _NoTrain()


def _reader(objects: list, private: str, public: str) -> attrgetter:
    """A getter of ``public`` (a flatland property) on each of ``objects``: of the attribute
    behind it, ``private``, where every one has it (the same value without the property's call)."""
    has = all(hasattr(item, private) for item in objects)
    return attrgetter(private if has else public)


class TrainRows:
    """The rows of ``rail_env``'s trains as its current step leaves them (``row()``), made once
    per step for both the frame drawn beside the env and the episode's trajectory: ``_FIELDS``
    int16 per train, packed field by field (``train_major`` puts them train by train): every
    train's cell and direction (3 each), then every train's previous ones, then the malfunction
    counters, the states, the speeds and the distances in the cell (one each). Read with
    attribute getters mapped over the trains and packed by ``struct`` and ``bytes.join``: the
    stepping thread runs no Python code per train. Packed bytes keep the garbage collector out
    of the way: the episode's steps hold no Python objects per train. Speeds and distances are
    Fractions (flatland's, a few objects again and again): each row holds its index in
    ``fractions``, which keeps every one it indexed alive (so its id stays its own)."""

    def __init__(self, rail_env) -> None:
        agents = [_NO_TRAIN if agent is None else agent for agent in rail_env.agents]
        self._agents = agents
        self._machines = [agent.state_machine for agent in agents]
        self._handlers = [agent.malfunction_handler for agent in agents]
        self._counters = [agent.speed_counter for agent in agents]
        self._state = _reader(self._machines, "_state", "state")
        self._broken = _reader(self._handlers, "_malfunction_down_counter", "malfunction_down_counter")
        self._speed = _reader(self._counters, "_speed", "speed")
        self._distance = _reader(self._counters, "_distance", "distance")
        self._current, self._old = attrgetter("current_configuration"), attrgetter("old_configuration")
        self._configurations = _Configurations()
        self._tail = struct.Struct(f"<{4 * len(agents)}h")
        self.fractions: list = []
        self._indices: dict[int, int] = {id(None): _NONE}  # a train of None's speed and distance
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
        agents, counters, packed = self._agents, self._counters, self._configurations.__getitem__
        states = list(map(self._state, self._machines))
        self.arrived = states.count(_DONE)
        index = self._indices.__getitem__
        try:
            tail = self._tail.pack(*map(self._broken, self._handlers), *states,
                                   *map(index, map(id, map(self._speed, counters))),
                                   *map(index, map(id, map(self._distance, counters))))
        except KeyError:  # a speed or distance not indexed yet
            for value in chain(map(self._speed, counters), map(self._distance, counters)):
                self.index_of(value)
            return self.row()
        return b"".join((b"".join(map(packed, map(self._current, agents))),
                         b"".join(map(packed, map(self._old, agents))), tail))


def train_major(rows: np.ndarray, n: int) -> np.ndarray:
    """``TrainRows``' rows (int16, one ``row()`` per last axis, ``_FIELDS * n`` long) train by
    train: shape (..., n, _FIELDS), the fields in the order of ``_FIELDS``' comment. A train off
    the map gets no previous cell either (-1): neither the drawing nor the record reads one."""
    rows = np.asarray(rows)
    lead = rows.shape[:-1]
    trains = np.empty((*lead, n, _FIELDS), dtype=np.int16)
    trains[..., 0:3] = rows[..., : 3 * n].reshape(*lead, n, 3)
    trains[..., 3:6] = rows[..., 3 * n : 6 * n].reshape(*lead, n, 3)
    trains[..., 6:] = rows[..., 6 * n :].reshape(*lead, 4, n).swapaxes(-1, -2)
    trains[trains[..., 0] == _NONE, 3:6] = _NONE
    return trains


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
        values = np.frombuffer(state, dtype="<i2")
        if len(values) != _FIELDS * len(self.agents):
            raise ValueError(f"a state of {len(values) / _FIELDS:g} trains for a scene of {len(self.agents)}")
        rows = train_major(values, len(self.agents)).tolist()
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
