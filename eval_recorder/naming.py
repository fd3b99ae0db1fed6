"""Tags, video names and per-video metadata: pure functions, no I/O.

Holds:
  TrainingTag       the training state whose weights a video shows.
  WeightsHistory    which training iteration each learner weights version belongs to;
                    turns the weights version an eval runner acted with into a tag.
  video_stem()      the file name (without suffix) of a video; lexical order of names
                    is training order.
  numbered_stem()   the n-th alternative name when a name is taken.
  video_metadata()  the sidecar / manifest record of one video.
  caption()         the one-line caption shown under a video.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "TrainingTag",
    "WeightsHistory",
    "caption",
    "numbered_stem",
    "video_metadata",
    "video_stem",
]

_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class TrainingTag:
    """Training state of the evaluated weights."""

    training_iteration: int  # completed training iterations that produced the weights
    env_steps: int  # lifetime env steps sampled for training at that moment


class WeightsHistory:
    """Maps learner weights versions (RLlib's ``WEIGHTS_SEQ_NO``) to training iterations.

    RLlib's Learner counts its updates in ``WEIGHTS_SEQ_NO`` and ships that number with
    the weights to every eval runner, which stamps it on each action. The driver
    records, at the end of each training iteration, the version the learner then
    holds; a video is tagged with the iteration its episode's version belongs to.
    A version newer than every recorded one comes from the training step that just
    finished in the current ``train()`` call (evaluation after training, not in
    parallel): that is the next iteration, with the env steps sampled so far.
    """

    def __init__(self) -> None:
        self._by_version: dict[int, TrainingTag] = {}

    def record(self, *, weights_seq_no: int, training_iteration: int, env_steps: int) -> None:
        """The learner held ``weights_seq_no`` when ``training_iteration`` completed."""
        known = self._by_version.get(weights_seq_no)
        # Iterations that did not update the weights share a version: keep the latest.
        if known is None or known.training_iteration <= training_iteration:
            self._by_version[weights_seq_no] = TrainingTag(training_iteration, env_steps)

    def tag_for(self, weights_seq_no: int, *, env_steps_now: int) -> TrainingTag:
        """Tag of the weights version ``weights_seq_no`` an eval episode acted with."""
        if weights_seq_no in self._by_version:
            return self._by_version[weights_seq_no]
        if not self._by_version:
            raise ValueError("no training iteration recorded yet; record the start state first")
        latest_version = max(self._by_version)
        if weights_seq_no < latest_version:
            raise ValueError(f"weights version {weights_seq_no} belongs to no recorded training iteration")
        latest = max(tag.training_iteration for tag in self._by_version.values())
        return TrainingTag(training_iteration=latest + 1, env_steps=env_steps_now)


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is safe in file names and wandb ids, else ValueError."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} may hold only letters, digits, '_', '-' and '.' (at most 64)")
    return run_id


def video_stem(*, tag: TrainingTag, evaluation_round: int, episode_index: int, run_id: str) -> str:
    """``flatland-it000012-ev0003-ep001-<run id>``: zero-padded iteration first."""
    return (
        f"flatland-it{tag.training_iteration:06d}-ev{evaluation_round:04d}"
        f"-ep{episode_index:03d}-{check_run_id(run_id)}"
    )


def numbered_stem(stem: str, attempt: int) -> str:
    """Name to try when ``stem`` is taken: ``stem`` itself first, then ``stem-2``, ..."""
    return stem if attempt <= 1 else f"{stem}-{attempt}"


def video_metadata(
    *,
    episode,
    tag: TrainingTag,
    evaluation_round: int,
    episode_index: int,
    run_id: str,
    checkpoint: str | None,
    file_name: str,
    sha256: str,
    created: str,
) -> dict:
    """The sidecar / manifest record of one video (``episode`` is a RecordedEpisode)."""
    return {
        "file": file_name,
        "training_iteration": tag.training_iteration,
        "env_steps": tag.env_steps,
        "evaluation_round": evaluation_round,
        "episode_index": episode_index,
        "env_seed": episode.env_seed,
        "episode_length": episode.episode_length,
        "num_agents": episode.num_agents,
        "agents_arrived": episode.agents_arrived,
        "completion": episode.agents_arrived / episode.num_agents if episode.num_agents else 0.0,
        "episode_return": episode.episode_return,
        "frames": episode.frames,
        "frame_every": episode.frame_every,
        "fps": episode.fps,
        "width": episode.width,
        "height": episode.height,
        "run_id": run_id,
        "checkpoint": checkpoint,
        "created": created,
        "bytes": len(episode.mp4),
        "sha256": sha256,
        "weights_seq_no": episode.weights_seq_no,
        "runner": {"index": episode.runner_index, "host": episode.runner_host, "pid": episode.runner_pid},
    }


def caption(metadata: dict) -> str:
    """``iteration 12 · 4800 env steps · 2/3 arrived · return -41.50`` (plus episode)."""
    return (
        f"iteration {metadata['training_iteration']} · {metadata['env_steps']} env steps · "
        f"episode {metadata['episode_index']} · {metadata['agents_arrived']}/{metadata['num_agents']} arrived · "
        f"return {metadata['episode_return']:.2f}"
    )
