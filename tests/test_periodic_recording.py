"""Periodic recorded evaluation during real PPO training on a real Flatland env.

Real Ray actors, real rendering and H.264 encoding, mp4s decoded back with PyAV, a real
offline wandb run read back from its transaction log.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle

import av
import numpy as np
import pytest
from PIL import Image
from ray.rllib.callbacks.callbacks import RLlibCallback

from conftest import TINY, compose_config, flatland_config
from eval_recorder.api import add_recording, recording_session
from eval_recorder.flatland.envs import register_env
from eval_recorder.frames import frames_rendered
from eval_recorder.gallery import render_gallery
from eval_recorder.options import RecordingOptions
from eval_recorder.training_record import read_training, train_returns
from eval_recorder.video_index import read_manifest
from eval_recorder.wandb_sink import video_key
from wandb_offline import history_rows, run_records

pytestmark = pytest.mark.slow  # real Ray / RLlib runs


class UserCallback(RLlibCallback):
    """A user's own callback: it must keep firing beside the recording callback."""

    train_results: list[int] = []  # driver side (this process)

    def on_train_result(self, *, result, **kwargs):
        UserCallback.train_results.append(result["training_iteration"])

    def on_episode_end(self, *, env_runner, metrics_logger, **kwargs):
        if env_runner.config.in_evaluation:
            metrics_logger.log_value("user_callback_eval_episodes", 1, reduce="sum")


def train(config, iterations):
    with recording_session(config):
        algo = config.build_algo()
        try:
            results = [algo.train() for _ in range(iterations)]
            training_frames = algo.env_runner_group.foreach_env_runner(lambda r: frames_rendered(),
                                                                       local_env_runner=False)
            eval_frames = algo.eval_env_runner_group.foreach_env_runner(lambda r: frames_rendered(),
                                                                        local_env_runner=False)
            eval_configs = algo.eval_env_runner_group.foreach_env_runner(
                lambda r: repr(r.config.to_dict()), local_env_runner=False
            )
        finally:
            algo.stop()
    return results, training_frames, eval_frames, eval_configs


def decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream.codec_context.name, stream.codec_context.pix_fmt, frames


@pytest.fixture(scope="module")
def serial_run(ray_local, tmp_path_factory):
    """2 iterations, evaluation after training each iteration on one remote eval runner,
    training on one remote training runner, a user callback, wandb offline."""
    register_env()
    tmp = tmp_path_factory.mktemp("serial")
    cfg = compose_config(*TINY, "training.num_env_runners=1", "evaluation.num_env_runners=1")
    options = RecordingOptions(video_dir=str(tmp / "videos"), run_id="serialrun", wandb_dir=str(tmp))
    UserCallback.train_results.clear()
    config = add_recording(flatland_config(cfg).callbacks(UserCallback), options)
    results, training_frames, eval_frames, eval_configs = train(config, iterations=2)
    return tmp, results, training_frames, eval_frames, eval_configs


def test_serial_videos_have_exact_names_in_training_order(serial_run):
    tmp, *_ = serial_run
    names = sorted(p.name for p in (tmp / "videos").glob("*.mp4"))
    assert names == [
        "flatland-it000001-ev0001-ep000-serialrun.mp4",
        "flatland-it000001-ev0001-ep001-serialrun.mp4",
        "flatland-it000002-ev0002-ep000-serialrun.mp4",
        "flatland-it000002-ev0002-ep001-serialrun.mp4",
    ]


def test_serial_tag_is_the_results_training_iteration_and_its_env_steps(serial_run):
    tmp, results, *_ = serial_run
    for path in sorted((tmp / "videos").glob("*.mp4")):
        sidecar = json.loads(path.with_suffix(".json").read_text())
        result = results[sidecar["evaluation_round"] - 1]
        assert sidecar["training_iteration"] == result["training_iteration"]
        assert sidecar["env_steps"] == result["env_runners"]["num_env_steps_sampled_lifetime"]
        assert sidecar["weights_seq_no"] == result["training_iteration"]  # one learner update per PPO iteration


