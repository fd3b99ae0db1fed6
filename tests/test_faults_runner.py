"""An eval runner killed (SIGKILL) after the first episode of a 3-episode round, for real:
that episode is kept (it went to the driver's inbox when it ended), only the one being
played is lost, training goes on, and the runner Ray restarts labels its frames with the
iteration of the weights it plays (read back from the decoded videos, not "iteration ?")."""

from __future__ import annotations

import os
import re
import signal

import pytest

from eval_recorder.folder_guard import LOCK_FILE, OWNER_FILE
from eval_recorder.gallery import GALLERY
from eval_recorder.video_index import MANIFEST, read_manifest
from eval_recorder.training_record import TRAINING
from support.jobs import (
    check_folder_is_consistent,
    jobs,  # noqa: F401  (a fixture)
    wait_for,
    wandb_exit_codes,
    wandb_runs,
    wandb_video_logs,
)
from support.labels import label_iteration

pytestmark = pytest.mark.slow


def test_eval_runner_killed_after_its_first_episode_of_a_round(tmp_path, jobs):
    videos, run_id = tmp_path / "videos", "runner1"
    job = jobs(tmp_path, "run", "training.iterations=3", "evaluation.episodes=3", "evaluation.num_env_runners=1",
               f"recording.video_dir={videos}", f"wandb.run_id={run_id}")
    wait_for(lambda: len(read_manifest(videos)) >= 4 or not job.running(), 300, "round 2's first episode")
    assert job.running(), job.stderr[-3000:]
    first_of_round_2 = read_manifest(videos)[3]
    runner = first_of_round_2["runner"]["pid"]
    os.kill(runner, signal.SIGKILL)
    assert job.wait(timeout=600) == 0, job.stderr[-3000:]

    manifest = check_folder_is_consistent(videos)
    assert [(r["training_iteration"], r["evaluation_round"], r["episode_index"]) for r in manifest] == [
        (1, 1, 0), (1, 1, 1), (1, 1, 2), (2, 2, 0), (3, 3, 0), (3, 3, 1), (3, 3, 2)]
    assert manifest[3] == first_of_round_2  # kept as it was stored when it ended
    printed = {int(m[1]): int(m[2]) for m in re.finditer(r"^iteration (\d+)/3 \|.*videos written (\d+)$",
                                                         job.stdout, re.MULTILINE)}
    assert printed == {1: 3, 2: 1, 3: 3}
    assert {r["runner"]["pid"] for r in manifest[:4]} == {runner}
    (restarted,) = {r["runner"]["pid"] for r in manifest[4:]}
    assert restarted != runner
    # Every frame label names the video's own iteration (the first frame: step 0, no train arrived).
    for record in manifest:
        named, margin = label_iteration(videos / record["file"], candidates=[None, 0, 1, 2, 3, 4],
                                        extra=f"arrived 0/{record['num_agents']}")
        assert (named, record["training_iteration"]) == (record["training_iteration"], named), record["file"]
        assert margin > 1.5, (record["file"], margin)
    # Nothing else in the folder (the lost episode left no file); wandb got each video once.
    files = {MANIFEST, GALLERY, TRAINING, OWNER_FILE, LOCK_FILE}
    for record in manifest:
        files |= {record["file"], record["file"].removesuffix(".mp4") + ".json", record["poster"], record["record"]}
    assert {path.name for path in videos.iterdir()} == files
    (wandb_run,) = wandb_runs(job.run_dir, run_id)
    assert wandb_exit_codes(wandb_run) == [0]
    assert wandb_video_logs([wandb_run]) == {r["sha256"]: 1 for r in manifest}
