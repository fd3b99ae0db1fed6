"""A Ray Tune trial's own recording session under faults: the trial's process (a Ray
actor, the trial's driver) gets SIGTERM (``ray stop``, SLURM, Kubernetes), or its training
raises. Either way its wandb run is finished with the real exit code and its folder is
released, with every finished episode stored."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval_recorder.folder_guard import claim_folder
from eval_recorder.video_index import read_manifest
from support.jobs import SUPPORT, check_folder_is_consistent, kill_session, session_processes, wait_for, wandb_exit_codes, \
    wandb_video_logs

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, iterations: int, fail_at: int = 0) -> subprocess.Popen:
    out = open(tmp_path / "tune.out", "w")
    return subprocess.Popen([sys.executable, str(SUPPORT / "tune_trial.py"), str(tmp_path / "results"),
                             str(iterations), str(fail_at)], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _trial_videos(tmp_path: Path) -> Path | None:
    found = list((tmp_path / "results" / "exp").glob("PPO_*/videos"))
    return found[0] if found else None




def _check_trial(videos: Path, code: int) -> list[dict]:
    manifest = check_folder_is_consistent(videos)
    run_id = manifest[0]["run_id"]
    claim_folder(videos, run_id=run_id, resume=True).release()  # released
    (wandb_run,) = (videos.parent / "wandb").glob(f"offline-run-*-{run_id}")
    assert wandb_exit_codes(wandb_run) == [code]
    assert wandb_video_logs([wandb_run]) == {record["sha256"]: 1 for record in manifest}
    return manifest


def test_sigterm_to_a_tune_trial_process_finishes_its_wandb_run_with_143(tmp_path):
    proc = _start(tmp_path, iterations=50)
    try:
        wait_for(lambda: (v := _trial_videos(tmp_path)) is not None and len(read_manifest(v)) >= 2
                 or proc.poll() is not None, 400, "the trial's first round")
        assert proc.poll() is None, (tmp_path / "tune.out").read_text()[-3000:]
        (trial,) = [pid for pid, found in session_processes(proc.pid).items() if found.comm.startswith("ray::PPO")]
        import os

        sent = time.monotonic()
        os.kill(trial, signal.SIGTERM)
        wait_for(lambda: trial not in session_processes(proc.pid), 60, "the trial process to end")
        took = time.monotonic() - sent
        assert proc.wait(timeout=120) == 0
    finally:
        kill_session(proc)
    output = (tmp_path / "tune.out").read_text()
    assert "trial errors: 1" in output
    assert "trial process got SIGTERM: storing the finished episodes, finishing the wandb run" in output
    manifest = _check_trial(_trial_videos(tmp_path), 143)
    print(f"\nSIGTERM to the trial process: it ended after {took:.1f} s, {len(manifest)} videos kept")


def test_a_tune_trial_whose_training_raises_finishes_its_wandb_run_with_1(tmp_path):
    proc = _start(tmp_path, iterations=5, fail_at=2)
    try:
        assert proc.wait(timeout=600) == 0
    finally:
        kill_session(proc)
    assert "trial errors: 1" in (tmp_path / "tune.out").read_text()
    manifest = _check_trial(_trial_videos(tmp_path), 1)
    assert [(r["training_iteration"], r["episode_index"]) for r in manifest] == [(1, 0), (1, 1), (2, 0), (2, 1)]
