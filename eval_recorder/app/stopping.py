"""How the jobs (training, standalone evaluation) start and stop: refusals before anything
is claimed, Ctrl-C or SIGTERM after.

``StartUp`` turns what a job refuses while it starts into one sentence and exit code 2, and
a stop before the run started into the signal's exit code. ``run_and_close`` runs a job
with its session held and gives its exit code (0, 1 after a crash, 130/143 after a stop).
``stop_cleanly`` is the stop path: store the episodes that reached the driver (also of an
evaluation round cut short), finish the wandb run with the signal's exit code and release
the folder — before Ray is stopped, which takes seconds and may hang or fail when the signal
reached Ray's processes too — then let a second signal end the process at once.
``start_ray_shielded`` starts Ray with SIGTERM blocked in the processes Ray starts (as Ray
blocks SIGINT there): a SIGTERM to the whole process group (a terminal, SLURM) then stops
only the driver, which closes the run while Ray still serves it; otherwise the raylet dies
at once and Ray ends the driver with exit code 1 before its wandb run is finished.
The signals themselves are turned into KeyboardInterrupt by ``eval_recorder.stopping``.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from omegaconf.errors import OmegaConfBaseException

from eval_recorder.app import console
from eval_recorder.app.algorithms import start_ray
from eval_recorder.app.runs_index import update_runs_index
from eval_recorder.errors import FolderRefused, UserError
from eval_recorder.session import RecordingSession
from eval_recorder.stopping import StopSignals, children_shielded

__all__ = ["COLLECT_SECONDS", "RAY_STOP_SECONDS", "StartUp", "end_own_ray_now", "own_ray_is_down", "run_and_close",
           "start_ray_shielded", "stop_cleanly", "stop_ray"]

COLLECT_SECONDS = 10.0
RAY_STOP_SECONDS = 20.0  # longest a stopped job waits for Ray to stop before it ends anyway

logger = logging.getLogger(__name__)


class StartUp:
    """``with StartUp(stop, interrupted=...) as start:`` around a job's start (checks, env
    probe, the folder claimed): a refusal (UserError, FolderRefused, ValueError, an option
    OmegaConf cannot resolve) is said in
    its one sentence and gives ``start.exit_code`` 2; a stop signal closes ``start.session``
    (if set) with the signal's exit code and says ``interrupted``. Nothing else is caught."""

    def __init__(self, stop: StopSignals, *, interrupted: str) -> None:
        self.stop = stop
        self.interrupted = interrupted
        self.session: RecordingSession | None = None
        self.exit_code: int | None = None  # set when the job must end here

    def __enter__(self) -> "StartUp":
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            return False
        if issubclass(exc_type, OmegaConfBaseException):  # e.g. an option's ${...} that cannot be resolved
            console.error(f"an option cannot be used ({_first_line(exc)}); fix it and run again.")
            self.exit_code = 2
            return True
        if issubclass(exc_type, (UserError, FolderRefused, ValueError)):
            console.error(str(exc))
            self.exit_code = 2
            return True
        if issubclass(exc_type, KeyboardInterrupt):
            if self.session is not None:
                self.session.close(exit_code=self.stop.exit_code)
            console.say(self.interrupted, err=True)
            self.exit_code = self.stop.exit_code
            return True
        return False


def _first_line(error: BaseException) -> str:
    """OmegaConf's message without its ``full_key: ...`` details and final full stop."""
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def claims_later(cfg) -> bool:
    """Whether a job claims its video folder only when the Algorithm is built, once every
    eval runner answered that it can record (the callback does it, as in the library): on
    a Ray cluster (``ray.address``), where eval runners sit on other machines with their
    own scratch folders and envs; before Ray starts the job refuses what the folder tells
    (``RecordingSession.check``). On one machine the runners share the driver's, which
    checked both, so the folder is claimed before Ray starts (a run racing for it is
    refused before Ray starts)."""
    return cfg.ray.address is not None


