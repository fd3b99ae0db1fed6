"""Video names, per-video metadata and captions: pure functions, no I/O.

This is the one module that knows the video file-name format: it builds names
(``env_label``, ``video_stem``, ``numbered_stem``) and reads them back
(``parse_video_name``). Within one run (one env), lexical order of names is training order.
It also makes each video's sidecar / manifest record and the caption shown under a video.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "caption",
    "check_run_id",
    "env_label",
    "episode_metadata",
    "numbered_stem",
    "parse_video_name",
    "reads_as_text",
    "run_id_override",
    "tracker_caption",
    "video_metadata",
    "video_stem",
]

_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LABEL_LENGTH = 24
_LABEL_CHARACTERS = "a-z0-9_-"  # of an env label (a regex character class's inside)


# What Hydra's override grammar reads as a number, a bool or null rather than as text: an
# unquoted run id like 72e47061 would become the float inf (tests/test_naming.py checks this
# against Hydra's own parser).
_NOT_TEXT = re.compile(
    r"[+-]?(?:\d[\d_]*|(?:\d[\d_]*)?\.\d[\d_]*(?:[eE][+-]?\d[\d_]*)?|\d[\d_]*\.?[eE][+-]?\d[\d_]*"
    r"|\d[\d_]*\.|inf|nan)|true|false|null",
    re.IGNORECASE,
)


def reads_as_text(value: str) -> bool:
    """Whether Hydra's override grammar reads ``value``, unquoted, as that very text."""
    return not _NOT_TEXT.fullmatch(value)


def run_id_override(run_id: str) -> str:
    """``wandb.run_id=<run_id>`` as a Hydra override that keeps the id as text: quoted
    (``wandb.run_id='72e47061'``) where Hydra would read it as a number, a bool or null."""
    return f"wandb.run_id={run_id}" if reads_as_text(run_id) else f"wandb.run_id='{run_id}'"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is safe in file names and wandb ids, else ValueError."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} may hold only letters, digits, '_', '-' and '.' (at most 64)")
    return run_id


def env_label(name: str) -> str:
    """A short, file-name-safe label of an env name: lower case, letters, digits, ``_``
    and ``-`` (anything else becomes ``-``), at most 24 characters, never empty.

    ``"CartPole-v1"`` → ``cartpole-v1``; ``"ale_py:ALE/Pong-v5"`` → ``pong-v5`` (the part
    after the last ``/`` or ``:``); ``"my_pkg.envs.GridEnv"`` → ``gridenv``.
    """
    base = re.split(r"[/:.]", name.strip())[-1] if name.strip() else ""
    label = re.sub(f"[^{_LABEL_CHARACTERS}]+", "-", base.lower()).strip("-_")[:_LABEL_LENGTH].strip("-_")
    return label or "env"


def video_stem(*, env: str, training_iteration: int, evaluation_round: int, episode_index: int, run_id: str) -> str:
    """``<env>-it000012-ev0003-ep001-<run id>``: the zero-padded iteration right after the
    env label, so that names of one run sort by training."""
    if env != env_label(env):
        raise ValueError(f"env label {env!r} is not a label; make it with env_label()")
    return (
        f"{env}-it{training_iteration:06d}-ev{evaluation_round:04d}"
        f"-ep{episode_index:03d}-{check_run_id(run_id)}"
    )


def numbered_stem(stem: str, attempt: int) -> str:
    """Name to try when ``stem`` is taken: ``stem`` itself first, then ``stem-2``, ..."""
    return stem if attempt <= 1 else f"{stem}-{attempt}"


def parse_video_name(file_name: str, run_id: str) -> dict | None:
    """The ``video_stem`` arguments of a video file name of run ``run_id``: a name
    ``video_stem`` made, maybe numbered (``numbered_stem``), then ``.mp4``; None for any
    other name. ``video_stem(**parse_video_name(f"{stem}.mp4", run_id)) == stem``."""
    match = _video_name(run_id).match(file_name)
    if match is None:
        return None
    return {
        "env": match["env"],
        "training_iteration": int(match["training_iteration"]),
        "evaluation_round": int(match["evaluation_round"]),
        "episode_index": int(match["episode_index"]),
        "run_id": run_id,
    }


