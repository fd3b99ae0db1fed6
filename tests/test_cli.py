"""Bad input on the command line: a clear message, a non-zero exit, nothing written."""

from __future__ import annotations

import subprocess

from conftest import run_eval_command
from eval_recorder.callback import TRAINING_RENDER_REFUSED


def run(tmp_path, *overrides):
    videos = tmp_path / "videos"
    proc = subprocess.run(
        run_eval_command(*overrides, f"recording.video_dir={videos}", f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=120,
    )
    return proc, videos


def test_render_for_training_is_refused_before_anything_starts(tmp_path):
    proc, videos = run(tmp_path, "env.render=human")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {TRAINING_RENDER_REFUSED}"
    assert "Ray" not in proc.stdout
    assert not videos.exists()


def test_unknown_key_fails_with_hydras_message(tmp_path):
    proc, videos = run(tmp_path, "training.iterationz=3")
    assert proc.returncode == 1
    assert "Could not override 'training.iterationz'." in proc.stderr
    assert "Key 'iterationz' not in 'TrainingConfig'" in proc.stderr
    assert not videos.exists()


def test_wrong_type_fails_with_hydras_message(tmp_path):
    proc, videos = run(tmp_path, "training.iterations=many")
    assert proc.returncode == 1
    assert "Value 'many' of type 'str' could not be converted to Integer" in proc.stderr
    assert not videos.exists()


def test_unknown_wandb_mode_fails_with_hydras_message(tmp_path):
    proc, videos = run(tmp_path, "wandb.mode=cloud")
    assert proc.returncode == 1
    assert "Invalid value 'cloud', expected one of [offline, online, disabled]" in proc.stderr
    assert not videos.exists()


def test_impossible_runner_count_is_refused(tmp_path):
    proc, videos = run(tmp_path, "training.num_env_runners=2", "evaluation.num_env_runners=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: 3 env runners need 3 CPUs but ray.num_cpus=2; lower training.num_env_runners / "
        "evaluation.num_env_runners or raise ray.num_cpus."
    )
    assert not videos.exists()
