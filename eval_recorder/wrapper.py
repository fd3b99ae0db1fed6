"""The recording wrappers: put one around an env and every episode it plays becomes an mp4.

Holds:
  RecordEpisodes            a ``gymnasium.Wrapper`` for single-agent envs.
  RecordMultiAgentEpisodes  the same for RLlib ``MultiAgentEnv``s (flatland-rl's
                            ``RayMultiAgentWrapper`` among them).
  record_episodes()         wraps an env in the one of the two that fits it.
  recording_wrapper()       the recording wrapper inside an env's wrapper chain, if any.
  RunnerRound / set_runner_round() / runner_round()   what the driver tells the eval
                            runner process before each evaluation round: the round, the
                            training iteration of its weights (for the labels), the
                            saved scenarios to play.

Shaped like gymnasium's ``RecordVideo``: the wrapper owns the episode — a recording
starts at ``reset`` with the reset frame, every ``frame_every``-th ``step`` adds a frame,
the step that ends the episode (terminated or truncated; ``__all__`` for multi-agent envs)
finishes the video — and asks its frame source (``eval_recorder.frames``) for pictures:
Flatland's fast renderer where it recognises a ``RailEnv``, else the env's own
``render()``. Finished episodes wait in ``pop_finished()`` (the RLlib callback stamps the
weights version on them and sends them to the driver).

Every reset gets a concrete seed, kept with the video so the episode can be replayed:
the seed the caller passes, else the next one drawn from a generator seeded by the last
seed passed (or ``seed``). The same first seed therefore gives the same episodes.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from eval_recorder.frames import FrameSource, NoFrames, find_frame_source
from eval_recorder.naming import env_label
from eval_recorder.overlay import label_text
from eval_recorder.recorder import EpisodeRecorder, RecordedEpisode

__all__ = [
    "RecordEpisodes",
    "RecordMultiAgentEpisodes",
    "RunnerRound",
    "record_episodes",
    "recording_wrapper",
    "runner_round",
    "set_runner_round",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 800
"""Default cap on the longest frame side, in pixels."""


@dataclass
class RunnerRound:
    """What the driver told this (eval runner) process about the current evaluation round."""

    evaluation_round: int | None = None
    label_iteration: int | None = None  # training iteration of the weights this runner acts with
    scenarios: list[tuple[str, bytes]] = field(default_factory=list)  # saved scenarios (name, file bytes) to play, in turn
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def next_scenario(self) -> tuple[str, bytes] | None:
        """The next scenario to play in this round (cycling), None without scenarios."""
        with self._lock:
            if not self.scenarios:
                return None
            index = self.scenarios[self._next % len(self.scenarios)]
            self._next += 1
            return index


_ROUND = RunnerRound()
_ENVS_MADE = itertools.count()  # recording envs made in this process: runners may hold several


def runner_round() -> RunnerRound:
    return _ROUND


def set_runner_round(
    evaluation_round: int | None, label_iteration: int | None, scenarios: list[tuple[str, bytes]] = ()
) -> None:
    """Start a new round on this process (runs on eval runners, via Ray)."""
    global _ROUND
    _ROUND = RunnerRound(evaluation_round=evaluation_round, label_iteration=label_iteration, scenarios=list(scenarios))


class _Recording:
    """The episode bookkeeping both wrappers share: seeds, steps, returns, the recorder."""

    def __init__(
        self,
        env,
        *,
        fps: int,
        max_side: int,
        frame_every: int,
        overlay: bool,
        label: str | None,
        runner_index: int,
        seed: int | None,
        source: FrameSource | None,
        multi_agent: bool,
    ) -> None:
        self.env = env
        self.multi_agent = multi_agent
        self.source = source or find_frame_source(env, max_side=max_side, label=label or _default_label(env))
        self.label = self.source.label
        self.recorder = EpisodeRecorder(
            self.source, fps=fps, runner_index=runner_index, frame_every=frame_every,
            label=self._label_text if overlay else None, runner_env=next(_ENVS_MADE),
        )
        self._seeds = np.random.default_rng(seed)
        self._seed: int | None = None
        self._scenario: str | None = None
        self.steps = 0
        self.returns: dict[Any, float] = {}
        self.finished: list[RecordedEpisode] = []
        self.problem: str | None = None  # why this env records nothing (its frames failed)

    def _label_text(self) -> str:
        extra = self.source.label_extra()
        if extra is None:
            extra = f"return {sum(self.returns.values()):.1f}"
        return label_text(training_iteration=runner_round().label_iteration, step=self.steps, extra=extra)

    def plan_reset(self, seed: int | None, options: dict | None) -> tuple[int, dict | None]:
        """The concrete seed (and reset options) of the next episode."""
        if seed is not None:
            self._seeds = np.random.default_rng(seed)
        else:
            seed = int(self._seeds.integers(2**31 - 1))
        self._seed = seed
        self._scenario = None
        scenario = runner_round().next_scenario()
        if scenario is not None:
            options = {**(options or {}), **self.load_scenario(*scenario)}
            self._scenario = scenario[0]
        return seed, options

    def load_scenario(self, name: str, data: bytes) -> dict:
        """Load the saved scenario ``data`` (file ``name``) into the env; the reset options that keep it."""
        if not hasattr(self.source, "load_scenario"):
            raise ValueError(f"saved scenarios can be played only in Flatland envs, not in {type(self.env).__name__}")
        return self.source.load_scenario(name, data)

    def reset_done(self) -> None:
        self.steps = 0
        self.returns = {}
        if self.problem is not None:
            return
        try:
            self.recorder.start(env_seed=self._seed)
        except NoFrames as error:
            self._give_up(error)

    def step_done(self, rewards: dict, done: bool) -> None:
        self.steps += 1
        for agent, reward in rewards.items():
            self.returns[agent] = self.returns.get(agent, 0.0) + float(reward)
        if not self.recorder.recording:
            return
        try:
            self.recorder.capture()
            if done:
                self._finish()
        except NoFrames as error:
            self._give_up(error)

    def _finish(self) -> None:
        multi_agent = self.multi_agent
        episode = self.recorder.finish(
            env_label=self.label,
            episode_length=self.steps,
            episode_return=sum(self.returns.values()),
            agent_returns={str(agent): value for agent, value in self.returns.items()} if multi_agent else None,
        )
        if self._scenario is not None:
            episode = _with_facts(episode, scenario=self._scenario)
        if multi_agent and "num_agents" not in episode.facts:
            episode = _with_facts(episode, num_agents=len(self.returns))
        self.finished.append(episode)

    def _give_up(self, error: NoFrames) -> None:
        self.recorder.discard()
        self.problem = str(error)
        logger.error("%s", error)

    def close(self) -> None:
        self.recorder.discard()
        self.source.close()


def _with_facts(episode: RecordedEpisode, **facts) -> RecordedEpisode:
    import dataclasses

    return dataclasses.replace(episode, facts={**episode.facts, **facts})


def _default_label(env) -> str:
    spec = getattr(env, "spec", None)
    name = getattr(spec, "id", None) or type(getattr(env, "unwrapped", env)).__name__
    return env_label(name)


class _RecordsEpisodes:
    """What both wrappers share: their options, reset, and the finished episodes."""

    multi_agent = False

    def __init__(
        self,
        env,
        *,
        fps: int = 10,
        max_side: int = DEFAULT_MAX_SIDE,
        frame_every: int = 1,
        overlay: bool = True,
        label: str | None = None,
        runner_index: int = 0,
        seed: int | None = None,
        source: FrameSource | None = None,
    ) -> None:
        self._wrap(env)
        self.recording = _Recording(
            env, fps=fps, max_side=max_side, frame_every=frame_every, overlay=overlay, label=label,
            runner_index=runner_index, seed=seed, source=source, multi_agent=self.multi_agent,
        )

    def _wrap(self, env) -> None:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        seed, options = self.recording.plan_reset(seed, options)
        result = self.env.reset(seed=seed, options=options)
        self.recording.reset_done()
        return result

    def pop_finished(self) -> list[RecordedEpisode]:
        """Hand over (and forget) the episodes finished so far."""
        finished, self.recording.finished = self.recording.finished, []
        return finished


class RecordEpisodes(_RecordsEpisodes, gym.Wrapper):
    """Records every episode of a single-agent gymnasium ``env`` into an mp4.

    ``fps``: frames per second of the videos; ``max_side``: longest frame side (larger
    frames are scaled down; 0 = no cap); ``frame_every``: record every k-th step (plus the
    reset frame and the last step); ``overlay``: burn a label (training iteration, step,
    return) into the frames; ``label``: the env label that starts file names when the
    frame source has none of its own (Flatland's is ``flatland``; default: from the env's
    id or class); ``runner_index``: the env runner it records on (kept in the metadata);
    ``seed``: first seed when the caller gives none; ``source``: a FrameSource to use
    instead of the one found for the env.
    """

    def _wrap(self, env) -> None:
        gym.Wrapper.__init__(self, env)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.recording.step_done({None: reward}, done=bool(terminated or truncated))
        return observation, reward, terminated, truncated, info

    def close(self) -> None:
        self.recording.close()
        super().close()


class RecordMultiAgentEpisodes(_RecordsEpisodes, MultiAgentEnv):
    """Records every episode of an RLlib ``MultiAgentEnv`` into an mp4 (options as for
    RecordEpisodes). Everything else (spaces, agents, ``wrap()`` ...) is the env's own."""

    multi_agent = True

    def _wrap(self, env) -> None:
        # MultiAgentEnv.__init__ is not called: agents and spaces are the wrapped env's.
        self.env = env

    def step(self, action_dict):
        observations, rewards, terminateds, truncateds, infos = self.env.step(action_dict)
        done = bool(terminateds.get("__all__", False) or truncateds.get("__all__", False))
        self.recording.step_done(rewards, done=done)
        return observations, rewards, terminateds, truncateds, infos

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self.recording.close()
        self.env.close()

    # -- the wrapped env's agents and spaces (RLlib reads them from `unwrapped`, i.e. here) --

    def get_observation_space(self, agent_id):
        return self.env.get_observation_space(agent_id)

    def get_action_space(self, agent_id):
        return self.env.get_action_space(agent_id)

    def get_agent_ids(self):
        return self.env.get_agent_ids()

    def __getattr__(self, name: str):
        if name in ("env", "recording") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.env, name)


