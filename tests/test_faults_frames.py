"""Frames checked: a ``render()`` that raises, returns nothing, changes its frames' size in
the middle of an episode or returns another dtype than uint8 (float frames in [0, 1]: refused,
not scaled) is one clear case each. Before anything is claimed (the probe) the env is refused
in one sentence naming it and what it returned; in the middle of an episode only that
episode's video is dropped, with its cause, and the other episodes are recorded as rendered
(never a stretched or black video). Real envs, real encoder, videos decoded back; the runs
through the library path and run_eval.py are in the slow tests at the end."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import av
import pytest

from conftest import ROOT, TINY
from eval_recorder import RecordEpisodes
from eval_recorder.episode_record import EpisodeRecord
from eval_recorder.video_index import read_manifest
from support.faulty_envs import make

AT_START = {
    "raises": "the env Faulty raised TypeError in render() (render() takes 1 positional argument but 2 were given); "
              "fix its render() so that it returns rgb_array frames (uint8 arrays of shape (height, width, 3)).",
    "none": "the env Faulty returned NoneType from render(), not an rgb_array frame; make the evaluation env with "
            "render_mode='rgb_array' so that its frames can be recorded.",
    "shape": "the env Faulty returned frames of shape (80, 80, 3) from render() after frames of shape (64, 64, 3) "
             "in the same episode; make its render() keep one frame size for a whole episode.",
    "float": "the env Faulty returned frames of dtype float32 from render(), not uint8; make its render() return "
             "uint8 RGB frames (values 0 to 255: e.g. (frame * 255).astype(np.uint8) for floats in [0, 1]).",
}


def decoded(episode):
    with av.open(io.BytesIO(episode.mp4)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def play(env, episodes, seed=5):
    lengths = []
    env.reset(seed=seed)
    for _ in range(episodes):
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(1)
            steps, done = steps + 1, terminated or truncated
        lengths.append(steps)
        env.reset()
    return lengths


@pytest.mark.parametrize("fault", sorted(AT_START))
def test_at_start_the_probe_refuses_the_env_naming_what_render_returned(fault):
    env = RecordEpisodes(make({"fault": fault}), overlay=False)
    assert env.probe(seed=1) == env.problem == AT_START[fault]
    assert not env.recording


@pytest.mark.parametrize("fault", sorted(AT_START))
def test_mid_episode_only_that_episode_is_dropped_and_the_next_ones_are_recorded(fault):
    env = RecordEpisodes(make({"faults": ["ok", fault, "ok"], "step": 3}), overlay=False)
    assert env.probe(seed=1) is None  # its first episode (the probe's reset) renders well
    lengths = play(env, 3)
    handed, (dropped,) = env.pop_finished(), env.pop_dropped()
    # The probe's reset was the env's first episode ("ok"): the first one played is its second, the
    # faulty one, handed over without a video, with its replay record.
    assert [(episode.episode_length, bool(episode.mp4), episode.record_kind) for episode in handed] == [
        (lengths[0], False, "episode"), (lengths[1], True, "episode"), (lengths[2], True, "episode")]
    assert (handed[0].frames, handed[0].env_seed, dropped.env_seed) == (0, 5, 5)
    assert EpisodeRecord.from_bytes(handed[0].record).steps == lengths[0]
    finished = [episode for episode in handed if episode.mp4]
    assert dropped.cause == AT_START[fault]
    assert dropped.step == (4 if fault == "shape" else 3)  # the shape changes from the frame after the step-3 one
    assert dropped.env_label == "faulty"
    for episode in finished:  # as rendered: 64x64, not black, one frame per step plus the reset's
        frames = decoded(episode)
        assert len(frames) == episode.frames == episode.episode_length + 1
        assert {frame.shape for frame in frames} == {(64, 64, 3)}
        assert all(frame.mean() > 100 for frame in frames)
    assert env.recording  # the episode after the last one is recorded too


def test_frames_of_another_size_in_the_next_episode_are_recorded_at_that_size():
    """The size is the episode's own: a new episode may have another (not stretched to the first)."""
    env = RecordEpisodes(make({}), overlay=False)
    play(env, 1)
    env.env.size = 48
    env.reset(seed=3)
    while not env.step(1)[2] and env.env.steps < 20:
        pass
    first, second = env.pop_finished()
    assert (first.width, first.height, second.width, second.height) == (64, 64, 48, 48)
    assert {frame.shape for frame in decoded(second)} == {(48, 48, 3)}


# ---- the library path (add_recording) and run_eval.py, for real -------------------------------------


