"""What a Ray Tune trial's process does: hold its own recording session, in its own trial
folder, from the Algorithm's start to the trial's end.

A config made with ``RecordingOptions(video_dir=None)`` gives every trial's driver its own
session (``videos/`` in the trial folder, the trial id as run id, the trial name as
wandb run name). RLlib has no "algorithm stopped" callback and no "training step failed"
one, and Tune stops a trial with ``Trainable.stop()`` -> ``cleanup()`` and may end the
process right after; so ``TrialSession`` wraps exactly those two methods of the trial's
own Algorithm instance (``step``/``log_result`` to note a failure, ``cleanup`` to close),
closes at exit otherwise, and turns a SIGTERM of the trial process (``ray stop``, SLURM,
Kubernetes) into a clean close with exit code 143. Its exit code: 1 if training raised.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import re
import signal
import threading
from pathlib import Path

from eval_recorder.options import RecordingOptions, new_run_id
from eval_recorder.publisher import STOP_COLLECT_SECONDS
from eval_recorder.session import RecordingSession
from eval_recorder.stopping import StopSignals, exit_code_for

__all__ = ["TrialSession", "algorithm_folder", "trial_identity", "trial_options"]

logger = logging.getLogger(__name__)

TRIAL_CLOSE_SECONDS = 30.0  # longest a signalled Tune trial waits for its session to close

# Tune names a trial "<trainable>_<experiment tag>_<index>" (e.g. PPO_env_3d32c_00000) and
# its directory "<trial name>_<n>_<params>_<date>".
_TRIAL_DIR = re.compile(r"^(?P<name>.+?_(?P<id>[0-9a-f]{5}_\d{5}))(_|$)")


class TrialSession:
    """The recording session of one Tune trial's Algorithm (see module docstring)."""

    def __init__(self, options: RecordingOptions, algorithm) -> None:
        self.session = RecordingSession(trial_options(options, algorithm))
        self._exit_code = 0  # 1 if its training raised, 143 after SIGTERM
        self._closed = False
        self._signals: StopSignals | None = None
        self._watch(algorithm)

    def opened(self) -> None:
        """The session is open. atexit hooks run last-in first-out, and wandb's own (which
        ends its service) must come after this one: so this is registered after wandb.init."""
        atexit.register(self.close)

    def _watch(self, algorithm) -> None:
        cleanup = algorithm.cleanup

        def noting_failure(method):
            def call(*args, **kwargs):
                try:
                    return method(*args, **kwargs)
                except Exception:
                    self._exit_code = 1
                    raise

            return call

        def cleanup_and_close() -> None:
            self.close()
            cleanup()

        # Trainable.train() runs step() (training, evaluation) and log_result() (the
        # on_train_result callbacks): a failure in either fails the trial.
        algorithm.step = noting_failure(algorithm.step)
        algorithm.log_result = noting_failure(algorithm.log_result)
        algorithm.cleanup = cleanup_and_close
        # The trial's process is a Ray worker: Ray's own SIGTERM handler ends it
        # (SystemExit), and Ray shuts down, killing the wandb service, before any atexit
        # hook runs. Ours closes the session first, never in the middle of storing a video.
        self._signals = StopSignals((signal.SIGTERM,), on_stop=self._signalled).install()

    def _signalled(self, signal_number: int) -> None:
        """Runs in the trial's main thread (outside any critical block), maybe inside a
        ray.get: the Ray calls of closing run in a thread of their own meanwhile."""
        self._exit_code = exit_code_for(signal_number)
        logger.warning("trial process got %s: storing the finished episodes, finishing the wandb run",
                       signal.Signals(signal_number).name)
        closer = threading.Thread(target=self.close, name="eval_recorder-trial-close", daemon=True)
        closer.start()
        closer.join(TRIAL_CLOSE_SECONDS)
        previous = self._signals.previous_handler(signal_number) if self._signals else None
        if callable(previous):
            previous(signal_number, None)
        raise SystemExit(self._exit_code)

    def close(self) -> None:
        """Store what finished of a round under way, finish the wandb run with the trial's
        exit code, release the folder (once)."""
        if self._closed:
            return
        self._closed = True
        self.session.finish_interrupted_round(timeout_seconds=STOP_COLLECT_SECONDS)
        self.session.close(exit_code=self._exit_code)


def algorithm_folder(algorithm) -> Path:
    """The folder an Algorithm's own outputs belong in: a Tune trial's directory when its
    storage is a local filesystem (what the user sees under storage_path), else the
    Algorithm's log folder (for remote storage: synced with SyncConfig(sync_artifacts=True))."""
    storage = getattr(algorithm, "_storage", None)
    if storage is not None and getattr(storage, "trial_dir_name", None):
        import pyarrow.fs

        if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            return Path(storage.trial_fs_path)
    return Path(algorithm.logdir)


def trial_identity(algorithm) -> tuple[str | None, str | None]:
    """(trial id, trial name) of the Tune trial running ``algorithm``, else (None, None).
    RLlib drops Tune's trial info when it turns the config into an AlgorithmConfig, so
    Trainable.trial_id reads "default"; the trial directory still carries both."""
    if getattr(algorithm, "trial_id", "default") not in (None, "default"):
        return algorithm.trial_id, algorithm.trial_name
    storage = getattr(algorithm, "_storage", None)
    match = _TRIAL_DIR.match(getattr(storage, "trial_dir_name", None) or "")
    return (match["id"], match["name"]) if match else (None, None)


def trial_options(options: RecordingOptions, algorithm) -> RecordingOptions:
    """``options`` for this Algorithm's own folder: ``videos/`` in its trial folder (see
    algorithm_folder), the trial id as run id, the trial name as wandb run name."""
    logdir = algorithm_folder(algorithm)
    trial_id, trial_name = trial_identity(algorithm)
    run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)[:64] if trial_id else new_run_id()
    return dataclasses.replace(
        options,
        video_dir=str(logdir / "videos"),
        run_id=run_id,
        wandb_dir=str(logdir),
        wandb_name=trial_name or run_id,
    )
