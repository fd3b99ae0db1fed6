"""What a run shows: our lines on stdout, our warnings and errors on stderr, one progress bar
on a terminal only, everything else in the log file; a summary that names only what exists."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY, compose_config, run_eval_command
from helpers import continue_command
from eval_recorder.app.console import summary_lines, wandb_sync_target
from eval_recorder.app.main_job import _rounds_ahead, _why_no_rounds

# A process that prints the way Ray, RLlib, wandb and gymnasium do, inside a Console.
NOISY_JOB = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from eval_recorder.app import console

    logging.basicConfig()  # like Ray's own handler: a stream handler on sys.stderr
    with console.Console(Path(sys.argv[1]), verbose=sys.argv[2] == "verbose"):
        print("a print of a library")
        os.write(1, b"C++ on fd 1\\n")
        os.write(2, b"[E core_worker.cc:2465] C++ on fd 2\\n")
        logging.getLogger("ray.rllib").warning("DeprecationWarning: a logging record")
        warnings.warn("\\x1b[33mWARN: a coloured warning\\x1b[0m")
        subprocess.run(["echo", "a child process"])
        logging.getLogger("eval_recorder.session").warning("video folder /v is full; free space.")
        console.say("our line")
        console.warn("act now")
        console.error("one sentence")
        bar = console.progress(total=3, desc="training")
        for n in range(3):
            bar.update(1)
            console.say(f"iteration {n + 1}/3")
        bar.close()
    print("after the job")
""")


def run_noisy_job(tmp_path: Path, mode: str = "quiet", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NOISY_JOB, str(tmp_path / "run_eval.log"), mode],
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_only_our_lines_reach_the_console_and_everything_else_the_log(tmp_path):
    proc = run_noisy_job(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["our line", "iteration 1/3", "iteration 2/3", "iteration 3/3", "after the job"]
    assert proc.stderr.splitlines() == ["warning: video folder /v is full; free space.", "warning: act now",
                                        "error: one sentence"]
    log = (tmp_path / "run_eval.log").read_text()
    for chatter in ("a print of a library", "C++ on fd 1", "core_worker.cc:2465] C++ on fd 2",
                    "DeprecationWarning: a logging record", "WARN: a coloured warning", "a child process",
                    "video folder /v is full"):
        assert chatter in log, chatter
    assert "our line" not in log and "act now" not in log


def test_verbose_shows_the_others_output_on_the_console(tmp_path):
    proc = run_noisy_job(tmp_path, "verbose")
    assert proc.returncode == 0, proc.stderr
    for chatter in ("a print of a library", "C++ on fd 1", "a child process", "our line"):
        assert chatter in proc.stdout, chatter
    for chatter in ("C++ on fd 2", "DeprecationWarning: a logging record", "act now", "error: one sentence"):
        assert chatter in proc.stderr, chatter


def _read_terminal(fd: int, proc: subprocess.Popen) -> str:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other end closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode()


def test_the_progress_bar_is_drawn_on_a_terminal_and_erased_at_the_end(tmp_path):
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-c", NOISY_JOB, str(tmp_path / "run_eval.log"), "quiet"],
                            stdin=subprocess.DEVNULL, stdout=child, stderr=subprocess.DEVNULL)
    os.close(child)
    screen = _read_terminal(main, proc)
    proc.wait(timeout=60)
    os.close(main)
    assert "training:" in screen and "3/3" in screen  # tqdm's bar
    for n in (1, 2, 3):
        assert f"iteration {n}/3\r\n" in screen
    assert "\x1b[A" not in screen  # one bar: no cursor moves between bars
    assert re.search(r"3/3 \[[^\]]*\]\r +\rafter the job\r\n$", screen)  # erased: the screen keeps our lines only