def library_config(tmp_path, env_config, *, episodes=2):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    from eval_recorder import RecordingOptions, add_recording

    register_env("faulty_env", make)
    config = (
        PPOConfig().environment("faulty_env", env_config=env_config)
        .env_runners(num_env_runners=0)
        .training(train_batch_size_per_learner=100, minibatch_size=50, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [8]})
        .evaluation(evaluation_interval=1, evaluation_duration=episodes, evaluation_duration_unit="episodes",
                    evaluation_num_env_runners=1)
    )
    return add_recording(config, RecordingOptions(video_dir=str(tmp_path / "videos"), run_id="frames",
                                                  wandb_mode="disabled"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(AT_START))
def test_the_library_path_refuses_at_start_before_the_folder_is_claimed(fault, ray_local, tmp_path):
    from eval_recorder import recording_session
    from eval_recorder.errors import RunnerRefused

    config = library_config(tmp_path, {"fault": fault})
    with recording_session(config), pytest.raises(RunnerRefused) as refused:
        config.build_algo()
    assert str(refused.value) == AT_START[fault]
    assert not (tmp_path / "videos").exists()


MID = ["raises", "none", "shape", "float"]  # in episodes 2, 4, 6 and 8 of 9, from the frame of step 3 on


def dropped_warning(fault: str, name: str = "Faulty") -> str:
    step = 4 if fault == "shape" else 3
    return (rf"evaluation round 1: the video of an episode \(seed \d+\) of eval runner 1 is dropped at step {step}, "
            rf"the others are recorded: {re.escape(AT_START[fault].replace('Faulty', name))}")


def check_five_of_nine_kept(videos, label: str, run_id: str) -> None:
    """Episodes 1, 3, 5 and 7 of the nine lost their videos: their lines name their replay records only."""
    manifest = read_manifest(videos)
    stems = [f"{label}-it000001-ev0001-ep{index:03d}-{run_id}" for index in range(9)]
    assert [(r["episode_index"], r.get("file"), r["record"]) for r in manifest] == [
        (index, f"{stem}.mp4" if index % 2 == 0 else None, f"{stem}.episode.npz") for index, stem in enumerate(stems)]
    assert all((videos / r["record"]).is_file() for r in manifest)
    manifest = [r for r in manifest if "file" in r]
    for record in manifest:  # as rendered: 64x64, not black, every frame
        with av.open(str(videos / record["file"])) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(frames) == record["frames"] == record["episode_length"] + 1
        assert {frame.shape for frame in frames} == {(64, 64, 3)}
        assert all(frame.mean() > 100 for frame in frames)


@pytest.mark.slow
def test_the_library_path_drops_each_faulty_episode_with_one_warning_and_keeps_the_others(ray_local, tmp_path,
                                                                                          caplog):
    from support.training import train

    # The eval runner's check (its env's first reset) is the env's first episode.
    faults = ["ok", "ok", *(item for fault in MID for item in (fault, "ok"))]
    config = library_config(tmp_path, {"faults": faults, "step": 3}, episodes=9)
    with caplog.at_level(logging.INFO, logger="eval_recorder"):
        train(config, iterations=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("eval_")]
    assert len(warnings) == 4, warnings
    for fault, warning in zip(MID, warnings):
        assert re.fullmatch(dropped_warning(fault), warning), warning
    check_five_of_nine_kept(tmp_path / "videos", "faulty_env", "frames")


CLI_RUN = ("env.factory=support.faulty_envs:make", "wandb.mode=disabled")


def run_eval(tmp_path, *overrides):
    return subprocess.run(
        [sys.executable, str(ROOT / "run_eval.py"), *TINY, *CLI_RUN, f"recording.video_dir={tmp_path / 'videos'}",
         f"hydra.run.dir={tmp_path / 'run'}", *overrides],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")}, cwd=ROOT,
    )


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(AT_START))
def test_run_eval_refuses_at_start_with_exit_2_and_nothing_written(fault, tmp_path):
    proc = run_eval(tmp_path, f"+env.config.fault={fault}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {AT_START[fault]}"
    assert not (tmp_path / "videos").exists()


@pytest.mark.slow
def test_run_eval_drops_each_faulty_episode_with_one_warning_and_keeps_the_others(tmp_path):
    faults = ",".join(["ok", *(item for fault in MID for item in (fault, "ok"))])
    proc = run_eval(tmp_path, f"+env.config.faults=[{faults}]", "+env.config.step=3", "evaluation.episodes=9",
                    "training.iterations=1", "wandb.run_id=faults")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4, warnings
    for fault, warning in zip(MID, warnings):
        assert re.fullmatch("warning: " + dropped_warning(fault), warning), warning
    check_five_of_nine_kept(tmp_path / "videos", "make", "faults")


def test_the_check_must_hear_from_every_eval_runner_before_the_folder_is_claimed():
    """An eval runner that does not answer (RLlib leaves it out of the answers) refuses the run."""
    from types import SimpleNamespace

    from eval_recorder.errors import RunnerRefused
    from eval_recorder.publisher import RUNNER_CHECK_SECONDS, check_eval_runners_record

    asked = {}

    def foreach_env_runner(probe, **options):
        asked.update(options)
        return [(None, "faulty", 2)]  # runner 1 never answered

    group = SimpleNamespace(num_remote_workers=lambda: 2, foreach_env_runner=foreach_env_runner)
    with pytest.raises(RunnerRefused) as refused:
        check_eval_runners_record(SimpleNamespace(eval_env_runner_group=group))
    assert str(refused.value) == (
        "only 1 of 2 eval runners answered the recording check within 300 s (heard from: 2); the others' env could not "
        "be made or reset in time, see the eval runners' log (Ray's logs folder) for why.")
    assert asked == {"local_env_runner": False, "healthy_only": False, "timeout_seconds": RUNNER_CHECK_SECONDS}
