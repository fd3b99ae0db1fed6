"""The replay record of any env's episode (eval_recorder.episode_record): real gymnasium
CartPole, the Blocks env of tests/support, RLlib's MultiAgentCartPole (agents ending at
different steps) and a float32 Box action env, captured, packed to bytes, replayed; an
altered record refused naming the first step and agent that differs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from eval_recorder.episode_record import EpisodeCapture, EpisodeRecord, replay
from eval_recorder.errors import ReplayDiverged
from support.user_envs import Blocks

REMEDY = ("; the env does not repeat this episode from its seed and the recorded actions, so it cannot be replayed "
          "or rendered from this record.")


def run_single(env, seed: int, *, action=None) -> EpisodeRecord:
    env.reset(seed=seed, options=None)
    capture = EpisodeCapture(seed=seed)
    rng = np.random.default_rng(seed)
    while True:
        chosen = env.action_space.sample() if action is None else action(rng)
        _, reward, terminated, truncated, _ = env.step(chosen)
        capture.step(chosen, reward, terminated, truncated)
        if terminated or truncated:
            return EpisodeRecord.from_bytes(capture.finish().to_bytes())


def multi_cartpole():
    from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

    return MultiAgentCartPole({"num_agents": 3})


def run_multi(seed: int = 4) -> EpisodeRecord:
    env = multi_cartpole()
    env.reset(seed=seed, options={"note": "kept"})
    capture = EpisodeCapture(seed=seed, options={"note": "kept"})
    rng = np.random.default_rng(seed)
    acting = {0, 1, 2}
    while True:
        actions = {agent: np.int64(rng.integers(2)) for agent in sorted(acting)}
        _, rewards, terminateds, truncateds, _ = env.step(actions)
        capture.step_multi(actions, rewards, terminateds, truncateds)
        acting -= {agent for agent in acting if terminateds.get(agent) or truncateds.get(agent)}
        if terminateds["__all__"] or truncateds["__all__"]:
            return EpisodeRecord.from_bytes(capture.finish().to_bytes())


def test_a_cartpole_episode_replays_from_its_record():
    record = run_single(gym.make("CartPole-v1"), 3, action=lambda rng: np.int64(rng.integers(2)))

    env = replay(lambda: gym.make("CartPole-v1"), record)

    assert env.unwrapped.steps_beyond_terminated == 0  # replayed to the recorded end (terminated), not beyond
    assert record.steps == len(record.arrays["actions"]) > 5
    assert record.arrays["actions"].dtype == np.int64 and record.arrays["terminated"][-1]
    assert not record.multi_agent and record.seed == 3 and record.options is None


def test_an_altered_reward_is_refused_naming_the_step():
    record = run_single(Blocks(), 0, action=lambda rng: 1)  # walks right to the reward
    record.arrays["rewards"][1] = -0.5

    with pytest.raises(ReplayDiverged) as refused:
        replay(Blocks, record)

    assert str(refused.value) == "step 2: the reward is 0.0 in the replay, -0.5 in the record" + REMEDY
    assert (refused.value.step, refused.value.agent, refused.value.field) == (2, None, "reward")


def test_an_altered_termination_is_refused_naming_the_step():
    record = run_single(Blocks(), 0, action=lambda rng: 1)
    last = record.steps
    record.arrays["terminated"][last - 1] = False

    with pytest.raises(ReplayDiverged, match=rf"^step {last}: the terminated is True in the replay, False in the record; "):
        replay(Blocks, record)


def test_a_multi_agent_episode_replays_agents_ending_at_different_steps():
    record = run_multi()
    ends = {agent: max(int(step) for step, index in zip(record.arrays["action_step"], record.arrays["action_agent"])
                       if record.agents[index] == agent) for agent in record.agents}

    replay(multi_cartpole, record)

    assert record.agents == [0, 1, 2] and record.options == {"note": "kept"}
    assert len(set(ends.values())) > 1  # one agent stopped acting before the others
    assert max(ends.values()) == record.steps


def test_an_altered_agent_reward_is_refused_naming_the_step_and_agent():
    record = run_multi()
    rows = np.flatnonzero((record.arrays["outcome_step"] == 17) & (record.arrays["outcome_agent"] == 2))
    record.arrays["rewards"][rows[0]] = -0.5

    with pytest.raises(ReplayDiverged) as refused:
        replay(multi_cartpole, record)

    assert str(refused.value) == "step 17: agent 2's reward is 1.0 in the replay, -0.5 in the record" + REMEDY
    assert (refused.value.step, refused.value.agent) == (17, 2)


def test_a_replay_with_another_seed_diverges():
    record = run_multi()
    record.seed = 5

    with pytest.raises(ReplayDiverged, match=r"^step \d+: agent \d's terminated is "):
        replay(multi_cartpole, record)


def test_float32_box_actions_replay_as_the_same_float32_arrays():
    env = gym.make("MountainCarContinuous-v0")
    record = run_single(gym.wrappers.TimeLimit(env, 60), 2)

    replay(lambda: gym.wrappers.TimeLimit(gym.make("MountainCarContinuous-v0"), 60), record)

    assert record.arrays["actions"].dtype == np.float32 and record.arrays["actions"].shape == (60, 1)


def test_dict_actions_are_kept_whole():
    capture = EpisodeCapture(seed=1)
    capture.step({"move": 1, "aim": np.array([0.5], np.float32)}, 1.0, False, False)
    record = EpisodeRecord.from_bytes(capture.finish().to_bytes())
    assert record.actions_at(1)["move"] == 1 and record.actions_at(1)["aim"].dtype == np.float32


def test_what_cannot_be_kept_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"^an episode's replay record needs the int seed its env was reset with, "
                                         r"got None; reset each recorded episode with a seed\.$"):
        EpisodeCapture(seed=None)
    with pytest.raises(ValueError, match=r"^the reset options .* cannot be kept in a replay record "):
        EpisodeCapture(seed=1, options={"layout": object()})
    with pytest.raises(ValueError, match=r"^these 3 bytes are not an episode replay record "):
        EpisodeRecord.from_bytes(b"abc")
