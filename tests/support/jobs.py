"""``run_eval.py`` as a real subprocess for fault tests: signals, kills, what it printed, and
what it left in its video folder and its wandb run.

Holds:
  Job               one ``run_eval.py`` in its own session (so that it and its Ray
                    processes can be signalled and cleaned up together, never anyone
                    else's), with the TINY training settings; ``wrapper`` runs it through
                    a script of tests/support that patches a fault in first.
  jobs              the pytest fixture that starts Jobs and kills what they leave.
  wait_for()        polls a condition with a deadline.
  check_folder_is_consistent()   every final .mp4 decodes fully, every manifest line
                    names an existing file whose sha256 matches.
  wandb_runs() / wandb_exit_codes() / wandb_video_logs()   the offline wandb runs of a
                    job and what they recorded.
  session_processes() / ray_workers()   the live processes of a job's session, by name.
  kill_session()    kills a process started in its own session, with everything it started.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TINY  # tiny but real: PPO on the small Flatland env, few steps per iteration

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent


class Job:
    """``run_eval.py`` in its own session, so that it and its Ray processes can be cleaned up.

    ``wrapper``: a script of tests/support and its own first arguments, run instead of
    run_eval.py (it patches a fault in, then runs run_eval.py with the other arguments)."""

    def __init__(self, tmp: Path, name: str, *overrides: str, env: dict | None = None, tiny: bool = True,
                 wrapper: tuple[str, ...] | None = None):
        self.run_dir = tmp / name
        self.name = name
        self.stdout_path, self.stderr_path = tmp / f"{name}.out", tmp / f"{name}.err"
        script = [str(SUPPORT / wrapper[0]), *wrapper[1:]] if wrapper else [str(ROOT / "run_eval.py")]
        self.overrides = [*(TINY if tiny else ()), *overrides]
        command = [sys.executable, *script, *self.overrides, f"hydra.run.dir={self.run_dir}"]
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, start_new_session=True,
                                         env=env, cwd=ROOT)
        self.started = time.monotonic()

    def continue_command(self, run_id: str) -> str:
        """The command this job prints to be continued (its options, then the resume ones)."""
        from helpers import continue_command

        kept = [o for o in self.overrides if o.split("=")[0] not in ("recording.resume", "wandb.run_id")]
        return continue_command(self.run_dir, run_id, *kept, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def last_error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def signal(self, number: int, *, group: bool = False) -> float:
        """Send ``number`` to the driver alone, or to its whole process group (what a
        terminal's Ctrl-C and SLURM do); returns when (monotonic)."""
        if group:
            os.killpg(self.proc.pid, number)
        else:
            os.kill(self.proc.pid, number)
        return time.monotonic()

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout=timeout)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wandb_dir(self) -> Path:
        return self.run_dir / "wandb"

    def cleanup(self) -> None:
        """Kill whatever the job left: every process of its session (Ray's workers have
        process groups of their own), then reap the driver."""
        for number in (signal.SIGKILL,):
            for pid in session_processes(self.proc.pid):
                try:
                    os.kill(pid, number)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def jobs():
    started = []

    def start(*args, **kwargs):
        job = Job(*args, **kwargs)
        started.append(job)
        return job

    yield start
    for job in started:
        job.cleanup()


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def check_folder_is_consistent(videos: Path) -> list[dict]:
    """Every file under a final .mp4 name decodes fully; every manifest line names an
    existing file whose sha256 matches, and an existing replay record if it names one;
    returns the manifest."""
    import av

    from eval_recorder.video_index import read_manifest

    manifest = read_manifest(videos)
    for record in manifest:
        if record.get("record") is not None:
            assert os.path.lexists(videos / record["record"]), record["record"]
        if "file" not in record:  # an episode recording.select kept without a video
            continue
        data = (videos / record["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
    frames = {record["file"]: record["frames"] for record in manifest if "file" in record}
    for path in videos.glob("*.mp4"):
        with av.open(str(path)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded == (frames.get(path.name) or decoded) and decoded > 0
    return manifest


# ---- wandb runs ---------------------------------------------------------------------------


def wandb_runs(wandb_dir: Path, run_id: str) -> list[Path]:
    """The offline wandb run folders of ``run_id`` under ``wandb_dir`` (a job's output
    folder), oldest first."""
    from eval_recorder.wandb_history import run_logs

    return [log.parent for log in run_logs(wandb_dir, run_id)]


def wandb_exit_codes(run_dir: Path, wait_s: float = 15.0) -> list[int]:
    """The exit codes recorded by the wandb run in ``run_dir`` (none if it was not finished)."""
    from wandb_offline import run_records

    return [r.exit.exit_code for r in run_records(run_dir, wait_s=wait_s) if r.WhichOneof("record_type") == "exit"]


def wandb_video_logs(run_dirs: list[Path]) -> dict:
    """{(training_iteration, episode index, sha256): times logged} over ``run_dirs``."""
    from eval_recorder.wandb_history import logged_videos

    return dict(logged_videos([next(run_dir.glob("run-*.wandb")) for run_dir in run_dirs]))


# ---- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str


def session_processes(sid: int) -> dict[int, Proc]:
    """The live processes (zombies excluded) of session ``sid``, by pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1: text.rindex(")")]
        state, ppid, _pgrp, session = text[text.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state not in "ZX":
            found[int(entry)] = Proc(int(entry), int(ppid), comm)
    return found


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of ``proc``'s session (it was started with
    ``start_new_session=True``: its Ray processes too), then reap ``proc``."""
    for pid in session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def ray_workers(job: Job, prefix: str) -> list[int]:
    """Pids of the job's Ray worker processes whose name starts with ``prefix`` (Ray names
    a worker ``ray::<class>`` / ``ray::<class>.<method>``), e.g. ``ray::MultiAgentEnvRunner``."""
    return sorted(pid for pid, proc in session_processes(job.pid).items() if proc.comm.startswith(prefix[:15]))
