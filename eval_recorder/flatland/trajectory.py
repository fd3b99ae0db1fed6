"""A Flatland episode kept as a flatland ``Trajectory``, and what drawing it later needs.

``TrajectoryCapture`` runs on the eval runner's stepping thread: made right after the
``RailEnv``'s reset (it keeps the env's initial state as ``RailEnvPersister`` saves it: rails,
trains, timetable, malfunction and random-generator state), then ``step(actions)`` after
every ``RailEnv.step``, which keeps the step's actions, rewards and dones and the trains'
packed row (``scene.TrainRows``: cell and direction, previous cell, malfunction counter,
state, speed and distance in the cell; the same row the frame drawn beside the env is drawn
from). ``finish()`` stacks them into a ``FlatlandEpisode`` in that captured form; what flatland's
files need beyond it (``action_required``, the speeds as fractions) is worked out when the
episode's ``arrays`` are first read, on the driver, off the stepping thread.

``FlatlandEpisode.to_bytes()`` / ``from_bytes()`` (it travels through Ray as bytes) is an
``.npz`` (zlib level 1): ``meta`` (UTF-8 JSON: format, version, trains, steps, success rate,
normalized reward, whether the episode ended), ``initial_state`` (the pickled
``RailEnvPersister`` state, as uint8), and either the captured form (``actions``, ``rewards``,
``dones``, ``rows``: int16 per step, train and row field, ``fractions``: the speeds and
distances the rows index, as numerator and denominator, ``max_speed``: each train's index in
them) or the arrays: per step and train ``actions`` (int8, the action the RailEnv used:
DO_NOTHING where none was given), ``positions`` (int16 row, column, direction after the step;
-1 off the map), ``rewards`` (float64), ``dones``, ``action_required`` (bool), ``states`` (int8
``TrainState``), ``malfunction`` (int32 down counter), ``speed`` (int32 numerator and
denominator of the speed fraction).

``publish_trajectory(episode, folder, name)`` writes it in flatland's own layout, which
``flatland.evaluators.trajectory_evaluator.TrajectoryEvaluator`` and the
``flatland-trajectory-evaluate --data-dir <folder>/<name> --ep-id <name>`` command replay:

    <name>/serialised_state/<name>.pkl      the env's initial state (RailEnvPersister)
    <name>/event_logs/*.tsv                 actions, positions, rewards/dones/infos, arrivals

the very files, byte for byte, flatland's own ``Trajectory`` writes (its ``persist()``: pandas'
``to_csv``), built here as text without pandas or a ``Trajectory`` (about a tenth of the time),
into a hidden temporary sibling folder, flushed, then renamed to ``<name>``: the record appears
complete or not at all, and an existing one is never replaced. Indexing follows flatland's: the
actions of step i at ``env_time`` i-1, the positions and rewards/dones/infos after step i at
``env_time`` i.

Drawing: a frame needs each train's cell and direction, its previous cell and direction
(the cell it was on before the step; flatland draws trains one step behind), its malfunction
counter and state; the rails and stations are fixed for the episode and in the initial state.
``check_replay(episode)`` steps a RailEnv made from the initial state with the recorded actions
and raises ``ReplayDiverged`` at the first step and train whose position, reward, done, state
or malfunction counter differs (what flatland's evaluator checks, said in one sentence).
``rail_env_at(episode)`` rebuilds the RailEnv of the initial state without stepping it and
``pose(rail_env, episode, step)`` puts its trains where they were after ``step``, so the
renderer (eval_recorder.flatland.rendering) draws the frame of that step from the record.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import shutil
import tempfile
from fractions import Fraction
from itertools import chain
from pathlib import Path
from typing import Mapping

import numpy as np

from eval_recorder.atomic_files import fsync_dir
from eval_recorder.episode_record import npz_bytes, npz_read

__all__ = ["FlatlandEpisode", "TrajectoryCapture", "check_replay", "pose", "publish_trajectory", "rail_env_at"]

FORMAT = "eval_recorder.flatland_episode"
VERSION = 2
_DO_NOTHING = 0
# The arrays a FlatlandEpisode is read by (see the module docstring), and the ones it is
# captured as (``TrainRows``' rows with their table of speed fractions, per step and train).
_ARRAYS = ("actions", "positions", "rewards", "dones", "action_required", "states", "malfunction", "speed")
_CAPTURED = ("actions", "rewards", "dones", "rows", "fractions", "max_speed")

_log = logging.getLogger(__name__)


class TrajectoryCapture:
    """One RailEnv episode, appended as it runs (see the module docstring). Make it right
    after the reset, call ``step(actions)`` after each ``RailEnv.step`` with the actions it
    was given (keys: train handles, as ints or as flatland-rl's RLlib wrapper's strings).

    A step keeps its actions and rewards dicts, its dones and the trains' packed row
    (``scene.TrainRows``, which the frame drawn beside the env reuses: ``last_row``); what
    the record's arrays need beyond that (action_required, the speeds as fractions) is
    worked out where the record is read (``FlatlandEpisode.arrays``), off the stepping thread."""

    def __init__(self, rail_env) -> None:
        from flatland.envs.persistence import RailEnvPersister

        from eval_recorder.flatland.scene import TrainRows

        self._env = rail_env
        self._agents = list(rail_env.agents)
        self.rows = TrainRows(rail_env)
        self._max_speeds = [self.rows.index_of(agent.speed_counter.max_speed) for agent in self._agents]
        self.initial_state = pickle.dumps(RailEnvPersister.get_full_state(rail_env), protocol=pickle.HIGHEST_PROTOCOL)
        self._actions: list = []
        self._rewards: list = []
        self._dones: list = []
        self._rows: list[bytes] = []
        self.last_row: bytes | None = None
        """The trains' row of the last step captured (None before the first)."""
        self._at: int | None = None  # the env's elapsed steps when last_row was made

    def step(self, actions: Mapping) -> None:
        env = self._env
        self._actions.append(dict(actions))
        self._rewards.append(env.rewards_dict)  # a new dict each step (RailEnv.clear_rewards_dict)
        self._dones.append(tuple(env.dones.values()))  # changed in place: copied
        self.last_row = self.rows.row()
        self._rows.append(self.last_row)
        self._at = env._elapsed_steps

    def row_now(self) -> bytes | None:
        """The trains' row of the env's current step if this capture made it, else None."""
        if self.last_row is not None and self._at == self._env._elapsed_steps:
            return self.last_row
        return None

    @property
    def steps(self) -> int:
        return len(self._actions)

    def finish(self) -> "FlatlandEpisode":
        """The episode captured so far (once it ended: with its arrivals and normalized reward)."""
        from eval_recorder.flatland.scene import _FIELDS, train_major

        env, n, steps = self._env, len(self._agents), len(self._actions)
        actions = _per_train(self._actions, n, _DO_NOTHING, np.int8, handle=_Handles())
        rows = train_major(np.frombuffer(b"".join(self._rows), dtype="<i2").reshape(steps, _FIELDS * n), n)
        rewards = _per_train(self._rewards, n, 0.0, np.float64)
        if set(map(len, self._dones)) == {n + 1}:  # every train's and "__all__" (RailEnv.dones), the usual case
            dones = np.fromiter(chain.from_iterable(self._dones), dtype=bool, count=steps * (n + 1)).reshape(steps, n + 1)
            dones = dones[:, :n]
        else:
            dones = np.asarray([flags[:n] for flags in self._dones], dtype=bool).reshape(steps, n)
        ended = bool(env.dones.get("__all__", False)) and steps > 0
        success_rate = normalized = None
        if ended:
            success_rate = self.rows.arrived / n if n else 0.0
            # as flatland's PolicyRunner: every train's reward of every step, in env_time order
            normalized = env.rewards.normalize(*rewards.reshape(-1).tolist(), max_episode_steps=env._max_episode_steps,
                                               num_agents=n)
            normalized = None if normalized is None else float(normalized)
        fractions = [Fraction(value) for value in self.rows.fractions]
        return FlatlandEpisode(
            initial_state=self.initial_state, n_agents=n, steps=steps, ended=ended, success_rate=success_rate,
            normalized_reward=normalized,
            captured={"actions": actions, "rewards": rewards, "dones": dones, "rows": rows,
                      "fractions": np.array([(f.numerator, f.denominator) for f in fractions], dtype=np.int64).reshape(-1, 2),
                      "max_speed": np.array(self._max_speeds, dtype=np.int16)},
        )


