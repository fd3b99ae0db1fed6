"""`python run_eval.py` as a user runs it: a real subprocess, real Ray, real files."""

from __future__ import annotations

import json
import re
import subprocess

import av
import pytest

from conftest import TINY, run_eval_command
from eval_recorder.video_index import MANIFEST, read_manifest
from helpers import continue_command, snapshot


pytestmark = pytest.mark.slow  # every test here runs the real main job (20-60 s each)


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """The main job, 2 iterations, into a folder that already holds other files."""
    tmp = tmp_path_factory.mktemp("main")
    videos = tmp / "videos"
    videos.mkdir()
    # Earlier files, one of them under exactly the name our first video would get.
    (videos / "flatland-it000001-ev0001-ep000-mainrun.mp4").write_bytes(b"an earlier video, not ours")
    (videos / "notes.txt").write_text("keep me\n")
    (videos / MANIFEST).write_text('{"file": "old.mp4", "training_iteration": 0}\n')
    before = snapshot(videos)
    proc = subprocess.run(
        run_eval_command(*TINY, "training.iterations=2", "wandb.run_id=mainrun", f"recording.video_dir={videos}",
                         f"hydra.run.dir={tmp / 'run'}"),
        capture_output=True, text=True, timeout=600,
    )
    return tmp, videos, before, proc


def test_main_job_exits_0_and_prints_where_everything_is(main_run):
    tmp, videos, _, proc = main_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run mainrun: videos go to {videos}"
    iteration_lines = [line for line in lines if line.startswith("iteration ")]
    assert [line.split(" | ")[0] for line in iteration_lines] == ["iteration 1/2", "iteration 2/2"]
    assert all(line.endswith("videos written 2") for line in iteration_lines)
    assert [line.split(" | ")[-2].split(":")[0] for line in iteration_lines] == [
        "evaluated weights of iteration 1", "evaluated weights of iteration 2"]
    (run_dir,) = (tmp / "run" / "wandb").glob("offline-run-*-mainrun")
    assert lines[-8:] == [
        f"videos written: 4 in {videos}",
        f"manifest: {videos / MANIFEST}",
        f"gallery: {videos / 'index.html'} (open it in a browser, no server needed)",
        f"checkpoint: {tmp / 'run' / 'checkpoints' / 'it000002'}",
        f"wandb run: {run_dir}",
        f"upload it with: wandb sync {tmp / 'run' / 'wandb'}",
        f"log: {tmp / 'run' / 'run_eval.log'} (Ray's, RLlib's and wandb's own output)",
        "train on with: " + continue_command(tmp / "run", "mainrun", *TINY, f"recording.video_dir={videos}",
                                             "training.iterations=4"),
    ]


# What Ray, RLlib, wandb and gymnasium print on their own in a run (seen on the console before).
NOISE = ("wandb:", "core_worker.cc", "Started a local Ray instance", "DeprecationWarning", "UserWarning",
         "Token authentication", "Install gputil", "(MultiAgentEnvRunner pid=", "Trainable.setup took")


def test_the_console_shows_only_our_lines_and_the_log_file_holds_the_rest(main_run):
    tmp, videos, _, proc = main_run
    assert proc.stderr == ""  # no warning: nothing needed the user's action
    assert "\x1b" not in proc.stdout  # stdout is a pipe: no ANSI codes, no progress bar
    assert proc.stdout.splitlines()[:4] == [
        f"run mainrun: videos go to {videos}",
        "starting Ray ...",
        "started a local Ray (2 CPUs)",
        "building PPO (env runners start, the first rail drawing takes a few seconds) ...",
    ]
    for line in proc.stdout.splitlines()[4:6]:
        assert re.fullmatch(r"iteration \d/2 \| env steps \d+ \| train return -?\d+\.\d\d \| evaluated weights of "
                            r"iteration \d: completion \d\.\d\d \| videos written 2", line), line
    assert len(proc.stdout.splitlines()) == 4 + 2 + 8
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, noise
    log = (tmp / "run" / "run_eval.log").read_text()
    for chatter in ("wandb: Tracking run with wandb version", "Started a local Ray instance", "core_worker.cc",
                    "wandb: Run summary:"):
        assert chatter in log, chatter
    assert log.count("Started a local Ray instance") == 1  # closing the run starts no second Ray


