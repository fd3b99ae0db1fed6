"""Recording inside Ray Tune trials: each trial its own folder and its own wandb,
TensorBoard and MLflow runs."""

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


def test_two_concurrent_tune_trials_record_into_their_own_folders_and_tracker_runs(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient
    from ray import tune
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_config(*TINY, "evaluation.num_env_runners=0")  # 1 CPU per trial: both run at once
    config = add_recording(flatland_config(cfg), RecordingOptions(video_dir=None, wandb_mode="offline",
                                                                  trackers=("wandb", "tensorboard", "mlflow")))
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
        # TensorBoard: our event file beside Tune's own in the trial folder, one image per video.
        trial_folder = videos.parent
        assert len(list(trial_folder.glob(f"events.out.tfevents.*.eval_recorder.{trial_id}"))) == 1
        assert len(list(trial_folder.glob("events.out.tfevents.*"))) == 2
        accumulator = EventAccumulator(str(trial_folder), size_guidance={"images": 0})
        accumulator.Reload()
        assert {tag: [event.step for event in accumulator.Images(tag)] for tag in accumulator.Tags()["images"]} == {
            "eval/video/episode_0": [1, 2], "eval/video/episode_1": [1, 2]}
        # MLflow: the trial's own local store, one run tagged with the trial id.
        client = MlflowClient(tracking_uri=f"sqlite:///{trial_folder}/mlflow.db")
        (mlflow_run,) = client.search_runs([client.get_experiment_by_name("eval_recorder").experiment_id])
        assert (mlflow_run.data.tags["eval_recorder.run_id"], mlflow_run.info.status) == (trial_id, "FINISHED")
        assert sorted(m.step for m in client.get_metric_history(mlflow_run.info.run_id, "eval/return_mean")) == [1, 2]
        folders.append(videos)
    assert len(set(folders)) == 2
    # The trials ran at the same time, each holding its own folder.
    starts = sorted(json.loads((folder / OWNER_FILE).read_text())["started"] for folder in folders)
    ends = [max(m["created"] for m in read_manifest(folder)) for folder in folders]
    assert starts[1] < min(ends)