class _Handles(dict):
    """A train's handle (int) by the key it was given under (an int, or flatland-rl's RLlib
    wrapper's string), each key converted once."""

    def __missing__(self, key) -> int:
        handle = self[key] = int(key)
        return handle


def _per_train(steps_given: list, n: int, default, dtype, handle: dict | None = None) -> np.ndarray:
    """(steps, n) array of ``dtype``: at [step, train] the value ``steps_given[step]`` (a dict
    keyed by train handle; ``handle`` maps its keys to handles) holds for the train, else
    ``default``. Made in bulk: the episode's keys and values each in one pass."""
    steps = len(steps_given)
    counts = np.fromiter(map(len, steps_given), dtype=np.intp, count=steps)
    total = int(counts.sum())
    if handle is None and total == steps * n and all(map(tuple(range(n)).__eq__, map(tuple, steps_given))):
        # every step keyed by every train's handle, in order (RailEnv's rewards): the values only
        return np.fromiter(chain.from_iterable(map(dict.values, steps_given)), dtype=dtype, count=total).reshape(steps, n)
    array = np.full((steps, n), default, dtype=dtype)
    if total:
        keys = chain.from_iterable(steps_given)
        handles = np.fromiter(keys if handle is None else map(handle.__getitem__, keys), dtype=np.intp, count=total)
        values = np.fromiter(chain.from_iterable(map(dict.values, steps_given)), dtype=dtype, count=total)
        if handles.min() < 0:
            raise IndexError(f"a train handle of {handles.min()} in an episode of {n} trains")
        array[np.repeat(np.arange(steps), counts), handles] = values
    return array


