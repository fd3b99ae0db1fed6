"""wandb, TensorBoard and MLflow, for real: the main job with ``trackers=[wandb,tensorboard,mlflow]``,
run and then resumed (one run for every tracker), read back with wandb's own files and sync
command, TensorBoard's own EventAccumulator and HTTP server, and MLflow's own client; an MLflow
server that refuses connections costs one warning and no video."""

from __future__ import annotations

import io
import json
import logging
import shlex
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY, run_eval_command
from eval_recorder.options import RecordingOptions
from eval_recorder.session import RecordingSession
from eval_recorder.tags import TrainingTag
from eval_recorder.video_index import read_manifest
from helpers import episode
from support.videos import tiny_mp4
from wandb_offline import history_rows

RUN_ID = "tracked"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """Iteration 1, then the same run resumed up to iteration 2 (2 videos each)."""
    tmp = tmp_path_factory.mktemp("tracked")
    videos = tmp / "first" / "videos"
    common = (*TINY, f"wandb.run_id={RUN_ID}", f"recording.video_dir={videos}", "trackers=[wandb,tensorboard,mlflow]")
    first = subprocess.run(run_eval_command(*common, "training.iterations=1", f"hydra.run.dir={tmp / 'first'}"),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(run_eval_command(*common, "training.iterations=2", "recording.resume=true",
                                             f"hydra.run.dir={tmp / 'second'}"),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    return tmp / "first", videos, first, second


@pytest.mark.slow
def test_a_resumed_run_keeps_one_wandb_folder_and_one_sync_command_uploads_all(tracked):
    """The resumed process writes its offline part into the first run's wandb folder (next
    to the videos), not into its own Hydra folder; the printed command covers both parts,
    and together they hold the old and the new iterations."""
    run_folder, _videos, _first, second = tracked
    wandb_folder = run_folder / "wandb"
    parts = sorted(wandb_folder.glob(f"offline-run-*-{RUN_ID}"))
    assert len(parts) == 2
    assert not (run_folder.parent / "second" / "wandb").exists()
    lines = second.stdout.splitlines()
    assert lines[1] == f"resuming run {RUN_ID} from {run_folder / 'checkpoints' / 'it000001'}"
    assert f"wandb run: {parts[1]}" in lines
    assert f"upload it with: wandb sync {wandb_folder}" in lines
    iterations = sorted({row["training_iteration"] for part in parts for row in history_rows(part)})
    assert iterations == [1, 2]
    video_steps = [row["_step"] for part in parts for row in history_rows(part) if "eval/video/episode_0/sha256" in row]
    assert video_steps == [1, 2]
    # wandb's own listing of what that command uploads: both parts of the run
    dry_run = subprocess.run([str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run", str(wandb_folder)],
                             capture_output=True, text=True, timeout=120)
    listing = (dry_run.stdout + dry_run.stderr).splitlines()
    assert "wandb: Would sync 2 run(s):" in listing, listing
    listed = {Path(line.split()[-1]).resolve() for line in listing if line.endswith(".wandb")}  # via latest-run too
    assert listed == {part / f"run-{RUN_ID}.wandb" for part in parts}


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_tensorboard_holds_one_animated_image_per_stored_video_at_its_iteration(tracked):
    run_folder, videos, _first, _second = tracked
    records = read_manifest(videos)
    assert [(r["training_iteration"], r["episode_index"]) for r in records] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # One event file per process, beside each other in the run's folder: one TensorBoard run.
    assert len(list(run_folder.glob(f"events.out.tfevents.*.eval_recorder.{RUN_ID}*"))) == 2
    accumulator = _accumulator(run_folder)
    assert sorted(accumulator.Tags()["images"]) == ["eval/video/episode_0", "eval/video/episode_1"]
    for record in records:
        (image,) = [event for event in accumulator.Images(f"eval/video/episode_{record['episode_index']}")
                    if event.step == record["training_iteration"]]
        assert image.encoded_image_string.startswith(b"GIF89a")
        gif = Image.open(io.BytesIO(image.encoded_image_string))
        assert (gif.n_frames, gif.info["duration"]) == (record["frames"], 100)  # fps 10
    for iteration in (1, 2):
        returns = [r["episode_return"] for r in records if r["training_iteration"] == iteration]
        (scalar,) = [event for event in accumulator.Scalars("eval/return_mean") if event.step == iteration]
        assert scalar.value == pytest.approx(sum(returns) / len(returns))
    assert [event.step for event in accumulator.Scalars("eval/videos")] == [1, 2]
    assert [event.step for event in accumulator.Scalars("env_steps")] == [1, 1, 2, 2]  # training, then evaluation


@pytest.mark.slow
def test_the_summary_prints_the_commands_that_open_each_tracker(tracked):
    run_folder, _videos, first, second = tracked
    for proc in (first, second):
        lines = proc.stdout.splitlines()
        assert f"tensorboard: tensorboard --logdir {run_folder} --samples_per_plugin images=10000" in lines
        assert f"mlflow: mlflow ui --backend-store-uri sqlite:///{run_folder}/mlflow.db" in lines


@pytest.mark.slow
def test_the_printed_tensorboard_command_serves_the_videos_over_http(tracked):
    """The command the run printed, as printed (plus a port on localhost), lists the tags
    and every iteration's animated image through TensorBoard's HTTP API."""
    run_folder, _videos, _first, second = tracked
    (line,) = [line for line in second.stdout.splitlines() if line.startswith("tensorboard: ")]
    command = shlex.split(line.removeprefix("tensorboard: "))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name(command[0])), *command[1:], "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        expected = ["eval/video/episode_0", "eval/video/episode_1"]
        deadline, images = time.monotonic() + 90, {}
        while time.monotonic() < deadline and sorted(images.get(".", {})) != expected:  # it loads the files in turn
            try:
                with urllib.request.urlopen(f"{base}/images/tags", timeout=5) as answer:
                    images = json.load(answer)
            except OSError:
                pass
            time.sleep(0.5)
        assert sorted(images["."]) == expected
        query = urllib.parse.urlencode({"run": ".", "tag": expected[0], "sample": 0})
        with urllib.request.urlopen(f"{base}/images/images?{query}", timeout=10) as answer:
            entries = json.load(answer)
        assert [entry["step"] for entry in entries] == [1, 2]
        with urllib.request.urlopen(f"{base}/images/individualImage?{entries[1]['query']}", timeout=10) as answer:
            assert answer.read().startswith(b"GIF89a")
        with urllib.request.urlopen(f"{base}/scalars/tags", timeout=10) as answer:
            assert {"eval/return_mean", "eval/videos", "env_steps"} <= set(json.load(answer)["."])
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_holds_one_run_across_the_resume_with_every_video_and_metric_once(tracked, tmp_path):
    from mlflow.tracking import MlflowClient

    run_folder, videos, *_ = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{run_folder}/mlflow.db")
    experiment = client.get_experiment_by_name("eval_recorder")
    (run,) = client.search_runs([experiment.experiment_id])
    assert (run.data.tags["eval_recorder.run_id"], run.info.status) == (RUN_ID, "FINISHED")
    history = client.get_metric_history(run.info.run_id, "eval/return_mean")
    assert sorted(metric.step for metric in history) == [1, 2]
    assert run.data.params["env.n_agents"] == "2"
    records = read_manifest(videos)
    for iteration in (1, 2):
        stems = sorted(Path(r["file"]).stem for r in records if r["training_iteration"] == iteration)
        listed = sorted(item.path for item in client.list_artifacts(run.info.run_id, f"videos/it{iteration:06d}"))
        assert listed == sorted(f"videos/it{iteration:06d}/{stem}{suffix}" for stem in stems
                                for suffix in (".json", ".mp4"))
    for record in records:
        artifact = f"videos/it{record['training_iteration']:06d}/{record['file']}"
        downloaded = client.download_artifacts(run.info.run_id, artifact, str(tmp_path))
        assert Path(downloaded).read_bytes() == (videos / record["file"]).read_bytes()


def test_an_mlflow_server_that_refuses_connections_is_said_once_and_costs_no_video(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    videos = tmp_path / "videos"
    options = RecordingOptions(video_dir=str(videos), run_id="refused", trackers=("mlflow",),
                               mlflow_tracking_uri="http://127.0.0.1:9")
    started = time.monotonic()
    with RecordingSession(options) as session:
        session.open()
        for iteration in (1, 2):
            session.begin_round()
            for _ in range(2):
                assert session.publish(episode(mp4=tiny_mp4()),
                                       TrainingTag(iteration, 100 * iteration)) is not None
            session.end_round()
            session.log_training({"env_steps": 100 * iteration}, step=iteration)
    assert time.monotonic() - started < 30
    assert [(r["training_iteration"], r["episode_index"]) for r in read_manifest(videos)] == [
        (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "mlflow could not reach http://127.0.0.1:9 (ConnectionRefusedError: [Errno 111] Connection refused); "
        "mlflow logging is off, videos are still saved locally."]
