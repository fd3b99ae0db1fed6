"""Where results are published beside the local folder: the one small interface every
tracker implements (wandb, TensorBoard, MLflow).

Local files stay the source of truth; a sink is a view of them. Each sink gets every stored
video once (its file, its sidecar facts, its caption) and each round's metrics, at step =
training iteration. A sink that fails says so once and turns itself off: it never stops
training nor costs a local video.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

__all__ = ["Sink"]

logger = logging.getLogger(__name__)


class Sink:
    """One tracker's run (one per run: continued when the run resumes).

    ``start()`` opens it; ``log_video`` is called once per stored video, ``log_metrics``
    for training metrics and each round's evaluation means, both at ``step`` = training
    iteration; ``finish(exit_code)`` ends it (0 done, 1 crashed, 130/143 stopped by a
    signal; ``give_up`` set by a second stop signal: do not wait). Every method of an
    inactive sink does nothing."""

    name = "sink"

    def __init__(self) -> None:
        self._failed = False

    @property
    def active(self) -> bool:
        """Whether the sink is started and has not failed."""
        return False

    def start(self) -> None:
        """Open the tracker's run (or continue it, for a resumed run)."""

    def log_video(self, path: Path, metadata: dict, *, step: int) -> None:
        """Publish the stored video at ``path`` (its sidecar record ``metadata``) at ``step``."""

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        """Publish ``metrics`` (``eval/...``, ``train/...``, ``env_steps``) at ``step``."""

    def finish(self, exit_code: int = 0, *, give_up: threading.Event | None = None) -> None:
        """End the tracker's run with ``exit_code``."""

    def where(self) -> list[str]:
        """What the run's summary says of this tracker: where its run is and the command
        that opens it (e.g. ``tensorboard --logdir ...``); [] if nothing was written."""
        return []

    def fail(self, what: str, error: BaseException) -> None:
        """Say once that this tracker could not ``what``, and turn the sink off."""
        if not self._failed:
            self._failed = True
            logger.warning("%s could not %s (%s: %s); %s logging is off, videos are still saved locally.",
                           self.name, what, type(error).__name__, error, self.name)