class FlatlandEpisode:
    """A finished RailEnv episode (see the module docstring for its arrays): given as its
    ``arrays``, or as ``captured`` (``TrajectoryCapture``'s form: ``_CAPTURED``), from which
    ``arrays`` are worked out when first read."""

    def __init__(self, *, initial_state: bytes, n_agents: int, steps: int, ended: bool, success_rate: float | None,
                 normalized_reward: float | None, arrays: dict[str, np.ndarray] | None = None,
                 captured: dict[str, np.ndarray] | None = None) -> None:
        if (arrays is None) == (captured is None):
            raise ValueError("a FlatlandEpisode needs either its arrays or its captured form")
        self.initial_state = initial_state
        self.n_agents = n_agents
        self.steps = steps
        self.ended = ended
        self.success_rate = success_rate
        self.normalized_reward = normalized_reward
        self._arrays = arrays
        self._captured = captured

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = _arrays_of(self._captured, self.steps, self.n_agents)
        return self._arrays

    @arrays.setter
    def arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays, self._captured = arrays, None

    def to_bytes(self) -> bytes:
        meta = {"format": FORMAT, "version": VERSION, "n_agents": self.n_agents, "steps": self.steps,
                "ended": self.ended, "success_rate": self.success_rate, "normalized_reward": self.normalized_reward}
        arrays = self._captured if self._captured is not None else self._arrays
        return npz_bytes(meta, {"initial_state": np.frombuffer(self.initial_state, dtype=np.uint8), **arrays})

    @classmethod
    def from_bytes(cls, data: bytes) -> "FlatlandEpisode":
        meta, arrays = npz_read(data, format=FORMAT, version=VERSION, what="a Flatland episode record")
        initial_state = arrays.pop("initial_state").tobytes()
        given = set(arrays)
        if given not in (set(_ARRAYS), set(_CAPTURED)):
            raise ValueError(f"these {len(data)} bytes are not a Flatland episode record (arrays {sorted(given)}).")
        form = {"captured": arrays} if given == set(_CAPTURED) else {"arrays": arrays}
        return cls(initial_state=initial_state, n_agents=meta["n_agents"], steps=meta["steps"], ended=meta["ended"],
                   success_rate=meta["success_rate"], normalized_reward=meta["normalized_reward"], **form)

    def configuration(self, step: int, handle: int):
        """Train ``handle``'s ``((row, col), direction)`` after ``step`` (0: after the reset), None off the map."""
        if step == 0:
            return self._initial_configurations()[handle][0]
        row, col, direction = (int(v) for v in self.arrays["positions"][step - 1, handle])
        return None if row < 0 else ((row, col), direction)

    def old_configuration(self, step: int, handle: int):
        """Where train ``handle`` was before ``step`` (the RailEnv's ``old_configuration``)."""
        if step == 0:
            return self._initial_configurations()[handle][1]
        return self.configuration(step - 1, handle)

    def _initial_configurations(self):
        cached = getattr(self, "_initial", None)
        if cached is None:
            agents = pickle.loads(self.initial_state)["agents"]
            cached = self._initial = [(_configuration(a.position, a.direction), _configuration(a.old_position, a.old_direction))
                                      for a in agents]
        return cached