def test_every_round_arrives_including_the_last(main_run):
    _, videos, _, proc = main_run
    ours = [r for r in read_manifest(videos) if r.get("run_id") == "mainrun"]
    assert [(r["training_iteration"], r["episode_index"]) for r in ours] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for record in ours:
        with av.open(str(videos / record["file"])) as container:
            assert sum(1 for _ in container.decode(video=0)) == record["frames"]


def test_earlier_files_are_byte_for_byte_unchanged_and_taken_names_skipped(main_run):
    _, videos, before, _ = main_run
    after = snapshot(videos)
    assert "index.html" in after  # the gallery, rewritten after every round: our 4 videos ("old.mp4" has no file)
    shown = set(re.findall(r'<video [^>]*src="([^"]+)"', (videos / "index.html").read_text()))
    assert shown == {name for name in after if name.endswith(".mp4") and "mainrun" in name and name != (
        "flatland-it000001-ev0001-ep000-mainrun.mp4")}  # the earlier file under our first name is not ours
    for name, digest in before.items():
        if name != MANIFEST:
            assert after[name] == digest, name
    assert (videos / MANIFEST).read_text().startswith('{"file": "old.mp4", "training_iteration": 0}\n')
    mp4s = sorted(p.name for p in videos.glob("*.mp4"))
    assert mp4s == [
        "flatland-it000001-ev0001-ep000-mainrun-2.mp4",
        "flatland-it000001-ev0001-ep000-mainrun.mp4",
        "flatland-it000001-ev0001-ep001-mainrun.mp4",
        "flatland-it000002-ev0002-ep000-mainrun.mp4",
        "flatland-it000002-ev0002-ep001-mainrun.mp4",
    ]
    assert (videos / "flatland-it000001-ev0001-ep000-mainrun.mp4").read_bytes() == b"an earlier video, not ours"
    sidecar = json.loads((videos / "flatland-it000001-ev0001-ep000-mainrun-2.json").read_text())
    assert sidecar["file"] == "flatland-it000001-ev0001-ep000-mainrun-2.mp4"


def test_checkpoint_is_saved_as_an_rllib_checkpoint(main_run):
    tmp, *_ = main_run
    checkpoint = tmp / "run" / "checkpoints" / "it000002"
    assert (checkpoint / "algorithm_state.pkl").is_file() or (checkpoint / "rllib_checkpoint.json").is_file()
    assert (checkpoint / "learner_group").is_dir()


def test_parallel_evaluation_ends_with_a_round_of_the_final_weights(tmp_path):
    videos = tmp_path / "videos"
    proc = subprocess.run(
        run_eval_command(*TINY, "training.iterations=2", "evaluation.parallel_to_training=true",
                         "wandb.run_id=parallel", f"recording.video_dir={videos}", f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_manifest(videos)
    assert [(r["training_iteration"], r["evaluation_round"]) for r in records] == [
        (0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3)]
    lines = proc.stdout.splitlines()
    rounds = [line for line in lines if "videos written" in line and " | " in line]
    assert [line.split(" | ")[0] for line in rounds] == ["iteration 1/2", "iteration 2/2", "final evaluation"]
    assert [line.split(" | ")[-2].split(":")[0] for line in rounds] == [
        "evaluated weights of iteration 0", "evaluated weights of iteration 1", "evaluated weights of iteration 2"]
    assert rounds[-1].endswith("videos written 2")
    assert f"videos written: 6 in {videos}" in lines