def start_ray_shielded(cfg) -> str:
    """``start_ray(cfg)`` (a local Ray, or joining a cluster) with SIGTERM blocked in every
    process it starts; what it says."""
    with children_shielded():
        return start_ray(cfg)


def stop_ray() -> None:
    """Shut Ray down; the processes of a local Ray started by ``start_ray_shielded`` ignore
    SIGTERM, so they are killed at once (workers and agents first: the raylet would have
    stopped them) instead of after Ray's graceful wait of 1 s each."""
    import ray
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    if node is not None and node.all_processes:
        kill_all = node.kill_all_processes

        def kill_all_at_once(check_alive: bool = True, allow_graceful: bool = False, wait: bool = False) -> None:
            end_own_ray_now()
            kill_all(check_alive=check_alive, allow_graceful=False, wait=wait)

        node.kill_all_processes = kill_all_at_once
    ray.shutdown()


def run_and_close(session: RecordingSession, stop: StopSignals, work, *, farewell, run_folder: Path) -> int:
    """Run ``work()`` (returns the run's exit code, None for 0) holding the claimed
    ``session``; the exit code the wandb run and the process get: ``work``'s, the stop
    signal's (130 SIGINT, 143 SIGTERM) after a clean stop, 1 after a crash (re-raised).
    ``farewell()`` is what a stopped run prints last (how to resume). Then the index of
    runs shows how run folder ``run_folder`` ended (not after a refusal, exit 2: a refused
    run leaves nothing to show)."""
    with session:  # leaving it closes the session: with 1 after a crash
        try:
            code = work() or 0
        except KeyboardInterrupt:
            code = stop.exit_code
            stop_cleanly(session, stop, farewell, collect=False)  # if ``work`` did not
        session.close(exit_code=code)
    if code in (130, 143):
        console.say(farewell(), err=True)
    if code != 2:
        update_runs_index(run_folder)
    return code


def stop_cleanly(session: RecordingSession, stop: StopSignals, farewell, *, collect: bool = True) -> None:
    """After a stop signal: store what finished (with ``collect``: also what reached the
    driver of a round under way), close the session with the signal's exit code; ``farewell()`` (called after closing) is what the process prints if it ends
    early: at a second signal, at once if the signal stopped this job's own Ray too (its
    processes are gone: stopping Ray would only wait for them), or when stopping Ray takes
    longer than ``RAY_STOP_SECONDS``."""
    if session.closed:
        return
    if collect:
        session.finish_interrupted_round(timeout_seconds=COLLECT_SECONDS, hurry=stop.hurry)
    session.close(exit_code=stop.exit_code, hurry=stop.hurry)
    logger.info("stopped: %d videos in %s, wandb run finished with exit code %d, folder released",
                len(session.videos), session.video_dir, stop.exit_code)
    stop.closed(farewell=farewell(), exit_within=RAY_STOP_SECONDS, before_exit=end_own_ray_now)
    if own_ray_is_down():
        stop.exit_now()


def own_ray_is_down() -> bool:
    """True if this process started a local Ray and some of its processes (GCS, raylet,
    ...) are gone, e.g. the stop signal reached the whole process group."""
    try:
        import ray._private.worker as worker

        node = getattr(worker, "_global_node", None)
        return node is not None and bool(node.dead_processes())
    except Exception:
        return False


def end_own_ray_now() -> None:
    """Before this process ends at once: SIGKILL the processes that the Ray processes it
    started (GCS, raylet, ...) started in turn — workers and the raylet's agents. Ray
    SIGKILLs its own processes as this one ends, but not theirs, and the agents would
    outlive it. (Asking the raylet to stop instead makes Ray end this process with exit
    code 1 as soon as the raylet is gone.)"""
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    if node is None:
        return
    roots = {info.process.pid for infos in node.all_processes.values() for info in infos}
    for pid in _descendants(roots):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _descendants(roots: set[int]) -> set[int]:
    """Every live process below ``roots`` (from /proc; none where there is no /proc)."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for entry in entries:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    return found
