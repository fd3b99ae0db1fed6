"""MlflowSink against real MLflow: one run per run (continued on resume), videos as artifacts
byte for byte, metrics at training iterations, and an unreachable server said once, fast."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from eval_recorder.mlflow_sink import RUN_ID_TAG, MlflowSink  # noqa: E402
from eval_recorder.naming import caption, video_stem  # noqa: E402
from support.videos import tiny_mp4  # noqa: E402

RUN_ID = "r20260101-abc"
CONFIG = {"algorithm": {"lr": 0.0003, "hidden": [16]}, "env": "flatland", "seed": 7, "long": "x" * 7000}


def _video(folder: Path, *, iteration: int, episode: int = 0, shade: int = 0) -> tuple[Path, dict]:
    """A real mp4 with its sidecar json next to it, as the store writes them."""
    stem = video_stem(env="flatland", training_iteration=iteration, evaluation_round=iteration, episode_index=episode,
                      run_id=RUN_ID)
    path = folder / f"{stem}.mp4"
    path.write_bytes(tiny_mp4(frames=6, width=64, height=48, shade=shade))
    metadata = {"training_iteration": iteration, "env_steps": 200 * iteration, "episode_index": episode,
                "episode_return": -4.5, "run_id": RUN_ID}
    path.with_suffix(".json").write_text(json.dumps(metadata))
    return path, metadata


def _runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("eval_recorder")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{RUN_ID}'")


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _files(client: MlflowClient, run_id: str, folder: str) -> list[str]:
    return sorted(info.path for info in client.list_artifacts(run_id, folder))


def test_one_run_holds_videos_metrics_and_params(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    first, first_meta = _video(videos, iteration=3)
    second, second_meta = _video(videos, iteration=5, shade=90)
    sink = MlflowSink(run_id=RUN_ID, run_dir=tmp_path / "run", config=CONFIG)
    sink.start()
    assert sink.active
    sink.log_video(first, first_meta, step=3)
    sink.log_metrics({"eval/return_mean": 1.5, "env_steps": 600}, step=3)
    sink.log_video(second, second_meta, step=5)
    sink.log_metrics({"eval/return_mean": 2.0}, step=5)
    sink.finish(0)
    assert not sink.active

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = _runs(client)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == RUN_ID
    assert _history(client, run_id, "eval/return_mean") == [(3, 1.5), (5, 2.0)]
    assert _history(client, run_id, "env_steps") == [(3, 600.0)]
    assert _files(client, run_id, "videos") == ["videos/it000003", "videos/it000005"]
    for path, folder in ((first, "videos/it000003"), (second, "videos/it000005")):
        assert _files(client, run_id, folder) == [f"{folder}/{path.stem}.json", f"{folder}/{path.name}"]
        downloaded = Path(client.download_artifacts(run_id, f"{folder}/{path.name}", str(tmp_path)))
        assert downloaded.read_bytes() == path.read_bytes()
    assert run.data.tags[f"video.{first.stem}"] == caption(first_meta) == \
        "iteration 3 · 600 env steps · episode 0 · return -4.50"
    assert run.data.params == {"algorithm.lr": "0.0003", "algorithm.hidden": "[16]", "env": "flatland",
                               "seed": "7", "long": "x" * 6000}
    assert (tmp_path / "run" / "mlartifacts").is_dir()


def test_resume_continues_the_same_run_and_logs_nothing_twice(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    videos = tmp_path / "videos"
    videos.mkdir()
    first, first_meta = _video(videos, iteration=5)
    later, later_meta = _video(videos, iteration=7)
    sink = MlflowSink(run_id=RUN_ID, run_dir=tmp_path / "run", config=CONFIG)
    sink.start()
    sink.log_video(first, first_meta, step=5)
    sink.log_metrics({"eval/return_mean": 2.0}, step=5)
    sink.finish(143)

    resumed = MlflowSink(run_id=RUN_ID, run_dir=tmp_path / "run", config=CONFIG, resume=True)
    resumed.start()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = _runs(client)
    assert resumed.mlflow_run_id == sink.mlflow_run_id == run.info.run_id
    assert run.info.status == "RUNNING"
    resumed.log_metrics({"eval/return_mean": 2.5}, step=5)  # iteration 5 played again: already there
    resumed.log_video(later, later_meta, step=7)
    resumed.log_metrics({"eval/return_mean": 3.0}, step=7)
    resumed.finish(0)

    (run,) = _runs(client)
    assert run.info.status == "FINISHED"
    assert _history(client, run.info.run_id, "eval/return_mean") == [(5, 2.0), (7, 3.0)]
    assert _files(client, run.info.run_id, "videos") == ["videos/it000005", "videos/it000007"]
    assert run.data.params["algorithm.lr"] == "0.0003"
    assert [r.getMessage() for r in caplog.records] == []


def test_refused_server_is_said_once_and_quickly(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path, metadata = _video(tmp_path, iteration=1)
    began = time.monotonic()
    sink = MlflowSink(run_id=RUN_ID, run_dir=tmp_path / "run", tracking_uri="http://127.0.0.1:9")
    sink.start()
    sink.log_video(path, metadata, step=1)
    sink.log_metrics({"eval/return_mean": 1.0}, step=1)
    sink.finish(0)
    assert time.monotonic() - began < 10
    assert not sink.active
    assert sink.where() == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "mlflow could not reach http://127.0.0.1:9 (ConnectionRefusedError: [Errno 111] Connection refused); "
        "mlflow logging is off, videos are still saved locally."]
    assert not (tmp_path / "run").exists()


def test_exit_code_gives_the_run_status(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    for exit_code, status, give_up in ((143, "KILLED", None), (130, "KILLED", threading.Event()), (1, "FAILED", None)):
        sink = MlflowSink(run_id=f"{RUN_ID}-{exit_code}", run_dir=tmp_path / "run")
        sink.start()
        sink.finish(exit_code, give_up=give_up)
        assert client.get_run(sink.mlflow_run_id).info.status == status, exit_code


def test_where_says_the_command_that_opens_the_local_store(tmp_path):
    sink = MlflowSink(run_id=RUN_ID, run_dir=tmp_path / "run")
    assert sink.where() == []
    sink.start()
    sink.finish(0)
    assert sink.where() == [f"mlflow: mlflow ui --backend-store-uri sqlite:///{tmp_path / 'run' / 'mlflow.db'}"]
