"""Values that cannot work are refused before anything is claimed: one sentence, exit 2,
the video folder never created."""

from __future__ import annotations

import subprocess

import pytest

from conftest import run_eval_command


def run(tmp_path, *overrides, video_dir=None):
    videos = video_dir or tmp_path / "videos"
    proc = subprocess.run(
        run_eval_command(*overrides, f"recording.video_dir={videos}", f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=180,
    )
    return proc, videos


@pytest.mark.parametrize(("overrides", "sentence"), [
    (("recording.max_side=7",), "recording.max_side must be 0 (no cap) or at least 16 pixels, got 7."),
    (("recording.fps=1000",), "recording.fps must be between 1 and 60 (what video players handle), got 1000."),
    # 500 trains on the 30x30 grid: built, reset and drawn in about 1.2 s on this machine.
    (("env.n_agents=500", "env.build_timeout=0.2"),
     "the built-in Flatland env (small) was not built and reset within 0.2 s (env.build_timeout); check its settings "
     "(a grid too small for its trains never finishes), or raise env.build_timeout."),
], ids=["max_side", "fps", "env-build-timeout"])
def test_bad_values_are_refused_before_anything_is_claimed(tmp_path, overrides, sentence):
    proc, videos = run(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {sentence}"
    assert "Ray" not in proc.stdout
    assert not videos.exists()


def test_a_video_dir_in_a_symlink_loop_is_refused(tmp_path):
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    videos = tmp_path / "loop_a" / "videos"
    proc, _ = run(tmp_path, video_dir=videos)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: recording.video_dir {videos} cannot be resolved to a folder (a symlink loop); "
        f"choose another recording.video_dir.")
    assert "Ray" not in proc.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["loop_a", "loop_b"]  # the refused run left no folder
