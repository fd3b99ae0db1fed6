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
from pathlib import Path

import pytest

from eval_recorder import RecordEpisodes, encoding
from eval_recorder.encoding import HELPER_REPLY_SECONDS, StreamingEncoder, encoder_process_ids
from eval_recorder.errors import EncoderFailed
from eval_recorder.scratch import scratch_dir
from eval_recorder.video_index import read_manifest
from helpers import play_episode
from support.faulty_envs import make
from support.jobs import TESTS, check_folder_is_consistent, jobs, session_processes, wait_for  # noqa: F401 (jobs: a fixture)
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



@pytest.mark.parametrize("number", [signal.SIGKILL, signal.SIGSTOP])
def test_a_helper_killed_or_stopped_mid_episode_costs_that_episode_and_the_next_is_recorded(number, monkeypatch):
    monkeypatch.setattr(encoding, "HELPER_REPLY_SECONDS", 0.5)
    env = RecordEpisodes(make({}), overlay=False)
    play_episode(env, seed=2)  # the helper has answered (PyAV loaded): the short deadline holds from here
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
    # Found at a frame after the signal, not at the episode's end: at the latest when the env finds
    # both of the encoder's two frame slots taken, at step 3 if the helper was still at work on step
    # 1's frame, at step 5 if it had caught up with step 2's (as it often has on a 2-core machine).
    assert 3 <= dropped.step <= 5 and dropped.env_seed == 4
    (unrecorded,) = env.pop_finished()  # without its video, with its replay record
    assert (unrecorded.mp4, unrecorded.frames, unrecorded.env_seed, unrecorded.episode_length) == (b"", 0, 4, steps)
    assert unrecorded.record is not None and not env.recording
    (new_helper,) = encoder_process_ids()  # started as soon as the old one was found gone
    assert new_helper != helper and not alive(helper)
    play_episode(env, seed=8)
    (episode,) = env.pop_finished()
    assert episode.env_seed == 8 and episode.frames == episode.episode_length + 1
    assert env.pop_dropped() == []


def test_a_helper_killed_at_an_episode_s_last_step_costs_its_video_not_its_replay_record():
    """The helper dies as the episode ends (its last frame or the mp4's finish fails): the
    episode is still handed over, without a video, with its replay record; its seed and
    steps are those of the episode, and the next episode records again."""
    from eval_recorder.episode_record import EpisodeRecord

    env = RecordEpisodes(make({}), overlay=False)
    play_episode(env, seed=2)
    env.pop_finished()
    env.reset(seed=6)
    steps = 0
    while True:
        steps += 1
        if env.unwrapped.position == 6:  # the block reaches the end (7) with this step: the last one
            (helper,) = encoder_process_ids()
            os.kill(helper, signal.SIGKILL)
            while alive(helper):
                time.sleep(0.01)
        _, _, terminated, truncated, _ = env.step(1)
        if terminated or truncated:
            break
    (dropped,) = env.pop_dropped()
    assert dropped.cause == (f"its video could not be encoded: the encoder helper process (pid {helper}) was killed "
                             "by SIGKILL.")
    (episode,) = env.pop_finished()
    assert (episode.mp4, episode.frames, episode.env_seed, episode.episode_length) == (b"", 0, 6, steps)
    assert EpisodeRecord.from_bytes(episode.record).steps == steps and episode.record_kind == "episode"
    play_episode(env, seed=8)
    (episode,) = env.pop_finished()
    assert episode.env_seed == 8 and episode.frames == episode.episode_length + 1


# ---- the whole run ---------------------------------------------------------------------------------


def helpers_of_eval_runners(job) -> dict[int, int]:
    """{encoder helper pid: its eval runner's pid} among the job's processes (the driver's
    own helper, from its env check, is not one)."""
    found = {}
    for pid, proc in session_processes(job.pid).items():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"encoder_process.py") for part in command) and proc.ppid != job.pid:
            found[pid] = proc.ppid
    return found


def recording_now(runner: int) -> bool:
    """An episode of eval runner ``runner`` is being encoded (its scratch file exists)."""
    return any(scratch_dir().glob(f"episode-{runner}-*.mp4"))


