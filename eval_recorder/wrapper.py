"""The recording wrappers: put one around an env and every episode it plays becomes an mp4.

Shaped like gymnasium's ``RecordVideo``: the wrapper owns the episode — a recording
starts at ``reset`` with the reset frame, every ``frame_every``-th ``step`` adds a frame,
the step that ends the episode (terminated or truncated; ``__all__`` for multi-agent envs)
finishes the video — and asks its frame source (``eval_recorder.frames``) for pictures:
a plug-in's (Flatland's fast renderer) where one recognises the env, else the env's own
``render()``. Finished episodes wait in ``pop_finished()`` (on an eval runner,
``eval_recorder.eval_runner`` stamps the weights version on them and sends them to the driver).

Two kinds of failure, kept apart: ``probe()`` (before anything is claimed) checks the
scratch folder and the env's frames and returns why the env cannot record, which refuses
the run; once running, a failure while an episode is recorded (its frames, the encoder or
its helper process, the scratch folder) drops that episode's video only, the env steps on
as if nothing happened, the next episode records again, and ``pop_dropped()`` says which
episode's video was dropped and why (the eval runner sends it to the driver, which warns);
the episode itself, with its replay record, is still handed over, without a video.

Every reset gets a concrete seed, kept with the video so the episode can be replayed:
the seed the caller passes, else the next one drawn from a generator seeded by the last
seed passed (or ``seed``). The same first seed therefore gives the same episodes.
Each episode's replay record is captured as it runs (the frame source's own capture, e.g.
Flatland's trajectory, else ``episode_record.EpisodeCapture`` with that seed and the reset
options: a few appends per step) and travels with the finished episode
(``RecordedEpisode.record``); a capture that fails costs the record only, never the video.

With a narrower ``recording.select`` (the round's, or ``select=``) and a frame source drawn
beside the env (Flatland), nothing is drawn while an episode plays: its frames' states are
kept, and when it ends, only if the rules may choose it (``selection.may_be_chosen``, from the
episodes played before it in the round on this runner) does the encoder helper draw it, while
the env plays on; the others go to the driver with their replay record and no video. Their
order is kept: ``pop_finished(wait=False)`` hands over the episodes up to the first whose
video is still being drawn, ``pop_finished()`` waits for them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import operator
import os
import socket
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from eval_recorder.encoding import start_encoder_process
from eval_recorder.episode_record import EpisodeCapture
from eval_recorder.errors import EncoderFailed, RecordingError
from eval_recorder.frames import DEFAULT_MAX_SIDE, FrameSource, env_name, find_frame_source
from eval_recorder.naming import env_label
from eval_recorder.overlay import label_text
from eval_recorder.recorder import DroppedEpisode, PendingVideo, RecordedEpisode, VideoRecorder
from eval_recorder.runner_round import this_process
from eval_recorder.scratch import check_scratch
from eval_recorder.selection import ALL, EpisodeFacts, may_be_chosen, parse_select

__all__ = ["RecordEpisodes", "RecordMultiAgentEpisodes", "record_episodes", "recording_wrapper"]

logger = logging.getLogger(__name__)

_ENVS_MADE = itertools.count()  # recording envs made in this process: runners may hold several


class _Returns:
    """Each agent's return so far: its rewards added one step after the other, as a loop over
    every step's rewards adds them (the same floats), but a step whose agents are the previous
    step's, in the same order (the usual case), is added in one pass of C (``map``), not in a
    Python loop over its agents."""

    def __init__(self) -> None:
        self._totals: dict[Any, float] = {}  # in the order the agents first got a reward
        self._agents: tuple = ()  # the agents of the last step, in its rewards' order
        self._sums: list[float] = []  # their returns, up to the last step

    def add(self, rewards: dict) -> None:
        """Add one step's ``rewards`` (agent: reward)."""
        agents = tuple(rewards)
        if agents != self._agents:
            totals = self.totals()
            self._agents, self._sums = agents, [totals.get(agent, 0.0) for agent in agents]
        self._sums = list(map(operator.add, self._sums, map(float, rewards.values())))

    def totals(self) -> dict[Any, float]:
        """Every agent's return so far (agent: return)."""
        self._totals.update(zip(self._agents, self._sums))
        return self._totals


