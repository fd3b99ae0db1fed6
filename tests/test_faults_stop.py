"""Stopping a run with a signal, for real: SIGTERM (what SLURM, Kubernetes and Ray Tune send)
and Ctrl-C, to the driver alone or to its whole process group, while it trains and while it
evaluates; a second signal.

A stopped run stores every episode that reached the driver, finishes its wandb run with
128 + the signal's number, releases its folder, prints how to resume, and exits with that
code. The driver alone: its eval runners and its inbox live on, so the episodes they finish
before the driver closes are stored too. The whole group: Ray's GCS and raylet die with the
driver, taking the runners and the inbox with them; what had reached the driver is stored.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from eval_recorder.folder_guard import LOCK_FILE, OWNER_FILE, claim_folder
from eval_recorder.gallery import GALLERY
from eval_recorder.video_index import MANIFEST, read_manifest
from eval_recorder.training_record import TRAINING
from support.jobs import (
    check_folder_is_consistent,
    jobs,  # noqa: F401  (a fixture)
    session_processes,
    wait_for,
    wandb_exit_codes,
    wandb_runs,
    wandb_video_logs,
)
from wandb_offline import history_rows

pytestmark = pytest.mark.slow


def _hint(job, count: int, videos: Path, run_id: str) -> str:
    return f"interrupted: {count} videos written in {videos}; continue with: {job.continue_command(run_id)}"


def _check_stopped_run(job, videos: Path, run_id: str, code: int) -> list[dict]:
    """What every stopped run leaves: its exit code, the resume hint last on stderr, a
    consistent folder of its own files only, a free lock, a wandb run finished with the
    same code that logged every stored video once; no process of its session left."""
    assert job.proc.returncode == code, job.stderr[-3000:]
    manifest = check_folder_is_consistent(videos)
    assert job.last_error_line == _hint(job, len(manifest), videos, run_id)
    files = {MANIFEST, GALLERY, OWNER_FILE, LOCK_FILE} | ({TRAINING} if (videos / TRAINING).is_file() else set())
    for record in manifest:
        files |= {record["file"], record["file"].removesuffix(".mp4") + ".json", record["poster"], record["record"]}
    assert {path.name for path in videos.iterdir()} == files
    gallery = (videos / GALLERY).read_text()
    assert all(record["file"] in gallery for record in manifest)
    claim_folder(videos, run_id=run_id, resume=True).release()  # the lock is free
    (wandb_run,) = wandb_runs(job.run_dir, run_id)
    assert wandb_exit_codes(wandb_run) == [code]
    assert wandb_video_logs([wandb_run]) == {record["sha256"]: 1 for record in manifest}
    wait_for(lambda: not session_processes(job.pid), 30, "every process of the job to end")
    return manifest


@pytest.mark.parametrize(
    ("signal_number", "group", "moment"),
    [
        (signal.SIGTERM, False, "training"),
        (signal.SIGTERM, True, "training"),
        (signal.SIGTERM, False, "evaluation"),
        (signal.SIGTERM, True, "evaluation"),
        (signal.SIGINT, True, "evaluation"),  # Ctrl-C in a terminal: SIGINT to the whole group
    ],
    ids=["sigterm-driver-training", "sigterm-group-training", "sigterm-driver-evaluation",
         "sigterm-group-evaluation", "sigint-group-evaluation"],
)
def test_a_signal_stops_the_run_cleanly(tmp_path, jobs, signal_number, group, moment):
    videos, run_id = tmp_path / "videos", "stop1"
    code = 128 + signal_number
    job = jobs(tmp_path, "run", "training.iterations=50", "evaluation.episodes=3", f"recording.video_dir={videos}",
               f"wandb.run_id={run_id}")
    if moment == "training":  # iteration 1 (with its round) is done; iteration 2 trains
        wait_for(lambda: "iteration 1/50" in job.stdout or not job.running(), 300, "iteration 1")
    else:  # the first episode of round 2 is stored; the runner plays the next one
        wait_for(lambda: len(read_manifest(videos)) >= 4 or not job.running(), 300, "round 2's first episode")
    assert job.running(), job.stderr[-3000:]
    stored_before = len(read_manifest(videos))
    sent = job.signal(signal_number, group=group)
    job.wait(timeout=120)
    took = time.monotonic() - sent

    manifest = _check_stopped_run(job, videos, run_id, code)
    round_1 = [(1, 1, episode) for episode in range(3)]
    tags = [(r["training_iteration"], r["evaluation_round"], r["episode_index"]) for r in manifest]
    (wandb_run,) = wandb_runs(job.run_dir, run_id)
    rows = {row["_step"]: row for row in history_rows(wandb_run)}
    if moment == "training":
        assert tags == round_1  # iteration 2 had no round yet
        assert sorted(rows) == [1] and rows[1]["eval/videos"] == 3
    else:
        # Round 2 stopped in the middle: every episode stored before the signal is kept;
        # the driver alone also stores what its live runner finished while it closed.
        assert tags[:3] == round_1 and len(manifest) >= stored_before
        assert tags[3:] == [(2, 2, episode) for episode in range(len(manifest) - 3)]
        assert sorted(rows) == [1, 2] and rows[2]["eval/videos"] == len(manifest) - 3  # the round's means
    print(f"\n{signal.Signals(signal_number).name} to the {'group' if group else 'driver'} during {moment}: "
          f"exit {code} after {took:.1f} s, {len(manifest)} videos ({stored_before} before the signal)")
    assert took < 30


def test_a_second_sigterm_stops_at_once_and_still_safely(tmp_path, jobs):
    videos, run_id = tmp_path / "videos", "stop2"
    job = jobs(tmp_path, "run", "training.iterations=50", "evaluation.episodes=3", f"recording.video_dir={videos}",
               f"wandb.run_id={run_id}")
    wait_for(lambda: len(read_manifest(videos)) >= 4 or not job.running(), 300, "round 2's first episode")
    assert job.running(), job.stderr[-3000:]
    sent = job.signal(signal.SIGTERM)
    # A second signal sent before Python ran the handler of the first would merge with it.
    log = job.run_dir / "run_eval.log"  # the job's log records (the console shows warnings only)
    wait_for(lambda: log.exists() and "received SIGTERM: stopping cleanly" in log.read_text(), 30,
             "the first SIGTERM", interval=0.02)
    job.signal(signal.SIGTERM)
    job.wait(timeout=60)
    took = time.monotonic() - sent

    assert "received SIGTERM again: stopping at once" in job.stderr
    _check_stopped_run(job, videos, run_id, 143)
    print(f"\nSIGTERM twice to the driver during evaluation: exit 143 after {took:.1f} s")
    assert took < 10


def test_sigterm_stops_a_standalone_evaluation_cleanly(tmp_path, jobs, trained_run):
    checkpoint = trained_run / "checkpoints" / "it000002"
    videos, run_id = tmp_path / "videos", "standalone1"
    job = jobs(tmp_path, "eval", f"checkpoint={checkpoint}", "evaluation.episodes=6", f"recording.video_dir={videos}",
               f"wandb.run_id={run_id}")
    wait_for(lambda: len(read_manifest(videos)) >= 1 or not job.running(), 300, "the first episode")
    assert job.running(), job.stderr[-3000:]
    sent = job.signal(signal.SIGTERM)  # in the middle of the round: the first episode reached the folder
    assert job.wait(timeout=120) == 143, job.stderr[-3000:]
    took = time.monotonic() - sent

    manifest = check_folder_is_consistent(videos)
    assert job.last_error_line == (f"interrupted: {len(manifest)} videos written in {videos}; "
                                   f"continue with: {job.continue_command(run_id)}")
    assert [(r["training_iteration"], r["episode_index"], r["checkpoint"]) for r in manifest] == [
        (2, episode, str(checkpoint)) for episode in range(len(manifest))]
    claim_folder(videos, run_id=run_id, resume=True).release()
    (wandb_run,) = wandb_runs(job.run_dir, run_id)
    assert wandb_exit_codes(wandb_run) == [143]
    assert wandb_video_logs([wandb_run]) == {record["sha256"]: 1 for record in manifest}
    print(f"\nSIGTERM to a standalone evaluation: exit 143 after {took:.1f} s, {len(manifest)} of 6 videos")
    assert took < 30
