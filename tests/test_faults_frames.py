"""Frames checked: a ``render()`` that raises, returns nothing, changes its frames' size in
the middle of an episode or returns another dtype than uint8 (float frames in [0, 1]: refused,
not scaled) is one clear case each. Before anything is claimed (the probe) the env is refused
in one sentence naming it and what it returned; in the middle of an episode only that
episode's video is dropped, with its cause, and the other episodes are recorded as rendered
(never a stretched or black video). Real envs, real encoder, videos decoded back; the runs
through the library path and run_eval.py are in the slow tests at the end."""

from __future__ import annotations

import io

import av
import pytest

from eval_recorder import RecordEpisodes
from support.faulty_envs import make

AT_START = {
    "raises": "the env Faulty raised TypeError in render() (render() takes 1 positional argument but 2 were given); "
              "fix its render() so that it returns rgb_array frames (uint8 arrays of shape (height, width, 3)).",
    "none": "the env Faulty returned NoneType from render(), not an rgb_array frame; make the evaluation env with "
            "render_mode='rgb_array' so that its frames can be recorded.",
    "shape": "the env Faulty returned frames of shape (80, 80, 3) from render() after frames of shape (64, 64, 3) "
             "in the same episode; make its render() keep one frame size for a whole episode.",
    "float": "the env Faulty returned frames of dtype float32 from render(), not uint8; make its render() return "
             "uint8 RGB frames (values 0 to 255: e.g. (frame * 255).astype(np.uint8) for floats in [0, 1]).",
}


def decoded(episode):
    with av.open(io.BytesIO(episode.mp4)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def play(env, episodes, seed=5):
    lengths = []
    env.reset(seed=seed)
    for _ in range(episodes):
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(1)
            steps, done = steps + 1, terminated or truncated
        lengths.append(steps)
        env.reset()
    return lengths


@pytest.mark.parametrize("fault", sorted(AT_START))
def test_at_start_the_probe_refuses_the_env_naming_what_render_returned(fault):
    env = RecordEpisodes(make({"fault": fault}), overlay=False)
    assert env.probe(seed=1) == env.problem == AT_START[fault]
    assert not env.recording


@pytest.mark.parametrize("fault", sorted(AT_START))
def test_mid_episode_only_that_episode_is_dropped_and_the_next_ones_are_recorded(fault):
    env = RecordEpisodes(make({"faults": ["ok", fault, "ok"], "step": 3}), overlay=False)
    assert env.probe(seed=1) is None  # its first episode (the probe's reset) renders well
    lengths = play(env, 3)
    finished, (dropped,) = env.pop_finished(), env.pop_dropped()
    # The probe's reset was the env's first episode: the second episode played is the faulty one.
    assert [episode.episode_length for episode in finished] == [lengths[0], lengths[2]]
    assert dropped.cause == AT_START[fault]
    assert dropped.step == (4 if fault == "shape" else 3)  # the shape changes from the frame after the step-3 one
    assert dropped.env_label == "faulty"
    for episode in finished:  # as rendered: 64x64, not black, one frame per step plus the reset's
        frames = decoded(episode)
        assert len(frames) == episode.frames == episode.episode_length + 1
        assert {frame.shape for frame in frames} == {(64, 64, 3)}
        assert all(frame.mean() > 100 for frame in frames)
    assert env.recording  # the episode after the last one is recorded too


def test_frames_of_another_size_in_the_next_episode_are_recorded_at_that_size():
    """The size is the episode's own: a new episode may have another (not stretched to the first)."""
    env = RecordEpisodes(make({}), overlay=False)
    play(env, 1)
    env.env.size = 48
    env.reset(seed=3)
    while not env.step(1)[2] and env.env.steps < 20:
        pass
    first, second = env.pop_finished()
    assert (first.width, first.height, second.width, second.height) == (64, 64, 48, 48)
    assert {frame.shape for frame in decoded(second)} == {(48, 48, 3)}
