"""Which training state a video shows: pure functions, no I/O.

A video's ``TrainingTag`` is the training state whose weights it shows; ``WeightsHistory``
knows which training iteration each learner weights version belongs to, and turns the
weights version an eval runner acted with into a tag.

RLlib's Learner numbers its weights updates (``WEIGHTS_SEQ_NO``); the number travels
with the weights to every env runner, which stamps it on its actions. The driver records,
at the end of each training iteration (``train()`` call), the version the learner then
holds. The tag of a weights version ``v`` is the training iteration that produced it:

* ``v`` was held at the end of iteration N (the latest such N, when iterations did not
  update the weights): tag N. Evaluation after training in call N sees the weights just
  trained: tag N = that call's ``result["training_iteration"]``; evaluation parallel to
  training in call N sees the weights of N-1: tag N-1.
* ``v`` lies between the versions held at the end of iterations N-1 and N (an
  asynchronous algorithm, APPO or IMPALA, synced weights in the middle of iteration N):
  tag N, the iteration whose training produced them.
* ``v`` is newer than every recorded version: it was produced by the ``train()`` call
  still running (whose result is not recorded yet): the next iteration.

The tag's ``env_steps`` are the lifetime env steps sampled for training at the end of
that iteration (for the running call: the steps sampled so far).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

__all__ = ["TrainingTag", "WeightsHistory"]


@dataclass(frozen=True)
class TrainingTag:
    """Training state of the evaluated weights."""

    training_iteration: int  # completed training iterations that produced the weights
    env_steps: int  # lifetime env steps sampled for training at that moment


class WeightsHistory:
    """Maps learner weights versions (RLlib's ``WEIGHTS_SEQ_NO``) to training iterations."""

    def __init__(self) -> None:
        self._by_version: dict[int, TrainingTag] = {}

    def record(self, *, weights_seq_no: int, training_iteration: int, env_steps: int) -> None:
        """The learner held ``weights_seq_no`` when ``training_iteration`` completed."""
        known = self._by_version.get(weights_seq_no)
        # Iterations that did not update the weights share a version: keep the latest.
        if known is None or known.training_iteration <= training_iteration:
            self._by_version[weights_seq_no] = TrainingTag(training_iteration, env_steps)

    @property
    def latest(self) -> TrainingTag | None:
        """The most recently completed iteration recorded (None before any)."""
        return max(self._by_version.values(), key=lambda tag: tag.training_iteration, default=None)

    def tag_for(self, weights_seq_no: int, *, env_steps_now: int) -> TrainingTag:
        """Tag of the weights version ``weights_seq_no`` an eval episode acted with."""
        if weights_seq_no in self._by_version:
            return self._by_version[weights_seq_no]
        if not self._by_version:
            raise ValueError("no training iteration recorded yet; record the start state first")
        versions = sorted(self._by_version)
        if weights_seq_no < versions[0]:
            raise ValueError(f"weights version {weights_seq_no} is older than every recorded training iteration")
        later = bisect.bisect_right(versions, weights_seq_no)
        if later < len(versions):  # produced during the iteration that ended holding versions[later]
            return self._by_version[versions[later]]
        return TrainingTag(training_iteration=self.latest.training_iteration + 1, env_steps=env_steps_now)

    def to_dict(self) -> dict[int, int]:
        """{weights version: training iteration}: what an eval runner needs for its labels."""
        return {version: tag.training_iteration for version, tag in self._by_version.items()}
