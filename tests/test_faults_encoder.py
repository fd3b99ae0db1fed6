"""The encoder helper is a fault domain of its own: killed (SIGKILL) or stopped (SIGSTOP) in
the middle of an episode, it costs that episode's video only, with its cause; the env steps
on, the next episode is recorded by a new helper, and no wait for the helper outlasts its
deadline. Real helper processes and signals; the whole run (run_eval.py, both signals in
one run, the round labels checked) is the slow test at the end."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from eval_recorder import RecordEpisodes, encoding
from eval_recorder.encoding import StreamingEncoder, encoder_process_ids
from eval_recorder.errors import EncoderFailed
from support.faulty_envs import make
from test_encoding import decode, frames


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def test_a_stopped_helper_is_killed_after_its_deadline_and_every_open_encoder_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(encoding, "HELPER_REPLY_SECONDS", 0.5)
    warm = StreamingEncoder(tmp_path / "warm.mp4", width=64, height=48, fps=10)
    warm.add(frames(1)[0])
    warm.close()  # the helper has answered (PyAV loaded): the short deadline holds from here
    encoders = [StreamingEncoder(tmp_path / f"clip{i}.mp4", width=64, height=48, fps=10) for i in range(2)]
    for encoder in encoders:
        encoder.add(frames(1)[0])
    (helper,) = encoder_process_ids()
    os.kill(helper, signal.SIGSTOP)
    began = time.monotonic()
    cause = f"the encoder helper process (pid {helper}) answered nothing for 0.5 s and was killed"
    for index, encoder in enumerate(encoders):
        with pytest.raises(EncoderFailed, match=rf"^encoding clip{index}\.mp4 failed: {re.escape(cause)}$") as raised:
            for frame in frames(10):
                encoder.add(frame)
            encoder.close()
        assert raised.value.cause == cause
        encoder.abort()
    assert time.monotonic() - began < 5  # one deadline, not one per encoder or per frame
    assert not alive(helper)
    fresh = StreamingEncoder(tmp_path / "fresh.mp4", width=64, height=48, fps=10)
    assert encoder_process_ids() not in ([], [helper])
    for frame in frames(5):
        fresh.add(frame)
    assert fresh.close() == 5
    assert len(decode(tmp_path / "fresh.mp4")) == 5


def play_one(env, seed):
    env.reset(seed=seed)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(1)
        done = terminated or truncated


@pytest.mark.parametrize("number", [signal.SIGKILL, signal.SIGSTOP])
def test_a_helper_killed_or_stopped_mid_episode_costs_that_episode_and_the_next_is_recorded(number, monkeypatch):
    monkeypatch.setattr(encoding, "HELPER_REPLY_SECONDS", 0.5)
    env = RecordEpisodes(make({}), overlay=False)
    play_one(env, seed=2)  # the helper has answered (PyAV loaded): the short deadline holds from here
    env.pop_finished()
    env.reset(seed=4)
    for _ in range(2):
        env.step(1)
    (helper,) = encoder_process_ids()
    os.kill(helper, number)
    steps, done = 2, False
    while not done:  # the episode steps on to its end
        _, _, terminated, truncated, _ = env.step(1)
        steps, done = steps + 1, terminated or truncated
    (dropped,) = env.pop_dropped()
    ended = "was killed by SIGKILL" if number == signal.SIGKILL else "answered nothing for 0.5 s and was killed"
    assert dropped.cause == f"its video could not be encoded: the encoder helper process (pid {helper}) {ended}."
    assert 2 <= dropped.step <= 4 and dropped.env_seed == 4  # the frames queued before the signal are not waited for
    assert env.pop_finished() == [] and not env.recording
    (new_helper,) = encoder_process_ids()  # started as soon as the old one was found gone
    assert new_helper != helper and not alive(helper)
    play_one(env, seed=8)
    (episode,) = env.pop_finished()
    assert episode.env_seed == 8 and episode.frames == episode.episode_length + 1
    assert env.pop_dropped() == []
