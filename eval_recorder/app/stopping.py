"""How the jobs (training, standalone evaluation) stop when asked to: Ctrl-C or SIGTERM.

Holds:
  COLLECT_SECONDS   how long a stop waits for the driver's inbox to hand over the episodes
                    eval runners finished.
  stop_cleanly()    the stop path of a job: publish the episodes that reached the driver
                    (also of an evaluation round cut short), finish the wandb run with the
                    signal's exit code (130 SIGINT, 143 SIGTERM) and release the folder —
                    before Ray is stopped, which takes seconds and may hang or fail when
                    the signal reached Ray's processes too — then let a second signal end
                    the process at once, printing ``farewell`` (how to resume).

The signals themselves are turned into KeyboardInterrupt by ``eval_recorder.stopping``.
"""

from __future__ import annotations

import logging

from eval_recorder.callback import RecordingCallback
from eval_recorder.session import RecordingSession
from eval_recorder.stopping import StopSignals

__all__ = ["COLLECT_SECONDS", "RAY_STOP_SECONDS", "own_ray_is_down", "stop_cleanly"]

COLLECT_SECONDS = 10.0
RAY_STOP_SECONDS = 20.0  # longest a stopped job waits for Ray to stop before it ends anyway

logger = logging.getLogger(__name__)


def stop_cleanly(algo, session: RecordingSession, stop: StopSignals, farewell) -> None:
    """After a stop signal: store what finished, close the session with the signal's exit
    code; ``farewell()`` (called after closing) is what the process prints if it ends
    early: at a second signal, at once if the signal stopped this job's own Ray too (its
    processes are gone: stopping Ray would only wait for them), or when stopping Ray takes
    longer than ``RAY_STOP_SECONDS``."""
    if session.closed:
        return
    if algo is not None:
        callbacks = algo.callbacks if isinstance(algo.callbacks, list) else [algo.callbacks]
        for callback in callbacks:
            if isinstance(callback, RecordingCallback):
                callback.finish_interrupted_round(timeout_seconds=COLLECT_SECONDS, hurry=stop.hurry)
    session.close(exit_code=stop.exit_code, hurry=stop.hurry)
    logger.info("stopped: %d videos in %s, wandb run finished with exit code %d, folder released",
                len(session.videos), session.video_dir, stop.exit_code)
    stop.closed(farewell=farewell(), exit_within=RAY_STOP_SECONDS)
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