def _arrays_of(captured: dict[str, np.ndarray], steps: int, n: int) -> dict[str, np.ndarray]:
    """The arrays of an episode (``_ARRAYS``) from its captured form (``_CAPTURED``)."""
    from flatland.envs.rail_env import RailEnv
    from flatland.envs.step_utils.speed_counter import cached_cell_exit
    from flatland.envs.step_utils.states import TrainState

    from eval_recorder.flatland.scene import _FIELDS

    rows = captured["rows"].reshape(steps, n, _FIELDS)
    fractions = [Fraction(int(numerator), int(denominator)) for numerator, denominator in captured["fractions"].tolist()]
    states, speeds, distances = rows[..., 7], rows[..., 8], rows[..., 9]
    max_speeds = np.broadcast_to(captured["max_speed"].astype(np.int16), (steps, n))
    # RailEnv.get_info_dict's action_required: is_cell_exit at the train's max speed, for each
    # (state, max speed, distance) there is
    required = np.zeros((steps, n), dtype=bool)
    if steps and n:
        keys = np.stack([states, max_speeds, distances], axis=-1).reshape(-1, 3)
        combinations, inverse = np.unique(keys, axis=0, return_inverse=True)
        answers = np.array([bool(RailEnv.action_required(TrainState(int(state)), cached_cell_exit(
            fractions[top], fractions[top], fractions[distance]))) for state, top, distance in combinations.tolist()])
        required = answers[inverse.reshape(-1)].reshape(steps, n)
    table = np.array([(f.numerator, f.denominator) for f in fractions], dtype=np.int32).reshape(-1, 2)
    return {
        "actions": captured["actions"].astype(np.int8).reshape(steps, n),
        "positions": np.ascontiguousarray(rows[..., 0:3]).astype(np.int16),
        "rewards": captured["rewards"].astype(np.float64).reshape(steps, n),
        "dones": captured["dones"].astype(bool).reshape(steps, n),
        "action_required": required,
        "states": states.astype(np.int8),
        "malfunction": rows[..., 6].astype(np.int32),
        "speed": table[speeds] if len(table) else np.zeros((steps, n, 2), np.int32),
    }


def _configuration(position, direction):
    if position is None:
        return None
    return (tuple(int(v) for v in position), None if direction is None else int(direction))


# ---- flatland's layout, written atomically ---------------------------------------------------


def publish_trajectory(episode: FlatlandEpisode, folder: Path, name: str) -> Path | None:
    """Write ``episode`` as the flatland trajectory ``folder/name`` (episode id ``name``);
    None (nothing changed) if ``folder/name`` exists. The trajectory is built in a hidden
    temporary sibling folder, flushed to disk, then renamed into place."""
    folder = Path(folder)
    final = folder / name
    if final.exists() or final.is_symlink():
        return None
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".tmp"))
    try:
        _write_layout(episode, tmp, name)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)  # fails if `final` appeared meanwhile and holds anything
        except OSError as error:
            if final.exists():
                _log.debug("trajectory %s appeared meanwhile: %s", final, error)
                return None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder)
    return final


