"""TensorBoardSink, read back by TensorBoard's own event reader: animated GIFs under stable
tags at step = training iteration, captions, scalars, resumed runs, one-time failures."""

from __future__ import annotations

import io
import logging
import re
import socket

import av
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboardX import SummaryWriter

from eval_recorder.tensorboard_sink import TensorBoardSink
from support.videos import decoded_frames, tiny_mp4

EVERYTHING = {kind: 0 for kind in (event_accumulator.IMAGES, event_accumulator.SCALARS,
                                   event_accumulator.TENSORS, event_accumulator.HISTOGRAMS,
                                   event_accumulator.COMPRESSED_HISTOGRAMS, event_accumulator.AUDIO)}


def record(*, iteration: int, episode_index: int, fps: int = 5) -> dict:
    """A sidecar record (the fields the sink and the caption read)."""
    return {"training_iteration": iteration, "env_steps": 200 * iteration, "episode_index": episode_index,
            "episode_return": -12.5, "num_agents": 3, "agents_arrived": 2, "fps": fps}


def mp4(folder, name: str, **kwargs):
    path = folder / name
    path.write_bytes(tiny_mp4(**kwargs))
    return path


def read_back(log_dir) -> event_accumulator.EventAccumulator:
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance=EVERYTHING)
    accumulator.Reload()
    return accumulator


def gif_frames(encoded: bytes) -> tuple[int, list[int]]:
    """(number of frames, each frame's duration in ms) of a GIF."""
    with Image.open(io.BytesIO(encoded)) as gif:
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
        return gif.n_frames, durations


def test_videos_become_animated_gifs_under_stable_tags_with_captions_and_scalars(tmp_path):
    small = mp4(tmp_path, "small.mp4", frames=6, width=64, height=48, fps=5)
    large = mp4(tmp_path, "large.mp4", frames=6, width=640, height=360, fps=5, shade=20)
    log_dir = tmp_path / "run"
    sink = TensorBoardSink(log_dir=log_dir, run_id="run-a")
    sink.start()
    sink.log_video(small, record(iteration=3, episode_index=0), step=3)
    sink.log_metrics({"eval/return_mean": 1.5, "env_steps": 600, "eval/scenario": "a.pkl"}, step=3)
    sink.log_video(large, record(iteration=5, episode_index=1), step=5)
    sink.finish()
    sink.finish()

    events = read_back(log_dir)
    tags = events.Tags()
    assert sorted(tags["images"]) == ["eval/video/episode_0", "eval/video/episode_1"]
    assert sorted(tags["scalars"]) == ["env_steps", "eval/return_mean"]
    assert sorted(tags["tensors"]) == ["eval/caption/episode_0", "eval/caption/episode_1"]
    for tag, step, size in (("eval/video/episode_0", 3, (64, 48)), ("eval/video/episode_1", 5, (320, 180))):
        (image,) = events.Images(tag)
        assert (image.step, (image.width, image.height)) == (step, size)
        assert image.encoded_image_string.startswith(b"GIF89a")
        assert gif_frames(image.encoded_image_string) == (decoded_frames(str(small)), [200] * 6)
        with Image.open(io.BytesIO(image.encoded_image_string)) as gif:
            assert gif.size == size and gif.info["loop"] == 0
    assert [(s.step, s.value) for s in events.Scalars("eval/return_mean")] == [(3, 1.5)]
    assert [(s.step, s.value) for s in events.Scalars("env_steps")] == [(3, 600.0)]
    captions = {tag: [(t.step, t.tensor_proto.string_val[0].decode()) for t in events.Tensors(tag)]
                for tag in tags["tensors"]}
    assert captions == {
        "eval/caption/episode_0": [(3, "iteration 3 · 600 env steps · episode 0 · 2/3 arrived · return -12.50")],
        "eval/caption/episode_1": [(5, "iteration 5 · 1000 env steps · episode 1 · 2/3 arrived · return -12.50")],
    }


def test_a_resumed_run_adds_to_the_same_run_beside_other_event_files(tmp_path):
    video = mp4(tmp_path, "video.mp4", frames=4, width=32, height=24, fps=5)
    log_dir = tmp_path / "run"
    with SummaryWriter(logdir=str(log_dir)) as tune:  # as Ray Tune writes its own results
        tune.add_scalar("ray/tune/episode_reward_mean", 2.0, 1)
    for step in (3, 5):  # the run, then the run resumed: each its own process's sink
        sink = TensorBoardSink(log_dir=log_dir, run_id="run-a")
        sink.start()
        sink.log_video(video, record(iteration=step, episode_index=0), step=step)
        sink.log_metrics({"eval/return_mean": float(step)}, step=step)
        sink.finish()

    events = read_back(log_dir)
    assert [image.step for image in events.Images("eval/video/episode_0")] == [3, 5]
    assert [(s.step, s.value) for s in events.Scalars("eval/return_mean")] == [(3, 3.0), (5, 5.0)]
    assert [(s.step, s.value) for s in events.Scalars("ray/tune/episode_reward_mean")] == [(1, 2.0)]
    ours = sorted(path.name for path in log_dir.iterdir() if ".eval_recorder." in path.name)
    host = re.escape(socket.gethostname())
    assert len(ours) == 2 and len(list(log_dir.iterdir())) == 3
    for name in ours:
        assert re.fullmatch(rf"events\.out\.tfevents\.\d{{10}}\.{host}\.eval_recorder\.run-a(-2)?", name), name


def test_a_failure_is_said_once_and_turns_the_sink_off(tmp_path, caplog):
    not_a_video = tmp_path / "broken.mp4"
    not_a_video.write_bytes(b"not a video")
    with pytest.raises(Exception) as opening:
        av.open(str(not_a_video))
    video = mp4(tmp_path, "video.mp4", frames=4, width=32, height=24, fps=5)
    sink = TensorBoardSink(log_dir=tmp_path / "run", run_id="run-a")
    sink.start()
    assert sink.active
    event_file = sink.event_file
    written = event_file.read_bytes()

    with caplog.at_level(logging.WARNING):
        sink.log_video(not_a_video, record(iteration=3, episode_index=0), step=3)
        sink.log_video(video, record(iteration=3, episode_index=1), step=3)
        sink.log_metrics({"eval/return_mean": 1.5}, step=3)
        sink.finish()

    error = opening.value
    assert [r.getMessage() for r in caplog.records] == [
        f"tensorboard could not log video ({type(error).__name__}: {error}); "
        "tensorboard logging is off, videos are still saved locally."]
    assert not sink.active
    assert event_file.read_bytes() == written
    assert sink.where() == []


def test_where_names_the_command_that_opens_the_run(tmp_path):
    log_dir = tmp_path / "my runs" / "a"
    sink = TensorBoardSink(log_dir=log_dir, run_id="run-a")
    assert sink.where() == []
    sink.start()
    assert sink.where() == []  # nothing written yet
    sink.log_metrics({"env_steps": 200}, step=1)
    sink.finish()
    assert sink.where() == [f"tensorboard: tensorboard --logdir '{log_dir}' --samples_per_plugin images=10000"]
