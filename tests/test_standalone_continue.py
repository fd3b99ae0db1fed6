"""A standalone evaluation continues too: stopped by SIGTERM it prints the command that
continues it; that command, pasted through a shell, continues in the same folder and skips,
in one line, the checkpoints whose videos are all stored (decided from the manifest)."""

from __future__ import annotations

import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from eval_recorder.app.checkpoints import CheckpointInfo
from eval_recorder.app.standalone import stored_checkpoints
from eval_recorder.video_index import read_manifest
from helpers import snapshot
from support.jobs import ROOT, check_folder_is_consistent, jobs, wait_for  # noqa: F401  (jobs: a fixture)


def _info(path: str, iteration: int) -> CheckpointInfo:
    return CheckpointInfo(path=Path(path), algorithm_class=object, config={}, training_iteration=iteration,
                          env_steps=0, modules={})


def _record(folder: Path, checkpoint: str, iteration: int, round_: int, index: int, run_id: str = "r1") -> dict:
    name = f"flatland-it{iteration:06d}-ev{round_:04d}-ep{index:03d}-{run_id}.mp4"
    (folder / name).write_bytes(b"mp4")
    return {"file": name, "checkpoint": checkpoint, "training_iteration": iteration, "evaluation_round": round_,
            "episode_index": index, "run_id": run_id}


def test_a_checkpoint_counts_as_stored_when_one_round_holds_every_episode_asked(tmp_path):
    a, b, c = _info("/ck/it000001", 1), _info("/ck/it000002", 2), _info("/ck/it000003", 3)
    records = [
        _record(tmp_path, "/ck/it000001", 1, 1, 0), _record(tmp_path, "/ck/it000001", 1, 1, 1),  # a: whole round 1
        _record(tmp_path, "/ck/it000002", 2, 2, 0),  # b: round 2 stopped after its first episode ...
        _record(tmp_path, "/ck/it000002", 2, 3, 1),  # ... and round 3 after its first: no round holds both
        _record(tmp_path, "/ck/it000003", 3, 4, 0, run_id="other"), _record(tmp_path, "/ck/it000003", 3, 4, 1,
                                                                             run_id="other"),  # another run's
    ]
    assert stored_checkpoints(records, [a, b, c], run_id="r1", episodes=2, folder=tmp_path) == [a]
    assert stored_checkpoints(records, [a, b, c], run_id="r1", episodes=1, folder=tmp_path) == [a, b]
    assert stored_checkpoints(records, [a, b, c], run_id="r1", episodes=3, folder=tmp_path) == []
    assert stored_checkpoints(records, [a, b, c], run_id="other", episodes=2, folder=tmp_path) == [c]


def test_a_checkpoint_whose_videos_are_gone_or_at_another_iteration_or_path_is_not_stored(tmp_path):
    a = _info("/ck/it000001", 1)
    records = [_record(tmp_path, "/ck/it000001", 1, 1, 0), _record(tmp_path, "/ck/it000001", 1, 1, 1)]
    (tmp_path / records[1]["file"]).unlink()
    assert stored_checkpoints(records, [a], run_id="r1", episodes=2, folder=tmp_path) == []
    records = [_record(tmp_path, "/ck/it000001", 1, 1, 0), _record(tmp_path, "/ck/it000001", 1, 1, 1)]
    assert stored_checkpoints(records, [_info("/ck/it000001", 7)], run_id="r1", episodes=2, folder=tmp_path) == []
    assert stored_checkpoints(records, [_info("/elsewhere/it000001", 1)], run_id="r1", episodes=2,
                              folder=tmp_path) == []


@pytest.mark.slow
def test_a_standalone_run_stopped_by_sigterm_continues_with_its_printed_command_skipping_stored_checkpoints(
        trained_run, tmp_path, jobs):
    run_id = "goon1"
    # A round long enough (~3 s here) that a stop after its first episode cuts it: what reaches the
    # driver within a second of the stop is stored too, and the eval runner goes on playing.
    episodes = 12
    first = jobs(tmp_path, "eval", f"checkpoint={trained_run}", f"evaluation.episodes={episodes}", "wandb.mode=offline",
                 f"wandb.run_id={run_id}", tiny=False)
    videos = first.run_dir / "videos"
    checkpoints = [trained_run.resolve() / "checkpoints" / "it000001", trained_run.resolve() / "checkpoints" / "it000002"]
    # SIGTERM once checkpoint 1's videos are stored and checkpoint 2's first.
    wait_for(lambda: len(read_manifest(videos)) >= episodes + 1 or not first.running(), 400, "checkpoint 2's first episode")
    assert first.running(), first.stderr[-3000:]
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=180) == 143, first.stderr[-3000:]
    stored = check_folder_is_consistent(videos)
    by_checkpoint = [[r["episode_index"] for r in stored if r["checkpoint"] == str(c)] for c in checkpoints]
    assert by_checkpoint[0] == list(range(episodes)) and by_checkpoint[1][:1] == [0] \
        and len(by_checkpoint[1]) < episodes, stored
    expected = first.continue_command(run_id)
    assert first.last_error_line == (f"interrupted: {len(stored)} videos written in {videos}; "
                                     f"continue with: {expected}")
    assert shlex.split(expected)[2:5] == [f"checkpoint={trained_run}", f"evaluation.episodes={episodes}",
                                          "wandb.mode=offline"]

    # Pasted through a shell: the same folder, checkpoint 1 skipped, checkpoint 2 evaluated whole, in a new round.
    second = subprocess.run(expected, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    lines = second.stdout.splitlines()
    assert lines[:2] == [f"skipping 1 of 2 checkpoint(s) whose videos are all stored: {checkpoints[0]}",
                         f"run {run_id}: evaluating 1 checkpoint(s), videos go to {videos}"]
    assert second.stderr == ""
    records = check_folder_is_consistent(videos)
    assert records[:len(stored)] == stored  # appended, never rewritten
    added = records[len(stored):]
    last_round = max(r["evaluation_round"] for r in stored)
    assert [(r["checkpoint"], r["training_iteration"], r["evaluation_round"], r["episode_index"], r["run_id"])
            for r in added] == [(str(checkpoints[1]), 2, last_round + 1, i, run_id) for i in range(episodes)]
    assert [r["file"] for r in added] == [f"flatland-it000002-ev{last_round + 1:04d}-ep{i:03d}-{run_id}.mp4"
                                          for i in range(episodes)]
    assert sorted(p.name for p in first.run_dir.parent.iterdir() if p.is_dir()) == ["eval"]  # no other folder

    # Once more: both are stored; said, nothing claimed, written or started.
    before = snapshot(videos)
    third = subprocess.run(expected, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.splitlines() == [
        f"skipping 2 of 2 checkpoint(s) whose videos are all stored: {checkpoints[0]}, {checkpoints[1]}",
        f"run {run_id}: nothing left to evaluate; its videos are in {videos}"]
    assert third.stderr == ""
    assert snapshot(videos) == before