def _write_layout(episode: FlatlandEpisode, data_dir: Path, ep_id: str) -> None:
    """Write ``episode`` into the empty folder ``data_dir`` as flatland's ``Trajectory`` would:
    the same files, byte for byte, as ``Trajectory.load_existing(data_dir, ep_id)``, its
    ``action_collect`` / ``position_collect`` / ``rewards_dones_infos_collect`` per step and
    train (and ``arrived_collect`` once the episode ended), then ``persist()`` write (pandas'
    ``to_csv(sep='\\t', index=False)``), without its ``outputs/`` folder; built here as text, with
    no pandas and no ``Trajectory`` (about a tenth of the time). Every file and folder is fsynced."""
    layout = _layout()
    states_dir = data_dir / layout.states_subdir
    states_dir.mkdir()
    _write_synced(states_dir / f"{ep_id}.pkl", episode.initial_state)
    logs_dir = data_dir / layout.logs_subdir
    logs_dir.mkdir()
    for name, text in _event_logs(episode, ep_id, layout):
        _write_synced(data_dir / name, text.encode("utf-8"))  # as pandas' to_csv: UTF-8, lines end in "\n"
    fsync_dir(logs_dir)
    fsync_dir(states_dir)
    fsync_dir(data_dir)


# flatland's file names (flatland.trajectories.trajectories' SERIALISED_STATE_SUBDIR,
# DISCRETE_ACTION_FNAME, TRAINS_POSITIONS_FNAME, TRAINS_REWARDS_DONES_INFOS_FNAME,
# TRAINS_ARRIVED_FNAME; a test keeps them equal): importing that module would load pandas
# into the driver, about 0.35 s and 30 MB, to write the first record of a run.
STATES_SUBDIR = "serialised_state"
LOGS_SUBDIR = "event_logs"
ACTIONS_FILE = "event_logs/ActionEvents.discrete_action.tsv"
POSITIONS_FILE = "event_logs/TrainMovementEvents.trains_positions.tsv"
REWARDS_DONES_INFOS_FILE = "event_logs/TrainMovementEvents.trains_rewards_dones_infos.tsv"
ARRIVED_FILE = "event_logs/TrainMovementEvents.trains_arrived.tsv"


class _Layout:
    """flatland's file names, column headers and the values it writes for actions and states."""

    def __init__(self) -> None:
        from flatland.envs.rail_env_action import RailEnvActions
        from flatland.envs.step_utils.states import TrainState

        self.states_subdir, self.logs_subdir = STATES_SUBDIR, LOGS_SUBDIR
        self.actions, self.arrived = ACTIONS_FILE, ARRIVED_FILE
        self.positions, self.rewards_dones_infos = POSITIONS_FILE, REWARDS_DONES_INFOS_FILE
        # what Trajectory._write_actions writes for an action: RailEnvActions.from_value(a).value
        # (an int that is no action is DO_NOTHING)
        self.action_value = lambda value: RailEnvActions.from_value(value).value
        self.train_state = TrainState


@functools.cache
def _layout() -> _Layout:
    return _Layout()


# The columns of each file, in flatland's order (its collect dicts' keys).
_ACTIONS_HEADER = "episode_id\tenv_time\tagent_id\taction\n"
_POSITIONS_HEADER = "episode_id\tenv_time\tagent_id\tposition\n"
_REWARDS_DONES_INFOS_HEADER = "episode_id\tenv_time\tagent_id\treward\tinfo\tdone\n"
_ARRIVED_HEADER = "episode_id\tenv_time\tsuccess_rate\tnormalized_reward\n"


