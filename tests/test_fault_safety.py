"""Faults, for real: two processes racing for a folder, Ctrl-C, kill -9, resume, wandb faults.

(The subprocess harness lives in tests/support/jobs.py; its names are imported here too,
where other test files used to find them.)"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess


from conftest import run_eval_command
from helpers import in_use_message
from eval_recorder.folder_guard import claim_folder
from eval_recorder.video_index import MANIFEST, read_manifest
from support.jobs import check_folder_is_consistent, jobs, wait_for  # noqa: F401  (jobs: a fixture)
from wandb_offline import run_records

HOST = socket.gethostname()


def test_two_runs_racing_for_a_folder_one_refused_then_ctrl_c_stops_cleanly(tmp_path, jobs):
    videos = tmp_path / "videos"
    common = ("training.iterations=50", f"recording.video_dir={videos}")
    racers = {name: jobs(tmp_path, name, *common, f"wandb.run_id={name}") for name in ("raceA", "raceB")}
    wait_for(lambda: any(job.proc.poll() is not None for job in racers.values()), 60, "one racer to be refused")
    (loser,) = [name for name, job in racers.items() if job.proc.poll() is not None]
    (winner,) = [name for name in racers if name != loser]
    assert racers[loser].proc.returncode == 2, racers[loser].stderr
    assert "starting Ray" not in racers[loser].stdout
    pid = racers[winner].proc.pid
    # The winner is live: named as live, whether the loser came before or after its owner record.
    assert racers[loser].stderr.strip().splitlines()[-1] == "error: " + in_use_message(videos, winner, pid)

    # Ctrl-C the winner once its first round of videos is written.
    wait_for(lambda: len(read_manifest(videos)) >= 2, 300, "the first evaluation round")
    os.kill(pid, signal.SIGINT)
    assert racers[winner].wait(timeout=180) == 130
    manifest = check_folder_is_consistent(videos)
    assert racers[winner].stderr.strip().splitlines()[-1] == (
        f"interrupted: {len(manifest)} videos written in {videos}; "
        f"continue with: {racers[winner].continue_command(winner)}"
    )
    assert {record["run_id"] for record in manifest} == {winner}
    claim_folder(videos, run_id=winner, resume=True).release()  # the lock is free
    (wandb_run,) = (tmp_path / winner / "wandb").glob(f"offline-run-*-{winner}")
    exits = [r.exit.exit_code for r in run_records(wandb_run) if r.WhichOneof("record_type") == "exit"]
    assert exits == [130]  # the wandb run was finished


def test_kill_9_mid_run_leaves_only_complete_files_and_the_run_resumes(tmp_path, jobs):
    videos = tmp_path / "videos"
    first = jobs(tmp_path, "first", "training.iterations=50", "training.checkpoint_every=1",
                 f"recording.video_dir={videos}", "wandb.run_id=crashC")
    wait_for(lambda: len(read_manifest(videos)) >= 3, 300, "the second evaluation round")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.cleanup()
    before = check_folder_is_consistent(videos)
    manifest_bytes = (videos / MANIFEST).read_bytes()
    claim_folder(videos, run_id="crashC", resume=True).release()  # the OS freed the lock

    checkpoints = sorted((tmp_path / "first" / "checkpoints").glob("it[0-9]*"))
    last = int(checkpoints[-1].name[2:])
    resumed = jobs(tmp_path, "resumed", f"training.iterations={last + 1}", f"recording.video_dir={videos}",
                   "recording.resume=true", "wandb.run_id=crashC")
    assert resumed.wait() == 0, resumed.stderr[-3000:]
    assert f"resuming run crashC from {checkpoints[-1]}" in resumed.stdout
    assert (videos / MANIFEST).read_bytes().startswith(manifest_bytes)  # appended, not rewritten
    after = check_folder_is_consistent(videos)
    new = after[len(before):]
    assert [record["training_iteration"] for record in new] == [last + 1, last + 1]
    assert min(record["evaluation_round"] for record in new) == max(r["evaluation_round"] for r in before) + 1
    assert (tmp_path / "first" / "checkpoints" / f"it{last + 1:06d}").is_dir()  # saved with its run's checkpoints
    # the same wandb run id, continued in the run's own wandb folder (one `wandb sync` uploads both parts)
    assert len(list((tmp_path / "first" / "wandb").glob("offline-run-*-crashC"))) == 2
    assert not (tmp_path / "resumed" / "wandb").exists()
    for record in before:  # earlier videos untouched
        assert hashlib.sha256((videos / record["file"]).read_bytes()).hexdigest() == record["sha256"]


def test_online_without_api_key_warns_once_falls_back_offline_and_records(tmp_path, jobs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    videos = tmp_path / "videos"
    job = jobs(tmp_path, "nokey", "training.iterations=1", "wandb.mode=online", f"recording.video_dir={videos}",
               "wandb.run_id=nokey", env=env)
    assert job.wait() == 0, job.stderr[-3000:]
    warning = ("no wandb API key is set (run `wandb login` or set WANDB_API_KEY); wandb.mode=online falls back "
               "to offline")
    assert job.stderr.count(warning) + job.stdout.count(warning) == 1
    assert len(read_manifest(videos)) == 2
    assert list((tmp_path / "nokey" / "wandb").glob("offline-run-*-nokey"))


def test_video_dir_that_is_a_file_exits_2_and_is_left_alone(tmp_path):
    target = tmp_path / "videos"
    target.write_bytes(b"not a folder")
    proc = subprocess.run(run_eval_command(f"recording.video_dir={target}", f"hydra.run.dir={tmp_path / 'run'}"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: recording.video_dir {target} is a file, not a folder; choose another recording.video_dir."
    )
    assert target.read_bytes() == b"not a folder"
