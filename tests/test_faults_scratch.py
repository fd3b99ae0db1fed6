"""The eval runner's scratch folder (where each episode's video is encoded) is checked
before anything is claimed: written and read back; a full (a real small tmpfs) or read-only
(a real read-only bind mount) one is refused in one sentence naming the folder and how to
choose another (TMPDIR). Running out in the middle of a run costs only that episode, said
once. Needs root for the mounts (skipped otherwise, with the reason)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT, TINY
from eval_recorder import RecordEpisodes
from eval_recorder.publisher import dropped_message
from eval_recorder.scratch import SCRATCH_CHECK_BYTES, check_scratch
from helpers import play_episode
from support.faulty_envs import make
from support.filesystems import fill, read_only, small_tmpfs


def full_sentence(folder) -> str:
    return (f"the scratch folder {folder} of the eval runner on {socket.gethostname()}, where each episode's video "
            f"is encoded, is full (No space left on device); free space there, or set TMPDIR to a folder with room "
            f"for the eval runners (eval_recorder-scratch is made inside it).")


def read_only_sentence(folder) -> str:
    return (f"the scratch folder {folder} of the eval runner on {socket.gethostname()}, where each episode's video "
            f"is encoded, is read-only (Read-only file system); set TMPDIR to a writable folder for the eval runners "
            f"(eval_recorder-scratch is made inside it).")


@pytest.fixture
def temp(tmp_path, monkeypatch):
    """This process's temporary folder (TMPDIR) is a fresh one."""
    folder = tmp_path / "t"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder



def test_a_full_scratch_folder_is_refused_by_the_probe_in_one_sentence(temp):
    scratch = temp / "eval_recorder-scratch"
    with small_tmpfs(scratch, 2 * SCRATCH_CHECK_BYTES):
        fill(scratch, SCRATCH_CHECK_BYTES // 2)  # room for less than the check writes
        assert check_scratch() == full_sentence(scratch)
        env = RecordEpisodes(make({}), overlay=False)
        assert env.probe(seed=1) == full_sentence(scratch)
        assert sorted(path.name for path in scratch.iterdir()) == ["filler"]  # the check left nothing


def test_a_read_only_scratch_folder_is_refused_by_the_probe_in_one_sentence(temp):
    scratch = temp / "eval_recorder-scratch"
    scratch.mkdir()
    with read_only(scratch):
        env = RecordEpisodes(make({}), overlay=False)
        assert env.probe(seed=1) == read_only_sentence(scratch)


def test_a_scratch_folder_that_fills_up_mid_run_costs_that_episode_and_recording_goes_on(temp):
    scratch = temp / "eval_recorder-scratch"
    with small_tmpfs(scratch, 4 * SCRATCH_CHECK_BYTES):
        env = RecordEpisodes(make({"size": 256}), overlay=False)
        assert env.probe(seed=1) is None
        filler = fill(scratch, 0)  # no room for a video
        play_episode(env, seed=2)
        play_episode(env, seed=3)
        handed = env.pop_finished()  # without their videos, with their replay records (kept in memory)
        assert [(episode.env_seed, episode.mp4, episode.frames, episode.record_kind) for episode in handed] == [
            (2, b"", 0, "episode"), (3, b"", 0, "episode")]
        first, second = env.pop_dropped()
        assert first.cause == second.cause == full_sentence(scratch)  # one cause: said once on the driver
        assert dropped_message(first).endswith(f"the others are recorded: {full_sentence(scratch)}")
        filler.unlink()  # room again: the next episode is recorded
        play_episode(env, seed=4)
        (episode,) = env.pop_finished()
        assert episode.env_seed == 4 and episode.frames == episode.episode_length + 1
        assert sorted(path.name for path in scratch.iterdir()) == []  # no partial file left


def run_eval(tmp_path, temp, *overrides):
    env = {**os.environ, "TMPDIR": str(temp), "RAY_TMPDIR": "/tmp", "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run(
        [sys.executable, str(ROOT / "run_eval.py"), *TINY, "env.factory=support.faulty_envs:make",
         f"recording.video_dir={tmp_path / 'videos'}", "wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'run'}",
         *overrides],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )


@pytest.mark.slow
def test_run_eval_refuses_a_full_or_read_only_scratch_folder_before_anything_is_claimed(tmp_path, temp):
    scratch = temp / "eval_recorder-scratch"
    with small_tmpfs(scratch, 2 * SCRATCH_CHECK_BYTES):
        fill(scratch, 0)
        proc = run_eval(tmp_path / "full", temp)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {full_sentence(scratch)}"
    assert not (tmp_path / "full" / "videos").exists()
    with read_only(scratch):
        proc = run_eval(tmp_path / "ro", temp)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {read_only_sentence(scratch)}"
    assert not (tmp_path / "ro" / "videos").exists()


@pytest.mark.slow
def test_the_library_path_refuses_a_full_scratch_folder_of_its_eval_runner_before_claiming(tmp_path, temp):
    """The check runs on the eval runner itself (a Ray actor: it has its own scratch folder)."""
    scratch = temp / "eval_recorder-scratch"
    env = {**os.environ, "TMPDIR": str(temp), "RAY_TMPDIR": "/tmp", "PYTHONPATH": str(ROOT / "tests")}
    with small_tmpfs(scratch, 2 * SCRATCH_CHECK_BYTES):
        fill(scratch, 0)
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "library_run.py"),
                               str(tmp_path / "videos")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == full_sentence(scratch)
    assert not (tmp_path / "videos").exists()