class _RecordingWrapper:
    """What both wrappers share: their options, the episode's bookkeeping (seed, steps,
    returns, scenario), its video, and the finished episodes."""

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
        select: str | None = None,
    ) -> None:
        self._wrap(env)
        self._select = None if select is None else parse_select(select)  # else the round's
        self.frame_source = source or find_frame_source(env, max_side=max_side, label=label or env_label(env_name(env)))
        self.label = self.frame_source.label
        self._video = VideoRecorder(
            self.frame_source, fps=fps, runner_index=runner_index, frame_every=frame_every,
            label=self._label_text if overlay else None, runner_env=next(_ENVS_MADE),
        )
        self._seeds = np.random.default_rng(seed)
        self._seed: int | None = None
        self._scenario: str | None = None
        self._steps = 0
        self._returns = _Returns()
        self._capture = None  # the episode's replay record, as it runs
        self._record: tuple[bytes, str] | None = None  # the finished episode's (record, kind)
        self._finished: list[tuple[RecordedEpisode, PendingVideo | None]] = []  # with its video still drawn, if so
        self._dropped: list[DroppedEpisode] = []
        self.problem: str | None = None
        """Why this env cannot record, as ``probe()`` found (it then records nothing), else None."""

    def _wrap(self, env) -> None:
        raise NotImplementedError

    # ---- the public surface ---------------------------------------------------------

    @property
    def recording(self) -> bool:
        """True while an episode's video is being recorded."""
        return self._video.recording

    def discard(self) -> None:
        """Drop the video of the episode in progress (nothing of it is kept)."""
        self._video.discard()

    def probe(self, *, seed: int | None = None, scenario: tuple[str, bytes] | None = None) -> str | None:
        """Check that this env can record, before anything is claimed: the scratch folder
        takes a file and gives it back, then one reset (into the saved ``scenario`` (name,
        bytes), if given), its frame encoded and the frame taken once more (the same size),
        then the video is dropped. None if the env records, else why not (one sentence)."""
        if self.problem is None:
            self.problem = check_scratch()
        if self.problem is None:
            self._reset(seed=seed, options=None, scenario=scenario, probing=True)
        self.discard()
        return self.problem

    @property
    def plays_scenarios(self) -> bool:
        """Whether this env's frame source can load saved scenarios into it."""
        return self.frame_source.plays_scenarios

    def load_scenario(self, name: str, data: bytes) -> dict:
        """Load the saved scenario ``data`` (file ``name``) into the env; the reset options that keep it."""
        if not self.plays_scenarios:
            raise ValueError(f"saved scenarios cannot be played in {type(self.env).__name__}: its frame source "
                             f"({type(self.frame_source).__name__}) loads none")
        return self.frame_source.load_scenario(name, data)

    def pop_finished(self, *, wait: bool = True, stamped: bool = False) -> list[RecordedEpisode]:
        """Hand over (and forget) the episodes finished so far, in order: waiting for the videos
        still being drawn, or (``wait=False``) up to the first of them; ``stamped``: only up
        to the first episode not stamped yet (``stamp``). A video that fails to draw is said
        by ``pop_dropped()``; its episode is handed over without it (its replay record), or not
        at all if it has no record."""
        finished = []
        while self._finished:
            episode, pending = self._finished[0]
            if stamped and episode.weights_seq_no is None:
                break
            if pending is not None:
                if not wait and not pending.done():
                    break
                try:
                    mp4, frames = pending.result()
                except (RecordingError, OSError) as error:
                    self._dropped.append(self._dropped_episode(error, seed=episode.env_seed,
                                                               step=episode.episode_length))
                    # its replay record goes on without the video
                    episode = dataclasses.replace(episode, frames=0) if episode.record is not None else None
                else:
                    episode = dataclasses.replace(episode, mp4=mp4, frames=frames)
            if episode is not None:
                finished.append(episode)
            self._finished.pop(0)
        return finished

    @property
    def waiting(self) -> bool:
        """Whether finished episodes wait to be handed over (``pop_finished``)."""
        return bool(self._finished)

    def stamp(self, **values) -> None:
        """Stamp ``values`` (weights_seq_no, evaluation_round) on the finished episodes that have
        no weights version yet, also those whose video is still being drawn."""
        self._finished = [(dataclasses.replace(episode, **values) if episode.weights_seq_no is None else episode, pending)
                          for episode, pending in self._finished]  # fmt: skip

    def pop_dropped(self) -> list[DroppedEpisode]:
        """Hand over (and forget) the episodes whose video was dropped so far, and why."""
        dropped, self._dropped = self._dropped, []
        return dropped

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self._reset(seed=seed, options=options, scenario=this_process().next_scenario())

    # ---- the episode ----------------------------------------------------------------

    def _reset(self, *, seed: int | None, options: dict | None, scenario: tuple[str, bytes] | None,
               probing: bool = False):
        if seed is not None:
            self._seeds = np.random.default_rng(seed)
        else:
            seed = int(self._seeds.integers(2**31 - 1))
        self._seed, self._scenario = seed, None
        if scenario is not None:
            options = {**(options or {}), **self.load_scenario(*scenario)}
            self._scenario = scenario[0]
        result = self.env.reset(seed=seed, options=options)
        self._steps, self._returns = 0, _Returns()
        self._record = None
        self._capture = None if probing or self.problem is not None else self._new_capture(seed, options)
        if self.problem is None:
            try:
                self._video.start(env_seed=self._seed, later=not probing and self._draws_later())
                if probing and self.frame_source.drawn_beside is None:
                    self.frame_source.frame()  # a second frame of the same state: the same size
                elif probing:
                    self._video.verify()  # the encoder helper drew the frame (or says why not)
            except (RecordingError, OSError) as error:
                if not probing:
                    self._drop(error)
                else:
                    self.problem = _cause(error)
        return result

    def _rules(self):
        if self._select is not None:
            return self._select
        round_ = this_process().round
        return parse_select(round_.select) if round_ is not None else parse_select(ALL)

    def _draws_later(self) -> bool:
        return self.frame_source.drawn_beside is not None and self._rules()[0].kind != ALL

    def _new_capture(self, seed: int, options: dict | None):
        """The replay capture of the episode just reset (None if it cannot be kept: said in the log)."""
        try:
            capture = self.frame_source.replay_capture()
            return (capture, self.frame_source.record_kind) if capture is not None else \
                (EpisodeCapture(seed=seed, options=options), "episode")
        except Exception as error:  # the record is lost, never the episode or its video
            logger.info("no replay record of the episode (seed %s): %s", seed, error)
            return None

    def _capture_step(self, multi: bool, *args) -> None:
        if self._capture is None:
            return
        try:
            capture = self._capture[0]
            (capture.step_multi if multi else capture.step)(*args)
        except Exception as error:
            logger.info("no replay record of the episode (seed %s): step %d: %s", self._seed, self._steps + 1, error)
            self._capture = None

    def _finish_capture(self) -> None:
        capture, self._capture = self._capture, None
        if capture is None:
            return
        try:
            self._record = (capture[0].finish().to_bytes(), capture[1])
        except Exception as error:
            logger.info("no replay record of the episode (seed %s): %s", self._seed, error)

    def _label_text(self) -> str:
        extra = self.frame_source.label_extra()
        if extra is None:
            extra = f"return {sum(self._returns.totals().values()):.1f}"
        return label_text(training_iteration=this_process().label_iteration, step=self._steps, extra=extra)

    def _step_done(self, rewards: dict, done: bool) -> None:
        self._steps += 1
        self._returns.add(rewards)
        if done:
            self._finish_capture()
        if not self._video.recording:
            if done:
                self._finish_unrecorded()
            return
        try:
            self._video.capture()
            if done:
                self._finish()
        except (RecordingError, OSError) as error:
            self._drop(error)
            if done:  # (failed finishing its video: the episode goes on without it)
                self._finish_unrecorded()

    def _finish(self) -> None:
        episode = self._with_record(self._video.finish(**self._ended()))
        if self._video.undrawn is None:
            drawing, self._video.drawing = self._video.drawing, None
            self._finished.append((episode, drawing))
            return
        this = self._facts(episode)
        if may_be_chosen(self._rules(), this_process().played(this), this):
            try:
                self._finished.append((episode, self._video.draw_later()))
            except (RecordingError, OSError) as error:  # its video is lost, not the episode and its record
                self._drop(error)
                self._finished.append((dataclasses.replace(episode, frames=0), None))
        else:
            self._video.undrawn = None
            self._finished.append((dataclasses.replace(episode, frames=0), None))  # its record only: never chosen

    def _ended(self) -> dict:
        """What the episode that just ended says of itself (``VideoRecorder.finish``'s arguments)."""
        returns = self._returns.totals()
        return dict(env_label=self.label, episode_length=self._steps, episode_return=sum(returns.values()),
                    agent_returns={str(agent): value for agent, value in returns.items()}
                    if self.multi_agent else None)  # fmt: skip

    def _with_record(self, episode: RecordedEpisode) -> RecordedEpisode:
        """``episode`` with the facts only the wrapper knows and its replay record (taken)."""
        facts = dict(episode.facts)
        if self._scenario is not None:
            facts["scenario"] = self._scenario
        if self.multi_agent and "num_agents" not in facts:
            facts["num_agents"] = len(self._returns.totals())
        record, kind = self._record or (None, None)
        self._record = None
        return dataclasses.replace(episode, facts=facts, record=record, record_kind=kind)

    def _finish_unrecorded(self) -> None:
        """An episode whose video was dropped ended: its replay record (if kept) still goes to
        the driver, as an episode without a video."""
        if self._record is None:
            return
        episode = self._with_record(self._video.unrecorded(env_seed=self._seed, **self._ended()))
        if self._rules()[0].kind != ALL:
            this_process().played(self._facts(episode))  # the episodes after it are ranked against it too
        self._finished.append((episode, None))

    @staticmethod
    def _facts(episode: RecordedEpisode) -> EpisodeFacts:
        facts = episode.facts
        return EpisodeFacts(index=0, episode_return=episode.episode_return, completion=facts.get("completion"),
                            agents_arrived=facts.get("agents_arrived"), num_agents=facts.get("num_agents"))

    def _drop(self, error: BaseException) -> None:
        """This episode's video is lost (``error``); the env steps on, the next episode records."""
        self._video.discard()
        self._dropped.append(self._dropped_episode(error, seed=self._seed, step=self._steps))

    def _dropped_episode(self, error: BaseException, *, seed: int | None, step: int) -> DroppedEpisode:
        cause = _cause(error)
        # Said on the driver, once (the eval runner sends it there); here only in the runner's log.
        logger.info("the video of an episode (seed %s) is dropped at step %d: %s", seed, step, cause)
        if isinstance(error, EncoderFailed):
            try:  # the next episode's helper loads while this episode plays on
                start_encoder_process()
            except OSError:
                pass
        return DroppedEpisode(
            cause=cause, env_label=self.label, env_seed=seed, step=step,
            runner_index=self._video.runner_index, runner_host=socket.gethostname(), runner_pid=os.getpid(),
        )

    def _close_recording(self) -> None:
        self._video.discard()
        for _, pending in self._finished:  # videos still being drawn: the env is going away
            if pending is not None:
                pending.abort()
        self._finished = [(dataclasses.replace(episode, frames=0) if pending is not None else episode, None)
                          for episode, pending in self._finished]
        self.frame_source.close()