def _event_logs(episode: FlatlandEpisode, ep_id: str, layout: _Layout) -> list[tuple[str, str]]:
    """(file name, text) of the four TSVs, as pandas' ``to_csv`` writes flatland's DataFrames.

    pandas' formatting, column by column: int64 (env_time, agent_id, action) and bool (done)
    columns as Python's ``str``; float64 columns (reward, success_rate, normalized_reward) as
    numpy's ``astype(str)`` (the shortest repr: ``0.0``, ``-1.5``, ``1e-05``), NaN as an empty
    field; object columns (episode_id, position, info) as ``str`` of the value, None as an empty
    field; quoting by Python's csv writer (QUOTE_MINIMAL, ``"``): only a field with a tab, a
    ``"`` or a newline is quoted, and of ours only the episode id could hold one."""
    import operator

    arrays, steps, n = episode.arrays, episode.steps, episode.n_agents
    field = _csv_field(ep_id)
    # "<ep_id>\t<env_time>\t<agent_id>\t" for env_time 0..steps, train after train
    handles = [f"{handle}\t" for handle in range(n)]
    heads = [time_head + handle for time_head in [f"{field}\t{time}\t" for time in range(steps + 1)] for handle in handles]
    size = steps * n
    if size:
        actions = np.asarray(arrays["actions"]).reshape(size)
        positions = np.asarray(arrays["positions"]).reshape(size, 3)
        rewards = np.asarray(arrays["rewards"], dtype=np.float64).reshape(size)
        required, dones = np.asarray(arrays["action_required"]).reshape(size), np.asarray(arrays["dones"]).reshape(size)
        states, malfunction = np.asarray(arrays["states"]).reshape(size), np.asarray(arrays["malfunction"]).reshape(size)
        speed = np.asarray(arrays["speed"]).reshape(size, 2)

        def action_texts(rows):
            return [f"{layout.action_value(value)}\n" for value in actions[rows].tolist()]

        def position_texts(rows):  # as _write_layout always gave them: None off the map (row -1)
            return ["\n" if row < 0 else f"{((row, col), direction)}\n" for row, col, direction in positions[rows].tolist()]

        def rewards_dones_infos_texts(rows):
            reward = rewards[rows]
            reward_texts = reward.astype(str)
            reward_texts[np.isnan(reward)] = ""
            state_of, texts = layout.train_state, []
            for reward_text, needed, counter, pair, state, done in zip(
                    reward_texts.tolist(), required[rows].tolist(), malfunction[rows].tolist(), speed[rows].tolist(),
                    states[rows].tolist(), dones[rows].tolist()):
                # the info dict _write_layout always gave, written as str() of it
                info = {"action_required": needed, "malfunction": counter, "speed": Fraction(*pair),
                        "state": state_of(state)}
                texts.append(f"{reward_text}\t{info}\t{done}\n")
            return texts

        action_rows = _by_distinct([actions], action_texts)
        position_rows = _by_distinct([positions[:, 0], positions[:, 1], positions[:, 2]], position_texts)
        # a reward by its bits: np.unique would take -0.0 for 0.0 (and they are written differently)
        rewards_dones_infos_rows = _by_distinct(
            [rewards.view(np.int64), required, dones, states, malfunction, speed[:, 0], speed[:, 1]],
            rewards_dones_infos_texts)
    else:
        action_rows = position_rows = rewards_dones_infos_rows = []
    arrived = _ARRIVED_HEADER
    if episode.ended:
        arrived += f"{field}\t{steps - 1}\t{_float_text(episode.success_rate)}\t{_float_text(episode.normalized_reward)}\n"
    return [
        (layout.actions, _ACTIONS_HEADER + "".join(map(operator.add, heads[:size], action_rows))),
        (layout.positions, _POSITIONS_HEADER + "".join(map(operator.add, heads[n:], position_rows))),
        (layout.rewards_dones_infos,
         _REWARDS_DONES_INFOS_HEADER + "".join(map(operator.add, heads[n:], rewards_dones_infos_rows))),
        (layout.arrived, arrived),
    ]


def _by_distinct(columns: list[np.ndarray], texts_of) -> list[str]:
    """``texts_of(rows)`` worked out once per distinct combination of the integer (or bool)
    ``columns`` (equally long, one value per row): the text of every row, in row order.
    ``texts_of`` gets the index of the first row of each combination and gives their texts."""
    size = len(columns[0])
    key, count = np.zeros(size, dtype=np.int64), 1
    for column in columns:
        column = column.astype(np.int64, copy=False)
        low, high = int(column.min()), int(column.max())
        if high - low < 1 << 20:
            span, column = high - low + 1, column - low
        else:
            values, column = np.unique(column, return_inverse=True)
            span = len(values)
        if count * span >= 1 << 62:  # number the combinations so far 0..k-1 (k <= size)
            _, key = np.unique(key, return_inverse=True)
            count = int(key.max()) + 1
        key = key * span + column
        count *= span
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return np.array(texts_of(first), dtype=object)[inverse.reshape(size)].tolist()


