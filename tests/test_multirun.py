"""Hydra multirun: every job its own folder, wandb run and TensorBoard run; an MLflow server
that refuses connections is said once per job while training and videos go on; a shared
explicit folder is refused."""

from __future__ import annotations

import pytest

import subprocess

from conftest import TINY, run_eval_command
from eval_recorder.folder_guard import OWNER_FILE
from eval_recorder.video_index import read_manifest

pytestmark = pytest.mark.slow  # real Ray / RLlib runs

FAST = (*TINY, "training.iterations=1", "evaluation.episodes=1", "evaluation.num_env_runners=0")


def test_a_sweep_gives_every_job_its_own_folder_and_tracker_runs(tmp_path):
    proc = subprocess.run(run_eval_command("-m", *FAST, "env=small,medium", f"hydra.sweep.dir={tmp_path}",
                                           "trackers=[wandb,tensorboard,mlflow]", "mlflow.tracking_uri=http://127.0.0.1:9"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = ("warning: mlflow could not reach http://127.0.0.1:9 (ConnectionRefusedError: [Errno 111] Connection "
               "refused); mlflow logging is off, videos are still saved locally.")
    assert [line for line in proc.stderr.splitlines() if "mlflow" in line] == [refused, refused]  # once per job
    run_ids = []
    for job, agents in (("0", 2), ("1", 5)):
        manifest = read_manifest(tmp_path / job / "videos")
        assert [(m["training_iteration"], m["num_agents"]) for m in manifest] == [(1, agents)]
        run_ids.append(manifest[0]["run_id"])
        assert list((tmp_path / job / "wandb").glob(f"offline-run-*-{run_ids[-1]}"))
        assert len(list((tmp_path / job).glob(f"events.out.tfevents.*.eval_recorder.{run_ids[-1]}"))) == 1
    assert run_ids[0] != run_ids[1]


def test_two_jobs_on_one_explicit_folder_the_second_refuses_and_the_sweep_goes_on(tmp_path):
    videos = tmp_path / "shared"
    proc = subprocess.run(
        run_eval_command("-m", *FAST, "training.seed=0,1,2",
                         f"recording.video_dir={videos}", f"hydra.sweep.dir={tmp_path / 'sweep'}"),
        capture_output=True, text=True, timeout=600,
    )
    owner = (videos / OWNER_FILE).read_text()
    manifest = read_manifest(videos)
    first = manifest[0]["run_id"]
    assert f'"run_id": "{first}"' in owner
    assert {m["run_id"] for m in manifest} == {first}  # only the first job wrote the folder
    refusals = [line for line in proc.stderr.splitlines() if line.startswith(f"error: video folder {videos} belongs to run {first} ")]
    assert len(refusals) == 2  # jobs 1 and 2 were refused, one sentence each, and the sweep went on
    assert refusals[0].endswith(f"or resume that run with recording.resume=true wandb.run_id={first}.")
    assert proc.returncode == 1  # Hydra reports the failed jobs at the end of the sweep
    assert "was refused; see the error above" in proc.stderr
