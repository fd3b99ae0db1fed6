"""wandb's own disk full in the middle of a run (a real small tmpfs under the run's wandb
folder, filled up after the first video): one warning, the local videos whole, the summary
calls the wandb run incomplete and says what it can hold (no bare `wandb sync` offer),
nothing of wandb's own reaches stderr (it goes to the run's log), and the wandb run's exit
record is the run's real exit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from eval_recorder.app.console import incomplete_wandb_lines
from eval_recorder.video_index import read_manifest
from support.filesystems import fill, small_tmpfs
from support.jobs import check_folder_is_consistent, jobs, wait_for, wandb_exit_codes, wandb_runs, \
    wandb_video_logs  # noqa: F401  (jobs: a fixture)

WARNING_END = "); wandb logging is off, videos are still saved locally."


class _Sink:
    def __init__(self, **facts):
        self.__dict__.update(facts)


def test_an_incomplete_wandb_run_is_called_so_with_what_it_can_hold(tmp_path):
    fault = "wandb could not log videos (OSError: No space left on device)"
    sink = _Sink(run_dir=tmp_path / "wandb" / "offline-run-x", fault=fault, fault_step=2, videos_sent=3)
    assert incomplete_wandb_lines(sink, written=6, video_dir=tmp_path / "videos", sync_targets="W") == [
        f"wandb run: {tmp_path}/wandb/offline-run-x is incomplete: {fault} at iteration 2; nothing after that was "
        f"logged to it",
        f"it has at most 3 of the 6 videos written; the other 3 are only in {tmp_path}/videos",
        "upload what it has with: wandb sync W",
    ]
    sink.videos_sent, sink.fault_step = 0, None
    assert incomplete_wandb_lines(sink, written=6, video_dir=tmp_path / "videos", sync_targets="W") == [
        f"wandb run: {tmp_path}/wandb/offline-run-x is incomplete: {fault} as it started; nothing after that was "
        f"logged to it",
        f"it has none of the 6 videos written; they are only in {tmp_path}/videos",
    ]


def test_what_others_print_as_the_process_exits_goes_to_the_log_not_the_terminal(tmp_path):
    """wandb's and Ray's exit hooks (registered while the job ran) print after the console
    gave the terminal back: a real process, a real atexit hook printing a traceback."""
    script = textwrap.dedent(f"""
        import atexit, sys, traceback
        from pathlib import Path
        from eval_recorder.app.console import Console, say
        with Console(Path({str(tmp_path / "run_eval.log")!r})):
            def late():  # as wandb's teardown with a full disk
                try:
                    raise OSError(28, "No space left on device")
                except OSError:
                    traceback.print_exc()
                print("late line", flush=True)
            atexit.register(late)
            say("our line")
        print("after the job", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert (done.stdout, done.stderr) == ("our line\nafter the job\n", "")
    log = (tmp_path / "run_eval.log").read_text()
    assert "Traceback (most recent call last):" in log and "OSError: [Errno 28] No space left on device" in log
    assert log.endswith("late line\n")


@pytest.mark.slow
def test_wandb_disk_full_mid_run_leaves_an_incomplete_run_called_so_and_no_traceback(tmp_path, jobs):
    run_id = "wfull1"
    run_dir = tmp_path / "run"
    with small_tmpfs(run_dir / "wandb", 8 * 1024 * 1024) as wandb_folder:
        job = jobs(tmp_path, "run", "training.iterations=3", f"wandb.run_id={run_id}")
        videos = run_dir / "videos"
        wait_for(lambda: len(read_manifest(videos)) >= 1 or not job.running(), 300, "the first video")
        filler = fill(wandb_folder, 0)
        wait_for(lambda: WARNING_END in job.stderr or not job.running(), 300, "wandb's fault")
        assert job.running(), job.stderr[-3000:]
        filler.unlink()  # room again before the end: what the run's finish writes (its exit code) gets in
        assert job.wait(timeout=600) == 0, job.stderr[-3000:]

        manifest = check_folder_is_consistent(videos)
        assert len(manifest) == 6  # the local videos are all there
        (warning,) = job.stderr.splitlines()  # one line on stderr: no traceback of wandb's
        prefix = f"warning: wandb could not log videos (OSError: [Errno 28] No space left on device: '{videos}/"
        assert warning.startswith(prefix) and warning.endswith(WARNING_END), warning
        failed = warning.removeprefix(prefix).split("'", 1)[0]
        sent = [r["file"] for r in manifest].index(failed)  # the videos wandb got before the fault
        failed_at = manifest[sent]["training_iteration"]
        (wandb_run,) = wandb_runs(run_dir, run_id)
        lines = job.stdout.splitlines()
        at = lines.index(f"wandb run: {wandb_run} is incomplete: wandb could not log videos (OSError: No space "
                         f"left on device) at iteration {failed_at}; nothing after that was logged to it")
        if sent:
            assert lines[at + 1:at + 3] == [
                f"it has at most {sent} of the 6 videos written; the other {6 - sent} are only in {videos}",
                f"upload what it has with: wandb sync {wandb_folder}"]
        else:
            assert lines[at + 1] == f"it has none of the 6 videos written; they are only in {videos}"
        assert not [line for line in lines if line.startswith("upload it with:")]
        # What the wandb run holds: its real exit code, and no video beyond those it got before the fault.
        assert wandb_exit_codes(wandb_run) == [0]
        logged = wandb_video_logs([wandb_run])
        assert set(logged) <= {r["sha256"] for r in manifest[:sent]} and set(logged.values()) <= {1}
        log = (run_dir / "run_eval.log").read_text()
        assert "wandb could not log videos (OSError: [Errno 28] No space left on device" in log
        print(f"\nwandb got {sent} video(s) before its disk filled; it holds {len(logged)}")