@pytest.mark.slow
def test_a_helper_killed_in_one_round_and_stopped_in_the_next_costs_one_episode_each(tmp_path, jobs):
    videos, run_id = tmp_path / "videos", "helper1"
    job = jobs(tmp_path, "run", "env.factory=support.faulty_envs:make", "+env.config.delay=0.04",
               "training.iterations=3", "evaluation.episodes=3", f"recording.video_dir={videos}",
               f"wandb.run_id={run_id}", "wandb.mode=disabled", env={**os.environ, "PYTHONPATH": str(TESTS)})
    found = {}

    def first_episode_of_round(stored: int) -> bool:
        if not job.running():
            return True
        found.update(helpers_of_eval_runners(job))
        helpers = helpers_of_eval_runners(job)
        return (len(helpers) == 1 and recording_now(next(iter(helpers.values())))
                and len(read_manifest(videos)) == stored)

    # Round 1, its first episode: the helper is killed.
    wait_for(lambda: first_episode_of_round(0), 300, "round 1's first episode")
    assert job.running(), job.stderr[-3000:]
    ((killed, runner),) = helpers_of_eval_runners(job).items()
    os.kill(killed, signal.SIGKILL)
    # Round 2, its first episode: the new helper is stopped (and never continued).
    wait_for(lambda: first_episode_of_round(3), 300, "round 2's first episode")
    assert job.running(), job.stderr[-3000:]
    ((stopped, same_runner),) = helpers_of_eval_runners(job).items()
    assert stopped != killed and same_runner == runner  # a new helper; the eval runner lives on
    os.kill(stopped, signal.SIGSTOP)
    at = time.monotonic()
    wait_for(lambda: len(read_manifest(videos)) >= 4 or not job.running(), 300, "round 2's next episode")
    took = time.monotonic() - at
    assert job.wait(timeout=600) == 0, job.stderr[-3000:]

    manifest = check_folder_is_consistent(videos)
    # The first episode of rounds 1 and 2 lost its video, not its replay record.
    assert [(r["training_iteration"], r["evaluation_round"], r["episode_index"], "file" in r) for r in manifest] == [
        (1, 1, 0, False), (1, 1, 1, True), (1, 1, 2, True), (2, 2, 0, False), (2, 2, 1, True), (2, 2, 2, True),
        (3, 3, 0, True), (3, 3, 1, True), (3, 3, 2, True)], [(r["evaluation_round"], r.get("file")) for r in manifest]
    assert [(r.get("file"), r["record"]) for r in manifest][:4] == [
        (None, f"make-it000001-ev0001-ep000-{run_id}.episode.npz"),
        (f"make-it000001-ev0001-ep001-{run_id}.mp4", f"make-it000001-ev0001-ep001-{run_id}.episode.npz"),
        (f"make-it000001-ev0001-ep002-{run_id}.mp4", f"make-it000001-ev0001-ep002-{run_id}.episode.npz"),
        (None, f"make-it000002-ev0002-ep000-{run_id}.episode.npz")]
    assert {r["runner"]["pid"] for r in manifest} == {runner}  # never restarted by Ray
    # Round 2 went on after one deadline, far below RLlib's 120 s sample timeout.
    assert HELPER_REPLY_SECONDS <= took < HELPER_REPLY_SECONDS + 30, took
    warnings = [line for line in job.stderr.splitlines() if line.startswith("warning: ")]
    dropped = r"warning: evaluation round {}: the video of an episode \(seed \d+\) of eval runner 1 is dropped at " \
              r"step \d+, the others are recorded: its video could not be encoded: the encoder helper process " \
              r"\(pid {}\) {}\."
    assert len(warnings) == 2, warnings
    assert re.fullmatch(dropped.format(1, killed, "was killed by SIGKILL"), warnings[0]), warnings[0]
    assert re.fullmatch(dropped.format(2, stopped, f"answered nothing for {HELPER_REPLY_SECONDS:g} s and was killed"),
                        warnings[1]), warnings[1]
    assert not alive(killed) and not alive(stopped)