def _float_text(value) -> str:
    """A value of a float64 column as pandas writes it (None and NaN: an empty field)."""
    if value is None:
        return ""
    number = np.array([value], dtype=np.float64)
    return "" if np.isnan(number[0]) else str(number.astype(str)[0])


def _csv_field(text: str) -> str:
    """``text`` as a field of Python's csv writer with pandas' ``to_csv(sep='\\t')`` settings
    (quoted, its ``"`` doubled, if it holds a tab, a ``"`` or a newline)."""
    import csv
    import io

    out = io.StringIO()
    csv.writer(out, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerow([text, ""])
    return out.getvalue()[:-2]  # without the second (empty) field's "\t" and the "\n"


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:  # a new file, as pandas and Path.write_bytes make it (0o666 & ~umask)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


# ---- drawing from the record ----------------------------------------------------------------


def rail_env_at(episode: FlatlandEpisode):
    """A RailEnv in the episode's initial state (rails, trains, stations), not stepped."""
    from flatland.envs.persistence import RailEnvPersister

    with tempfile.TemporaryDirectory() as scratch:  # RailEnvPersister.load_new reads a file
        path = Path(scratch) / "initial.pkl"
        path.write_bytes(episode.initial_state)
        env, _ = RailEnvPersister.load_new(str(path))
    return env


def check_replay(episode: FlatlandEpisode):
    """Replay ``episode`` from its initial state with its actions; the RailEnv at its end.
    Raises ``ReplayDiverged`` naming the first step and train that differs from the record."""
    from eval_recorder.episode_record import diverged

    env = rail_env_at(episode)
    arrays = episode.arrays
    actions = arrays["actions"].tolist()
    for step in range(1, episode.steps + 1):
        row = step - 1
        _, rewards, dones, _ = env.step(dict(enumerate(actions[row])))
        for handle, agent in enumerate(env.agents):
            checks = (
                ("position", _shown(agent.current_configuration), _shown(episode.configuration(step, handle))),
                ("reward", float(rewards[handle]), float(arrays["rewards"][row, handle])),
                ("done", bool(dones[handle]), bool(arrays["dones"][row, handle])),
                ("state", agent.state.name, _state_name(arrays["states"][row, handle])),
                ("malfunction counter", int(agent.malfunction_handler.malfunction_down_counter),
                 int(arrays["malfunction"][row, handle])),
            )
            for name, replayed, recorded in checks:
                if replayed != recorded:
                    raise diverged(step, f"train {handle}", name, replayed, recorded, agent=handle,
                                   what="the RailEnv does not repeat this episode from its initial state and the recorded actions")
    return env


def _shown(configuration):
    return "off the map" if configuration is None or configuration[0] is None else \
        f"{tuple(int(v) for v in configuration[0])} heading {int(configuration[1])}"


def _state_name(value) -> str:
    from flatland.envs.step_utils.states import TrainState

    return TrainState(int(value)).name


def pose(rail_env, episode: FlatlandEpisode, step: int) -> None:
    """Put ``rail_env``'s trains (``rail_env_at(episode)``) where they were after ``step``
    (0: after the reset): cell, direction, previous cell, malfunction counter and state."""
    from flatland.envs.step_utils.states import TrainState

    for handle, agent in enumerate(rail_env.agents):
        agent.current_configuration = episode.configuration(step, handle)
        agent.old_configuration = episode.old_configuration(step, handle)
        if step > 0:
            agent.malfunction_handler._malfunction_down_counter = int(episode.arrays["malfunction"][step - 1, handle])
            agent.state_machine.set_state(TrainState(int(episode.arrays["states"][step - 1, handle])))