def test_every_video_decodes_fully_and_matches_its_sidecar_and_manifest(serial_run):
    tmp, *_ = serial_run
    manifest = read_manifest(tmp / "videos")
    paths = sorted((tmp / "videos").glob("*.mp4"))
    assert [m["file"] for m in manifest] == [p.name for p in paths]
    for path, line in zip(paths, manifest):
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar == line
        data = path.read_bytes()
        assert (sidecar["bytes"], sidecar["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        codec, pix_fmt, frames = decode(path)
        assert (codec, pix_fmt) == ("h264", "yuv420p")
        # Every step from the reset frame to the last step is in the video.
        assert len(frames) == sidecar["frames"] == sidecar["episode_length"] + 1
        assert frames[0].shape == (sidecar["height"], sidecar["width"], 3)
        assert sidecar["num_agents"] == 2 and 0 <= sidecar["agents_arrived"] <= 2
        assert sidecar["completion"] == sidecar["agents_arrived"] / 2
        assert sidecar["run_id"] == "serialrun" and sidecar["checkpoint"] is None
        assert sidecar["runner"]["index"] == 1  # the remote eval runner encoded it


def test_training_runners_render_nothing_and_eval_runners_render_only_recorded_frames(serial_run):
    tmp, _, training_frames, eval_frames, _ = serial_run
    recorded = sum(m["frames"] for m in read_manifest(tmp / "videos"))
    assert training_frames == [0]
    # + the frame the encoder helper drew, before the folder was claimed, to show that it records
    assert eval_frames == [recorded + 1]


def test_eval_runners_never_see_the_video_folder_and_results_hold_no_video_bytes(serial_run):
    tmp, results, _, _, eval_configs = serial_run
    assert len(eval_configs) == 1
    assert "videos" not in eval_configs[0] and str(tmp) not in eval_configs[0]
    pickled = pickle.dumps(results)
    assert b"ftypisom" not in pickled
    for path in (tmp / "videos").glob("*.mp4"):
        assert path.read_bytes()[:4096] not in pickled


def test_users_own_callback_still_fires(serial_run):
    _, results, *_ = serial_run
    assert UserCallback.train_results == [1, 2]
    for result in results:
        assert result["evaluation"]["env_runners"]["user_callback_eval_episodes"] == 2


def test_wandb_offline_run_has_every_video_once_at_its_iteration(serial_run):
    tmp, *_ = serial_run
    (run_dir,) = (tmp / "wandb").glob("offline-run-*-serialrun")
    rows = history_rows(run_dir)
    logged = {}
    for row in rows:
        for episode_index in range(2):
            sha = row.get(f"{video_key(episode_index)}/sha256")
            if sha is not None:
                assert (row["_step"], episode_index) not in logged
                logged[(row["_step"], episode_index)] = sha
                assert row[f"{video_key(episode_index)}/caption"].startswith(f"iteration {row['_step']} · ")
    on_disk = {(m["training_iteration"], m["episode_index"]): m["sha256"] for m in read_manifest(tmp / "videos")}
    assert logged == on_disk
    table_rows = [row for row in rows if "eval/episodes/_type" in row]
    assert [(row["_step"], row["eval/episodes/_type"], row["eval/episodes/nrows"]) for row in table_rows] == [
        (2, "table-file", 4)
    ]
    metrics = {(r.metric.glob_name or r.metric.name, r.metric.step_metric)
               for r in run_records(run_dir) if r.WhichOneof("record_type") == "metric"}
    assert {("eval/*", "training_iteration"), ("train/*", "training_iteration")} <= metrics
    eval_rows = [row for row in rows if "eval/completion_rate" in row]
    assert [row["_step"] for row in eval_rows] == [1, 2]
    for row in eval_rows:
        assert row["training_iteration"] == row["_step"]  # the step metric, in every row
        videos = [m for m in read_manifest(tmp / "videos") if m["training_iteration"] == row["_step"]]
        assert row["eval/completion_rate"] == sum(m["completion"] for m in videos) / 2
        assert row["eval/return_mean"] == sum(m["episode_return"] for m in videos) / 2


def test_each_video_has_its_last_frame_as_poster_and_the_gallery_plots_the_training_return(serial_run):
    tmp, results, *_ = serial_run
    videos = tmp / "videos"
    for record in read_manifest(videos):
        assert record["poster"] == record["file"].removesuffix(".mp4") + ".jpg"
        *_, frames = decode(videos / record["file"])
        with Image.open(videos / record["poster"]) as poster:
            assert np.abs(np.asarray(poster.convert("RGB"), dtype=np.int16) - frames[-1]).mean() < 10  # JPEG of rails
    # One line per train() call, with RLlib's own training return; the round's page has both.
    returns = [result["env_runners"].get("episode_return_mean") for result in results]
    assert read_training(videos) == [
        {"training_iteration": n, "env_steps": result["env_runners"]["num_env_steps_sampled_lifetime"],
         "episode_return_mean": value if value is not None and math.isfinite(value) else None, "run_id": "serialrun"}
        for n, (result, value) in enumerate(zip(results, returns), start=1)
    ]
    page = (videos / "index.html").read_text()
    assert page == render_gallery(read_manifest(videos), posters={r["poster"] for r in read_manifest(videos)},
                                  training=train_returns(read_training(videos)))
    assert page.count(' poster="') == 2 * len(read_manifest(videos))  # in its iteration and side by side


def test_parallel_evaluation_tags_the_previous_iteration(ray_local, tmp_path):
    register_env()
    cfg = compose_config(*TINY, "evaluation.num_env_runners=1", "evaluation.parallel_to_training=true")
    options = RecordingOptions(video_dir=str(tmp_path / "videos"), run_id="parallel", wandb_mode="disabled")
    results, *_ = train(add_recording(flatland_config(cfg), options), iterations=2)
    tags = [(m["evaluation_round"], m["training_iteration"], m["env_steps"]) for m in read_manifest(tmp_path / "videos")]
    steps_after_1 = results[0]["env_runners"]["num_env_steps_sampled_lifetime"]
    # train() call N evaluates the weights after N-1 iterations.
    assert tags == [(1, 0, 0), (1, 0, 0), (2, 1, steps_after_1), (2, 1, steps_after_1)]
    assert [r["training_iteration"] for r in results] == [1, 2]