def test_summary_names_only_files_that_exist_and_says_why_nothing_was_recorded(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    session = SimpleNamespace(videos=[], video_dir=videos, gallery_path=videos / "index.html", wandb=None, sinks=[],
                              options=SimpleNamespace(run_id="r1"))
    reason = "evaluation.interval=5 is larger than training.iterations=3, so no evaluation round runs"
    assert summary_lines(session, checkpoint=tmp_path / "checkpoints" / "it000003", nothing_recorded=reason) == [
        f"videos written: 0 in {videos}",
        f"nothing was recorded: {reason}",
    ]
    (videos / "manifest.jsonl").write_text("")
    (videos / "index.html").write_text("")
    run_dir = tmp_path / "wandb" / "offline-run-20261124_010203-r1"
    run_dir.mkdir(parents=True)
    session.videos = [object()]
    session.wandb = SimpleNamespace(run_dir=run_dir, mode="offline")
    assert summary_lines(session) == [
        f"videos written: 1 in {videos}",
        f"manifest: {videos / 'manifest.jsonl'}",
        f"gallery: {videos / 'index.html'} (open it in a browser, no server needed)",
        f"wandb run: {run_dir}",
        f"upload it with: wandb sync {tmp_path / 'wandb'}",
    ]


def test_one_sync_command_covers_every_part_of_a_resumed_run(tmp_path):
    wandb_folder = tmp_path / "wandb"
    first = wandb_folder / "offline-run-20261124_010203-r-1"
    second = wandb_folder / "offline-run-20261124_020304-r-1"
    same_second = wandb_folder / "offline-run-20261124_020304-r-1-1"
    for folder in (first, second, same_second):
        folder.mkdir(parents=True)
    (wandb_folder / "latest-run").symlink_to(second.name)
    assert wandb_sync_target(second, "r-1") == [wandb_folder]
    other = wandb_folder / "offline-run-20261124_030405-other"
    other.mkdir()
    assert wandb_sync_target(second, "r-1") == [first, second, same_second]


@pytest.mark.parametrize(("overrides", "start", "rounds"), [
    ((), 0, 3),
    (("evaluation.interval=2",), 0, 1),
    (("evaluation.interval=5",), 0, 0),
    (("evaluation.interval=5", "evaluation.parallel_to_training=true"), 0, 1),  # the final weights' round
    (("evaluation.interval=5", "training.iterations=10"), 5, 1),
    (("evaluation.interval=5", "training.iterations=9"), 5, 0),
    ((), 3, 0),
    (("evaluation.render=null",), 0, 0),
])
def test_rounds_ahead_follow_rllibs_schedule(overrides, start, rounds):
    assert _rounds_ahead(compose_config(*overrides), start) == rounds


def test_why_nothing_will_be_recorded_names_the_options():
    assert _why_no_rounds(compose_config("evaluation.interval=5"), 0) == (
        "evaluation.interval=5 is larger than training.iterations=3, so no evaluation round runs; "
        "lower evaluation.interval or raise training.iterations")
    assert _why_no_rounds(compose_config("evaluation.interval=5", "training.iterations=9"), 5) == (
        "no evaluation round falls in iterations 6-9 (evaluation.interval=5); "
        "lower evaluation.interval or raise training.iterations")
    assert _why_no_rounds(compose_config("evaluation.render=null"), 0) == "evaluation.render=null turns recording off"


@pytest.mark.slow
def test_a_run_that_records_nothing_warns_at_start_and_says_so_at_the_end(tmp_path):
    videos = tmp_path / "videos"
    proc = subprocess.run(
        run_eval_command(*TINY, "training.iterations=1", "evaluation.interval=5", "evaluation.num_env_runners=0",
                         "wandb.run_id=nothing", f"recording.video_dir={videos}", f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reason = ("evaluation.interval=5 is larger than training.iterations=1, so no evaluation round runs; "
              "lower evaluation.interval or raise training.iterations")
    assert proc.stderr.splitlines() == [f"warning: nothing will be recorded: {reason}."]
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*-nothing")
    assert proc.stdout.splitlines()[-7:] == [
        f"videos written: 0 in {videos}",
        f"nothing was recorded: {reason}",
        f"checkpoint: {tmp_path / 'run' / 'checkpoints' / 'it000001'}",
        f"wandb run: {run_dir}",
        f"upload it with: wandb sync {tmp_path / 'run' / 'wandb'}",
        f"log: {tmp_path / 'run' / 'run_eval.log'} (Ray's, RLlib's and wandb's own output)",
        "train on with: " + continue_command(tmp_path / "run", "nothing", *TINY, "evaluation.interval=5",
                                             "evaluation.num_env_runners=0", f"recording.video_dir={videos}",
                                             "training.iterations=2"),
    ]
    assert not (videos / "manifest.jsonl").exists() and not (videos / "index.html").exists()
