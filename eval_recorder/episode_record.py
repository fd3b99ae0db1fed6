"""The replay record of one episode of any env: what it takes to run the episode again.

``EpisodeCapture`` is filled on the eval runner's stepping thread: made at the reset with
the episode's seed and reset options, then ``step()`` (a gymnasium env) or ``step_multi()``
(an RLlib ``MultiAgentEnv``: dicts keyed by agent id) after every step, with the action(s)
given and the reward(s) and terminated/truncated flags returned. It only appends references
(and copies of dicts and array actions, which callers may reuse), so the stepping thread pays
next to nothing; ``finish()`` packs them into an ``EpisodeRecord`` once the episode is over.

``EpisodeRecord.to_bytes()`` / ``from_bytes()`` is the record on disk and through Ray. The
format is a compressed ``.npz`` (numpy's zip of ``.npy`` arrays, ``np.savez_compressed``),
chosen over JSON lines because actions keep their exact dtype and shape (a float32 Box action
replays as the same float32 array, which a JSON float does not promise), rewards stay exact
float64, the per-step columns compress to a few bytes per step (the same values repeat), and
any numpy can read it (``np.load(path)``) without eval_recorder. Its entries:

* ``meta``: UTF-8 JSON as uint8: ``format`` ("eval_recorder.episode_record"), ``version`` (1),
  ``multi_agent``, ``seed``, ``options`` (the reset options), ``steps``, ``agents`` (the agent
  ids, ints or strings, in the order they first appeared; multi-agent only),
  ``actions_pickled``.
* gymnasium env, one row per step: ``actions`` (steps, *action shape) in the actions' own
  dtype, ``rewards`` float64, ``terminated`` and ``truncated`` bool.
* multi-agent env, one row per agent action and one per agent outcome: ``action_step``,
  ``action_agent`` (index into ``agents``), ``actions``; ``outcome_step``, ``outcome_agent``,
  ``rewards`` float64 and ``flags`` uint8 (bit 0: a reward was returned, 1: a terminated flag
  was returned, 2: its value, 3: a truncated flag was returned, 4: its value), one row per
  agent that any of the three dicts named; ``all_terminated`` and ``all_truncated`` per step
  (the ``"__all__"`` entries). Steps count from 1 (the first ``step()`` after the reset).
* Actions that are not one numpy array (Dict or Tuple spaces) are kept as a pickle of their
  list in ``actions`` (uint8) with ``actions_pickled`` true; everything else loads with
  ``allow_pickle=False``.

``replay(env_factory, record)`` makes a new env, resets it with the record's seed and options,
steps it with the recorded actions and compares every step's rewards and flags with the
record; the first difference raises ``ReplayDiverged`` naming the step and the agent.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

import numpy as np

from eval_recorder.errors import ReplayDiverged

__all__ = ["EpisodeCapture", "EpisodeRecord", "diverged", "npz_bytes", "npz_read", "replay"]

FORMAT = "eval_recorder.episode_record"
VERSION = 1
_ALL = "__all__"

# outcome flags of a multi-agent row
_HAS_REWARD, _HAS_TERMINATED, _TERMINATED, _HAS_TRUNCATED, _TRUNCATED = 1, 2, 4, 8, 16


class EpisodeCapture:
    """One episode's actions and outcomes, appended as it runs (see the module docstring).

    ``seed`` must be the int the env was reset with: an episode reset without a seed
    cannot be run again. ``options``: the reset options (JSON values), None for none.
    """

    def __init__(self, *, seed: int, options: Mapping[str, Any] | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"an episode's replay record needs the int seed its env was reset with, got {seed!r}; "
                             "reset each recorded episode with a seed.")
        try:
            self._options = None if options is None else json.loads(json.dumps(dict(options)))
        except (TypeError, ValueError) as error:
            raise ValueError(f"the reset options {options!r} cannot be kept in a replay record ({error}); "
                             "give reset options of JSON values (numbers, strings, lists, dicts).") from None
        self._seed = int(seed)
        self._actions: list = []
        self._rewards: list = []
        self._terminated: list = []
        self._truncated: list = []
        self._multi: bool | None = None

    def step(self, action: Any, reward: float, terminated: bool, truncated: bool) -> None:
        """After a gymnasium env's ``step(action)``, with what it returned."""
        if self._multi is None:
            self._multi = False
        self._actions.append(action.copy() if isinstance(action, np.ndarray) else action)
        self._rewards.append(reward)
        self._terminated.append(terminated)
        self._truncated.append(truncated)

    def step_multi(self, actions: Mapping, rewards: Mapping, terminateds: Mapping, truncateds: Mapping) -> None:
        """After a MultiAgentEnv's ``step(actions)``, with the dicts it returned."""
        if self._multi is None:
            self._multi = True
        self._actions.append({agent: (a.copy() if isinstance(a, np.ndarray) else a) for agent, a in actions.items()})
        self._rewards.append(dict(rewards))
        self._terminated.append(dict(terminateds))
        self._truncated.append(dict(truncateds))

    @property
    def steps(self) -> int:
        return len(self._actions)

    def finish(self) -> "EpisodeRecord":
        """The record of the episode captured so far."""
        if self._multi:
            return _pack_multi(self._seed, self._options, self._actions, self._rewards, self._terminated, self._truncated)
        return EpisodeRecord(
            seed=self._seed, options=self._options, multi_agent=False, steps=len(self._actions),
            arrays={
                "actions": _actions_array(self._actions),
                "rewards": np.asarray(self._rewards, dtype=np.float64).reshape(-1),
                "terminated": np.asarray(self._terminated, dtype=bool).reshape(-1),
                "truncated": np.asarray(self._truncated, dtype=bool).reshape(-1),
            },
        )