@functools.lru_cache(maxsize=16)
def _video_name(run_id: str) -> re.Pattern:
    """``<env>-it<6+ digits>-ev<4+>-ep<3+>-<run id>``, maybe ``-2``, ``-3``, ... then ``.mp4``."""
    return re.compile(
        f"^(?P<env>[{_LABEL_CHARACTERS}]+?)"
        r"-it(?P<training_iteration>\d{6,})-ev(?P<evaluation_round>\d{4,})-ep(?P<episode_index>\d{3,})"
        "-" + re.escape(run_id) + r"(?:-[1-9]\d*)?\.mp4$"
    )


def video_metadata(
    *,
    episode,
    tag,
    evaluation_round: int,
    episode_index: int,
    run_id: str,
    checkpoint: str | None,
    file_name: str,
    sha256: str,
    created: str,
) -> dict:
    """The sidecar / manifest record of one video (``episode`` is a RecordedEpisode,
    ``tag`` a TrainingTag). The episode's frame-source facts (Flatland: ``num_agents``,
    ``agents_arrived``, ``completion``, ``scenario``) follow the generic fields."""
    return {
        "file": file_name,
        "env": episode.env_label,
        "training_iteration": tag.training_iteration,
        "env_steps": tag.env_steps,
        "evaluation_round": evaluation_round,
        "episode_index": episode_index,
        "env_seed": episode.env_seed,
        "episode_length": episode.episode_length,
        "episode_return": episode.episode_return,
        "agent_returns": episode.agent_returns,
        **episode.facts,
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
        "runner": {"index": episode.runner_index, "host": episode.runner_host, "pid": episode.runner_pid,
                   "env": episode.runner_env},
    }


_VIDEO_ONLY = ("file", "frames", "frame_every", "fps", "width", "height", "bytes", "sha256")


def episode_metadata(*, record_name: str, **facts) -> dict:
    """The manifest record of an episode kept without a video (``recording.select`` did not
    choose it): ``video_metadata``'s facts of the episode, without the video's fields (no
    ``file``: readers of videos pass it by), with ``record``, the name of its replay record."""
    metadata = video_metadata(file_name="", sha256="", **facts)
    for key in _VIDEO_ONLY:
        del metadata[key]
    return {"record": record_name, **metadata}


def caption(metadata: dict) -> str:
    """``iteration 12 · 4800 env steps · episode 1 · 2/3 arrived · return -41.50``, then
    ``chosen: worst completion of 6`` when ``recording.select`` chose the video.

    ``scenario <file>`` follows the episode when the episode played a saved scenario;
    ``a/n arrived`` appears for envs that report arrivals (Flatland)."""
    parts = [
        f"iteration {metadata['training_iteration']}",
        f"{metadata['env_steps']} env steps",
        f"episode {metadata['episode_index']}",
    ]
    if metadata.get("scenario"):
        parts.append(f"scenario {metadata['scenario']}")
    if metadata.get("agents_arrived") is not None and metadata.get("num_agents"):
        parts.append(f"{metadata['agents_arrived']}/{metadata['num_agents']} arrived")
    parts.append(f"return {float(metadata['episode_return']):.2f}")
    if metadata.get("chosen"):
        parts.append(f"chosen: {metadata['chosen']}")
    return " · ".join(parts)



def tracker_caption(metadata: dict) -> str:
    """``caption(metadata)``, or, for a record recovered after a crash that knows less,
    ``iteration 12 · episode 1``: what the trackers show under a video."""
    try:
        return caption(metadata)
    except (KeyError, TypeError, ValueError):
        return f"iteration {metadata.get('training_iteration')} · episode {metadata.get('episode_index')}"