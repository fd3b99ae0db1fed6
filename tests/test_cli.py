"""Bad input on the command line: a clear message, a non-zero exit, nothing written."""

from __future__ import annotations

import subprocess

from conftest import run_eval_command
from eval_recorder.errors import TRAINING_RENDER_REFUSED


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


def test_ray_client_addresses_are_refused_in_one_sentence(tmp_path):
    proc, videos = run(tmp_path, "ray.address=ray://10.0.0.5:10001")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: ray.address=ray://10.0.0.5:10001 is a Ray Client address, which needs ray[client] (not installed); "
        "give the head's address as printed by `ray start --head` (ray.address=HOST:6379), or ray.address=auto on "
        "a cluster node."
    ]
    assert proc.stdout == ""
    assert not videos.exists()


def test_a_refused_run_leaves_no_run_folder_behind(tmp_path):
    """With Hydra's default run folder (outputs/<date>/<time>/, made before the job starts)."""
    proc = subprocess.run(run_eval_command("env.render=human"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {TRAINING_RENDER_REFUSED}"]
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_keeps_a_run_folder_that_existed_before(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me\n")
    proc = subprocess.run(run_eval_command("env.render=human", f"hydra.run.dir={run_dir}"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert (run_dir / "notes.txt").read_text() == "keep me\n"