@dataclass
class EpisodeRecord:
    """A finished episode's replay record (see the module docstring for the arrays)."""

    seed: int
    options: dict | None
    multi_agent: bool
    steps: int
    arrays: dict[str, np.ndarray]
    agents: list = field(default_factory=list)

    def to_bytes(self) -> bytes:
        actions = self.arrays["actions"]
        meta = {
            "format": FORMAT, "version": VERSION, "multi_agent": self.multi_agent, "seed": self.seed,
            "options": self.options, "steps": self.steps, "agents": list(self.agents),
            "actions_pickled": isinstance(actions, list),
        }
        arrays = dict(self.arrays)
        if isinstance(actions, list):
            arrays["actions"] = np.frombuffer(pickle.dumps(actions, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
        return npz_bytes(meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> "EpisodeRecord":
        meta, arrays = npz_read(data, format=FORMAT, version=VERSION, what="an episode replay record")
        if meta["actions_pickled"]:
            arrays["actions"] = pickle.loads(arrays["actions"].tobytes())
        return cls(seed=meta["seed"], options=meta["options"], multi_agent=meta["multi_agent"], steps=meta["steps"],
                   arrays=arrays, agents=meta["agents"])

    def actions_at(self, step: int):
        """The action (gymnasium env) or the dict of actions (multi-agent) given at ``step`` (from 1)."""
        if not self.multi_agent:
            return self.arrays["actions"][step - 1]
        return {self.agents[int(index)]: action for index, action in self._rows("action", step)}

    def outcomes_at(self, step: int) -> tuple[dict, dict, dict]:
        """Multi-agent: the rewards, terminateds and truncateds dicts returned at ``step`` (with
        the ``"__all__"`` entries)."""
        rewards, terminateds, truncateds = {}, {}, {}
        steps = self.arrays["outcome_step"]
        start, stop = np.searchsorted(steps, step, "left"), np.searchsorted(steps, step, "right")
        for row in range(start, stop):
            agent, flags = self.agents[int(self.arrays["outcome_agent"][row])], int(self.arrays["flags"][row])
            if flags & _HAS_REWARD:
                rewards[agent] = float(self.arrays["rewards"][row])
            if flags & _HAS_TERMINATED:
                terminateds[agent] = bool(flags & _TERMINATED)
            if flags & _HAS_TRUNCATED:
                truncateds[agent] = bool(flags & _TRUNCATED)
        terminateds[_ALL] = bool(self.arrays["all_terminated"][step - 1])
        truncateds[_ALL] = bool(self.arrays["all_truncated"][step - 1])
        return rewards, terminateds, truncateds

    def _rows(self, prefix: str, step: int):
        steps = self.arrays[f"{prefix}_step"]
        start, stop = np.searchsorted(steps, step, "left"), np.searchsorted(steps, step, "right")
        actions = self.arrays["actions"]
        agents = self.arrays[f"{prefix}_agent"]
        return [(agents[row], actions[row]) for row in range(start, stop)]


def npz_bytes(meta: dict, arrays: Mapping[str, np.ndarray]) -> bytes:
    """A record's bytes: its ``meta`` (JSON, with its ``format`` and ``version``) and its
    arrays in one compressed ``.npz``, readable with numpy alone (``npz_read``)."""
    buffer = io.BytesIO()
    # np.savez_compressed's layout (one .npy per array in a zip), at zlib's fastest level: it is
    # packed on the eval runner's stepping thread, and level 1 keeps most of the saving.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays}.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_read(data: bytes, *, format: str, version: int, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of bytes ``npz_bytes`` made of a record of ``format`` ``version``
    (nothing is unpickled); ValueError naming ``what`` they should have been otherwise."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (ValueError, OSError, KeyError, UnicodeDecodeError) as error:
        raise ValueError(f"these {len(data)} bytes are not {what} ({error}).") from None
    if meta.get("format") != format or meta.get("version") != version:
        raise ValueError(f"these bytes hold {meta.get('format')!r} version {meta.get('version')!r}, "
                         f"not {format} version {version}; read them with the eval_recorder that wrote them.")
    return meta, arrays


def replay(env_factory: Callable[[], Any], record: EpisodeRecord) -> Any:
    """Run ``record``'s episode again in ``env_factory()`` and check every step's rewards and
    terminated/truncated flags against the record; the env at the episode's end is returned
    (not closed). Raises ``ReplayDiverged`` at the first step (and agent) that differs."""
    env = env_factory()
    env.reset(seed=record.seed, options=record.options)
    for step in range(1, record.steps + 1):
        action = record.actions_at(step)
        if record.multi_agent:
            _, rewards, terminateds, truncateds, _ = env.step(action)
            _check_multi(step, record, rewards, terminateds, truncateds)
        else:
            _, reward, terminated, truncated, _ = env.step(action)
            arrays = record.arrays
            _check(step, None, "reward", _number(reward), float(arrays["rewards"][step - 1]))
            _check(step, None, "terminated", bool(terminated), bool(arrays["terminated"][step - 1]))
            _check(step, None, "truncated", bool(truncated), bool(arrays["truncated"][step - 1]))
    return env


# ---- packing --------------------------------------------------------------------------------


def _actions_array(actions: list):
    """One numpy array of the actions if they have one dtype and shape, else the list itself."""
    if not actions:
        return np.zeros((0,), dtype=np.int64)
    try:
        array = np.asarray(actions)
    except (ValueError, TypeError):
        return list(actions)
    if array.dtype == object or array.shape[:1] != (len(actions),):
        return list(actions)
    return array


def _pack_multi(seed, options, actions, rewards, terminated, truncated) -> EpisodeRecord:
    agents: list = []
    index: dict[Hashable, int] = {}

    def agent_index(agent) -> int:
        found = index.get(agent)
        if found is None:
            if isinstance(agent, bool) or not isinstance(agent, (int, str, np.integer)):
                raise ValueError(f"agent id {agent!r} cannot be kept in a replay record; use int or str agent ids.")
            found = index[agent] = len(agents)
            agents.append(int(agent) if isinstance(agent, np.integer) else agent)
        return found

    action_step, action_agent, action_values = [], [], []
    outcome_step, outcome_agent, reward_values, flags = [], [], [], []
    all_terminated, all_truncated = [], []
    for step, (acts, rews, terms, truncs) in enumerate(zip(actions, rewards, terminated, truncated), start=1):
        for agent, action in acts.items():
            action_step.append(step)
            action_agent.append(agent_index(agent))
            action_values.append(action)
        named = dict.fromkeys(key for mapping in (rews, terms, truncs) for key in mapping if key != _ALL)
        for agent in named:
            flag = 0
            if agent in rews:
                flag |= _HAS_REWARD
            if agent in terms:
                flag |= _HAS_TERMINATED | (_TERMINATED if terms[agent] else 0)
            if agent in truncs:
                flag |= _HAS_TRUNCATED | (_TRUNCATED if truncs[agent] else 0)
            outcome_step.append(step)
            outcome_agent.append(agent_index(agent))
            reward_values.append(_number(rews.get(agent, 0.0)))
            flags.append(flag)
        all_terminated.append(bool(terms.get(_ALL, False)))
        all_truncated.append(bool(truncs.get(_ALL, False)))
    small = np.int16 if len(agents) < 2**15 else np.int32
    return EpisodeRecord(
        seed=seed, options=options, multi_agent=True, steps=len(actions), agents=agents,
        arrays={
            "action_step": np.asarray(action_step, dtype=np.int32),
            "action_agent": np.asarray(action_agent, dtype=small),
            "actions": _actions_array(action_values),
            "outcome_step": np.asarray(outcome_step, dtype=np.int32),
            "outcome_agent": np.asarray(outcome_agent, dtype=small),
            "rewards": np.asarray(reward_values, dtype=np.float64),
            "flags": np.asarray(flags, dtype=np.uint8),
            "all_terminated": np.asarray(all_terminated, dtype=bool),
            "all_truncated": np.asarray(all_truncated, dtype=bool),
        },
    )


# ---- checking -------------------------------------------------------------------------------


def _number(value) -> float:
    return float(np.asarray(value).reshape(()))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _check(step: int, agent, name: str, replayed, recorded) -> None:
    if _same(replayed, recorded):
        return
    raise diverged(step, None if agent is None else f"agent {agent}", name, replayed, recorded, agent=agent)


def diverged(step: int, who: str | None, name: str, replayed, recorded, *, agent=None,
             what: str = "the env does not repeat this episode from its seed and the recorded actions") -> ReplayDiverged:
    """The ReplayDiverged of ``who``'s (None: the episode's) ``name`` at ``step``:
    "step 17: agent 3's reward is -1.0 in the replay, -0.5 in the record; ...". """
    whose = f"the {name}" if who is None else f"{who}'s {name}"
    shown = [value if isinstance(value, str) else "absent" if value is None else repr(value) for value in (replayed, recorded)]
    return ReplayDiverged(
        f"step {step}: {whose} is {shown[0]} in the replay, {shown[1]} in the record; "
        f"{what}, so it cannot be replayed or rendered from this record.",
        step=step, agent=agent, field=name, replayed=replayed, recorded=recorded,
    )


def _check_multi(step: int, record: EpisodeRecord, rewards: Mapping, terminateds: Mapping, truncateds: Mapping) -> None:
    want_rewards, want_terminateds, want_truncateds = record.outcomes_at(step)
    agents = list(dict.fromkeys([*record.agents, *(k for m in (rewards, terminateds, truncateds) for k in m if k != _ALL)]))
    for agent in agents:
        for name, got, want in (("reward", rewards, want_rewards), ("terminated", terminateds, want_terminateds),
                                ("truncated", truncateds, want_truncateds)):
            replayed = got.get(agent)
            if replayed is not None:
                replayed = _number(replayed) if name == "reward" else bool(replayed)
            _check(step, agent, name, replayed, want.get(agent))
    _check(step, None, "terminated (__all__)", bool(terminateds.get(_ALL, False)), want_terminateds[_ALL])
    _check(step, None, "truncated (__all__)", bool(truncateds.get(_ALL, False)), want_truncateds[_ALL])