class RecordEpisodes(_RecordingWrapper, gym.Wrapper):
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
        self._capture_step(False, action, reward, terminated, truncated)
        self._step_done({None: reward}, done=bool(terminated or truncated))
        return observation, reward, terminated, truncated, info

    def close(self) -> None:
        self._close_recording()
        super().close()


class RecordMultiAgentEpisodes(_RecordingWrapper, MultiAgentEnv):
    """Records every episode of an RLlib ``MultiAgentEnv`` into an mp4 (options as for
    RecordEpisodes). Everything else (spaces, agents, ``wrap()`` ...) is the env's own."""

    multi_agent = True

    def _wrap(self, env) -> None:
        # MultiAgentEnv.__init__ is not called: agents and spaces are the wrapped env's.
        self.env = env

    def step(self, action_dict):
        observations, rewards, terminateds, truncateds, infos = self.env.step(action_dict)
        self._capture_step(True, action_dict, rewards, terminateds, truncateds)
        done = bool(terminateds.get("__all__", False) or truncateds.get("__all__", False))
        self._step_done(rewards, done=done)
        return observations, rewards, terminateds, truncateds, infos

    def render(self):
        return self.env.render()

    def close(self) -> None:
        self._close_recording()
        self.env.close()

    # -- the wrapped env's agents and spaces (RLlib reads them from `unwrapped`, i.e. here) --

    def get_observation_space(self, agent_id):
        return self.env.get_observation_space(agent_id)

    def get_action_space(self, agent_id):
        return self.env.get_action_space(agent_id)

    def get_agent_ids(self):
        return self.env.get_agent_ids()

    def __getattr__(self, name: str):
        if name == "env" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.env, name)


def _cause(error: BaseException) -> str:
    """Why a recording failed, as one sentence."""
    if isinstance(error, EncoderFailed):
        text = f"its video could not be encoded: {error.cause}"
    elif isinstance(error, RecordingError):
        text = str(error)
    else:
        text = f"its video could not be written ({type(error).__name__}: {error})"
    return text if text.endswith(".") else text + "."


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
