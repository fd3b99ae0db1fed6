"""The recording wrapper around real envs: a Flatland env (fast renderer) and a gymnasium
env that renders rgb_array frames; episodes, seeds, facts, labels, real mp4s decoded back."""

from __future__ import annotations

import io
from types import SimpleNamespace

import av
import gymnasium as gym
import numpy as np
import pytest

from eval_recorder import RecordedEpisode, RecordEpisodes, RecordMultiAgentEpisodes, record_episodes
from eval_recorder.episode_record import EpisodeRecord
from eval_recorder.errors import NoFrames
from eval_recorder.eval_runner import prepare_runner
from eval_recorder.flatland.envs import make_env
from eval_recorder.flatland.frames import FlatlandFrames
from eval_recorder.flatland.rendering import FrameRenderer
from eval_recorder.frames import RenderFrames
from eval_recorder.runner_round import RunnerRound, scenario_share, this_process
from eval_recorder.tags import WeightsHistory

SMALL = {"n_agents": 2, "x_dim": 30, "y_dim": 30, "n_cities": 2, "max_rail_pairs_in_city": 2,
         "max_rails_between_cities": 2, "malfunction_interval": 0, "seed": 3}


class Blocks(gym.Env):
    """A tiny gymnasium env that renders rgb_array frames of its state (a moving block)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode="rgb_array", size=(60, 81), length=7):
        self.render_mode = render_mode
        self.size, self.length = size, length
        self.observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = int(self.np_random.integers(0, 5))
        return np.array([self.t], np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length + 5
        return np.array([self.t], np.float32), 1.5, done, False, {}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = np.zeros((*self.size, 3), np.uint8)
        frame[:, (self.t * 5) % self.size[1]] = (255, 120, 0)
        return frame


def play(env, actions):
    observation, _ = env.reset()
    steps = 0
    while True:
        observation, reward, terminated, truncated, _ = env.step(actions(observation))
        steps += 1
        done = terminated["__all__"] or truncated["__all__"] if isinstance(terminated, dict) else terminated or truncated
        if done:
            return steps


def decoded(episode: RecordedEpisode):
    with av.open(io.BytesIO(episode.mp4)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_a_flatland_env_is_drawn_by_the_fast_renderer_and_keeps_its_facts():
    env = record_episodes(make_env(SMALL), fps=10, overlay=False)
    assert isinstance(env, RecordMultiAgentEpisodes)
    assert isinstance(env.frame_source, FlatlandFrames) and env.label == "flatland"
    env.reset(seed=5)
    done, steps = False, 0
    while not done:
        _, _, terminated, truncated, _ = env.step({agent: 2 for agent in env.agents})
        done, steps = terminated["__all__"] or truncated["__all__"], steps + 1
    (episode,) = env.pop_finished()
    rail_env = env.wrap()  # everything else is the wrapped env's own
    assert episode.env_label == "flatland" and episode.env_seed == 5
    assert episode.episode_length == steps and episode.frames == steps + 1 == len(decoded(episode))
    arrived = sum(a.state.name == "DONE" for a in rail_env.agents)
    assert episode.facts == {"num_agents": 2, "agents_arrived": arrived, "completion": arrived / 2}
    assert set(episode.agent_returns) == {"0", "1"}
    assert episode.episode_return == pytest.approx(sum(episode.agent_returns.values()))
    assert env.pop_finished() == []


def test_a_gymnasium_env_is_recorded_through_its_own_render():
    env = RecordEpisodes(Blocks(), fps=5, label="blocks", seed=11)
    assert isinstance(env.frame_source, RenderFrames)
    first = [play(env, lambda obs: 0) for _ in range(2)]
    episodes = env.pop_finished()
    assert [e.episode_length for e in episodes] == first
    assert [e.frames for e in episodes] == [n + 1 for n in first]
    for episode in episodes:
        assert (episode.env_label, episode.agent_returns, episode.facts) == ("blocks", None, {})
        assert episode.episode_return == 1.5 * episode.episode_length
        frames = decoded(episode)
        assert len(frames) == episode.frames and frames[0].shape == (60, 80, 3)  # even sides: 81 -> 80
    # Concrete seeds, drawn from the first one: the same first seed replays the same episodes.
    again = RecordEpisodes(Blocks(), fps=5, label="blocks", seed=11)
    [play(again, lambda obs: 0) for _ in range(2)]
    assert [e.env_seed for e in again.pop_finished()] == [e.env_seed for e in episodes]


def test_frames_larger_than_max_side_are_scaled_down_to_even_sides():
    env = RecordEpisodes(Blocks(size=(300, 451)), max_side=100, overlay=False)
    play(env, lambda obs: 0)
    (episode,) = env.pop_finished()
    assert (episode.width, episode.height) == (100, 66)
    assert decoded(episode)[0].shape == (66, 100, 3)


def test_an_env_that_renders_no_frames_records_nothing_and_says_why():
    with pytest.raises(NoFrames, match=r"the env Blocks renders in mode 'human', not 'rgb_array'; make the evaluation "
                                       r"env with render_mode='rgb_array' so that its frames can be recorded\."):
        RecordEpisodes(Blocks(render_mode="human"))
    why = ("the env Blocks returned NoneType from render(), not an rgb_array frame; make the evaluation env with "
           "render_mode='rgb_array' so that its frames can be recorded.")
    env = RecordEpisodes(Blocks(render_mode=None))
    play(env, lambda obs: 0)  # the episode runs on; no frame is recorded
    (episode,) = env.pop_finished()  # handed over without a video, with its replay record
    assert (episode.mp4, episode.frames, episode.record_kind) == (b"", 0, "episode")
    assert EpisodeRecord.from_bytes(episode.record).steps == episode.episode_length > 0
    assert [(dropped.cause, dropped.step) for dropped in env.pop_dropped()] == [(why, 0)]
    assert env.probe() == env.problem == why  # the check before anything is claimed refuses it


def test_an_eval_runner_labels_with_the_iteration_of_the_weights_it_holds():
    history = WeightsHistory()
    history.record(weights_seq_no=3, training_iteration=3, env_steps=600)
    runner = SimpleNamespace(_weights_seq_no=4, worker_index=1)
    prepare_runner(runner, None, RunnerRound(7, history, [], 1))  # version 4: the iteration just trained
    assert (this_process().evaluation_round, this_process().label_iteration) == (7, 4)
    runner._weights_seq_no = 3  # parallel evaluation: the previous iteration's weights
    prepare_runner(runner, None, RunnerRound(8, history, [], 1))
    assert this_process().label_iteration == 3
    env = record_episodes(make_env(SMALL))
    env.reset(seed=1)
    assert env._label_text() == "iteration 3 | step 0 | arrived 0/2"
    gym_env = RecordEpisodes(Blocks())
    gym_env.reset(seed=1)
    gym_env.step(0)
    assert gym_env._label_text() == "iteration 3 | step 1 | return 1.5"
    this_process().start(None)
    assert gym_env._label_text() == "iteration ? | step 1 | return 1.5"


def test_recorded_frames_carry_the_label_and_overlay_off_leaves_them_as_rendered(monkeypatch):
    """The recorder hands the encoder the trains' state and the label text; the encoder helper
    draws the renderer's frame of that state and burns the label into it (tests/test_encoding.py:
    the same mp4 bytes as burning first; tests/test_offthread_drawing.py: as drawing here)."""
    from eval_recorder.encoding import StreamingEncoder
    from eval_recorder.flatland.scene import SceneDrawing, scene_of

    given = []
    encode = StreamingEncoder.add_state
    monkeypatch.setattr(StreamingEncoder, "add_state", lambda self, state, *, label=None: (
        given.append((state, label)), encode(self, state, label=label)))
    this_process().start(None)
    for overlay in (False, True):
        env = record_episodes(make_env(SMALL), overlay=overlay)
        env.reset(seed=5)  # the reset frame goes to the (real) encoder
        assert env.recording
        env.discard()
        assert not env.recording
    (off, no_label), (on, label) = given
    env = make_env(SMALL)
    env.reset(seed=5)
    plain = FrameRenderer(env.wrap()).render_yuv420p()
    drawing = SceneDrawing(scene_of(env.wrap(), max_side=800))
    assert np.array_equal(drawing.frame(off), plain) and no_label is None  # overlay off: the renderer's frame
    assert on == off and label == "iteration ? | step 0 | arrived 0/2"


@pytest.mark.parametrize("count, runners, shares", [
    (3, 1, [[0, 1, 2]]),
    (3, 2, [[0, 1], [2]]),
    (5, 3, [[0, 1], [2, 3], [4]]),
    (2, 3, [[0], [1], []]),
])
def test_saved_scenarios_are_shared_among_eval_runners_as_rllib_shares_episodes(count, runners, shares):
    scenarios = list(range(count))
    assert [scenario_share(scenarios, index, runners) for index in range(1, runners + 1)] == shares
    assert scenario_share(scenarios, 0, runners) == scenarios  # the local eval runner plays them all


def test_returns_are_the_floats_a_loop_over_every_step_s_rewards_adds_up_whichever_agents_get_them():
    """The wrapper adds a step whose agents are the previous step's in one pass (``_Returns``):
    every agent's return after every step is the float, bit for bit, and the order of agents,
    that adding each reward in turn gives, also when agents come, go and change order, and with
    numpy rewards."""
    from eval_recorder.wrapper import _Returns

    rng = np.random.default_rng(5)
    agents = ["a", "b", "c", "d"]
    steps = [{"a": 0.1, "b": np.float32(0.7)}, {"a": 0.2, "b": np.float64(-1.0)}, {"b": 0.3, "a": 1e-17},
             {"c": 2.0}, {"a": -0.0, "b": 0.1, "c": 0.5}]  # fmt: skip
    for _ in range(300):
        present = [agent for agent in agents if rng.random() < 0.9]
        if rng.random() < 0.05:
            present.reverse()
        steps.append({agent: float(rng.normal()) / 3 for agent in present})
    returns, expected = _Returns(), {}
    for rewards in steps:
        returns.add(rewards)
        for agent, reward in rewards.items():
            expected[agent] = expected.get(agent, 0.0) + float(reward)
        totals = returns.totals()
        assert [(agent, value.hex()) for agent, value in totals.items()] == \
            [(agent, value.hex()) for agent, value in expected.items()]
    assert sum(map(len, steps)) > 900 and len(expected) == 4
