"""Recording inside Ray Tune trials: each trial its own folder and its own wandb run."""

from __future__ import annotations

import pytest

import json

from conftest import TINY, compose_config, flatland_config
from eval_recorder.api import add_recording
from eval_recorder.folder_guard import OWNER_FILE
from eval_recorder.options import RecordingOptions
from eval_recorder.video_index import read_manifest
from wandb_offline import run_records

pytestmark = pytest.mark.slow  # real Ray / RLlib runs


def test_two_concurrent_tune_trials_record_into_their_own_folders_and_wandb_runs(ray_local, tmp_path):
    from ray import tune

    cfg = compose_config(*TINY, "evaluation.num_env_runners=0")  # 1 CPU per trial: both run at once
    config = add_recording(flatland_config(cfg), RecordingOptions(video_dir=None, wandb_mode="offline"))
    config.training(lr=tune.grid_search([1e-4, 3e-4]))
    tuner = tune.Tuner(
        "PPO",
        param_space=config,
        run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "results"),
                                  stop={"training_iteration": 2}),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0, grid.errors
    folders = []
    for result in grid:
        trial_dir = result.path
        videos = tmp_path / "results" / "exp" / trial_dir.split("/exp/")[-1] / "videos"
        trial_id = result.metrics["trial_id"]
        manifest = read_manifest(videos)
        assert [(m["training_iteration"], m["episode_index"]) for m in manifest] == [(1, 0), (1, 1), (2, 0), (2, 1)]
        assert {m["run_id"] for m in manifest} == {trial_id}
        assert json.loads((videos / OWNER_FILE).read_text())["run_id"] == trial_id
        (wandb_run,) = (videos.parent / "wandb").glob(f"offline-run-*-{trial_id}")
        (run,) = [r.run for r in run_records(wandb_run) if r.WhichOneof("record_type") == "run"]
        assert run.run_id == trial_id
        assert run.display_name == f"PPO_eval_recorder_flatland_{trial_id}"  # the trial's name
        folders.append(videos)
    assert len(set(folders)) == 2
    # The trials ran at the same time, each holding its own folder.
    starts = sorted(json.loads((folder / OWNER_FILE).read_text())["started"] for folder in folders)
    ends = [max(m["created"] for m in read_manifest(folder)) for folder in folders]
    assert starts[1] < min(ends)