def _delegated(name: str) -> property:
    return property(lambda self: getattr(self.env, name), lambda self, value: setattr(self.env, name, value))


for _name in ("observation_space", "action_space", "observation_spaces", "action_spaces", "agents",
              "possible_agents", "render_mode", "metadata", "spec"):
    setattr(RecordMultiAgentEpisodes, _name, _delegated(_name))


def record_episodes(env, **options) -> RecordEpisodes | RecordMultiAgentEpisodes:
    """``env`` wrapped in the recording wrapper that fits it (options as for RecordEpisodes)."""
    if isinstance(env, MultiAgentEnv):
        return RecordMultiAgentEpisodes(env, **options)
    if isinstance(env, gym.Env):
        return RecordEpisodes(env, **options)
    raise TypeError(f"recording needs a gymnasium Env or an RLlib MultiAgentEnv, got {type(env).__name__}")


def recording_wrapper(env) -> RecordEpisodes | RecordMultiAgentEpisodes | None:
    """The recording wrapper in ``env``'s chain of wrappers (gymnasium's ``.env``), if any."""
    seen = set()
    while env is not None and id(env) not in seen:
        if isinstance(env, (RecordEpisodes, RecordMultiAgentEpisodes)):
            return env
        seen.add(id(env))
        env = env.__dict__.get("env") if hasattr(env, "__dict__") else None
    return None
