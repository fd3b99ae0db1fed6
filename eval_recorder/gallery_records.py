"""What the gallery makes of a folder's manifest records, as data: which records it can
show (``showable``), a video's caption, the per-iteration means its plots draw
(``iteration_summary``) and the situations its comparison shows side by side
(``situations``). Pure functions; a record recovered after a crash knows only some facts,
and each function uses what it knows.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import NamedTuple

from eval_recorder.naming import caption

__all__ = [
    "IterationSummary",
    "Situation",
    "int_or_zero",
    "is_int",
    "iteration_summary",
    "kept_caption",
    "kept_without_video",
    "outcome",
    "record_env",
    "render_command",
    "showable",
    "situations",
    "video_caption",
    "video_count",
]


class IterationSummary(NamedTuple):
    """One training iteration's evaluation videos, averaged (a point of the plot)."""

    training_iteration: int
    episodes: int  # videos of this iteration
    mean_return: float | None  # over the videos that know their return (None: none does)
    mean_completion: float | None  # over the videos that report completion (None: none does)


@dataclass(frozen=True)
class Situation:
    """One evaluation situation (an env seed or a saved scenario of one env) and its videos,
    oldest training iteration first."""

    env: str | None
    scenario: str | None
    env_seed: int | None
    records: tuple[dict, ...]

    @property
    def label(self) -> str:
        """``episode 0 · seed 1000`` (``scenario <file>`` for a saved scenario; the episode
        index when every video of the situation has the same one)."""
        parts = []
        indexes = {record.get("episode_index") for record in self.records}
        if len(indexes) == 1 and isinstance(next(iter(indexes)), int):
            parts.append(f"episode {next(iter(indexes))}")
        if self.scenario is not None:
            parts.append(f"scenario {self.scenario}")
        if self.env_seed is not None:
            parts.append(f"seed {self.env_seed}")
        return " · ".join(parts)


def iteration_summary(records: list[dict]) -> list[IterationSummary]:
    """Per training iteration of ``records`` (videos of one env), oldest first: the number of
    videos, their mean return and their mean completion rate. A video lacking a value (a
    record recovered after a crash) is left out of that mean only."""
    by_iteration: dict[int, list[dict]] = {}
    for record in records:
        by_iteration.setdefault(record["training_iteration"], []).append(record)
    summary = []
    for iteration in sorted(by_iteration):
        group = by_iteration[iteration]
        summary.append(IterationSummary(
            training_iteration=iteration,
            episodes=len(group),
            mean_return=_mean(record.get("episode_return") for record in group),
            mean_completion=_mean(record.get("completion") for record in group),
        ))
    return summary


def situations(records: list[dict]) -> list[Situation]:
    """The situations that ``records`` played, each with its videos: same env and same
    ``scenario`` / ``env_seed``. Videos of an unseeded reset without a scenario (or whose
    seed was lost in a crash) belong to none. Situations in order of env, then episode
    index; videos oldest training iteration first, then by round and episode."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        seed, scenario = record.get("env_seed"), record.get("scenario")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        scenario = str(scenario) if scenario else None
        if seed is None and scenario is None:
            continue
        groups.setdefault((record_env(record), scenario, seed), []).append(record)
    found = [
        Situation(env=env, scenario=scenario, env_seed=seed, records=tuple(sorted(group, key=_oldest_first)))
        for (env, scenario, seed), group in groups.items()
    ]
    found.sort(key=lambda s: (
        s.env or "", min(int_or_zero(r.get("episode_index")) for r in s.records), s.scenario or "", s.env_seed or 0,
    ))
    return found


def video_caption(record: dict) -> str:
    """The caption of a video: ``naming.caption``, or for a record recovered after a crash
    what it knows (``iteration 3 · episode 1 · recovered``)."""
    try:
        text = caption(record)
    except (KeyError, TypeError, ValueError):
        if not record.get("recovered"):
            raise
        text = " · ".join(_known_facts(record))
    return f"{text} · recovered" if record.get("recovered") else text


def showable(record) -> bool:
    """A dict naming a file in the folder itself, of a known training iteration, with
    everything its caption needs (a record recovered after a crash: what it knows)."""
    if not isinstance(record, dict):
        return False
    name = record.get("file")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    if not is_int(record.get("training_iteration")):
        return False
    if record.get("recovered"):
        return record.get("episode_index") is None or is_int(record.get("episode_index"))
    if not is_int(record.get("episode_index")):
        return False
    try:
        caption(record)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def kept_without_video(record) -> bool:
    """A manifest line of an episode kept without a video (``recording.select`` did not choose
    it, or its video was dropped on its eval runner): a plain replay record name, no ``file``,
    a known iteration and episode index."""
    if not isinstance(record, dict) or "file" in record:
        return False
    name = record.get("record")
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and is_int(record.get("training_iteration")) and is_int(record.get("episode_index")))


def kept_caption(record: dict) -> str:
    """``episode 2 · completion 0.50 · 1/2 arrived · return -89.00``: an episode kept without a video."""
    parts = [f"episode {record['episode_index']}"]
    if _number(record.get("completion")) is not None:
        parts.append(f"completion {float(record['completion']):.2f}")
    return " · ".join(parts + outcome(record))


_HYDRA_PLAIN = re.compile(r"[\w./ +@:~%-]+")


def render_command(record_path: str) -> str:
    """The command that renders the episode whose replay record is at ``record_path``, as a
    POSIX shell takes it (``shlex``), its value quoted for Hydra too where Hydra would read it
    otherwise (a comma, a bracket, a quote ...)."""
    value = record_path if _HYDRA_PLAIN.fullmatch(record_path) else \
        "'" + record_path.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"python run_eval.py {shlex.quote(f'render={value}')}"


def outcome(record: dict) -> list[str]:
    """``2/3 arrived``, ``return -12.50``: what is known of how the episode went."""
    parts = []
    if is_int(record.get("agents_arrived")) and is_int(record.get("num_agents")) and record["num_agents"]:
        parts.append(f"{record['agents_arrived']}/{record['num_agents']} arrived")
    if _number(record.get("episode_return")) is not None:
        parts.append(f"return {float(record['episode_return']):.2f}")
    return parts


def record_env(record: dict) -> str | None:
    """The env a record names (as text); None if it names none."""
    env = record.get("env")
    return None if env is None else str(env)


def is_int(value) -> bool:
    """A whole number, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_or_zero(value) -> int:
    """``value`` if it is a whole number, else 0 (a sort key for facts a record may lack)."""
    return value if is_int(value) else 0


def video_count(count: int) -> str:
    """``1 video``, ``3 videos``."""
    return f"{count} video{'s' if count != 1 else ''}"


def _known_facts(record: dict) -> list[str]:
    """The caption's parts that ``record`` knows, in the caption's order."""
    parts = [f"iteration {record['training_iteration']}"]
    if is_int(record.get("env_steps")):
        parts.append(f"{record['env_steps']} env steps")
    if is_int(record.get("episode_index")):
        parts.append(f"episode {record['episode_index']}")
    if record.get("scenario"):
        parts.append(f"scenario {record['scenario']}")
    parts.extend(outcome(record))
    return parts


def _oldest_first(record: dict) -> tuple[int, int, int]:
    return (record["training_iteration"], int_or_zero(record.get("evaluation_round")),
            int_or_zero(record.get("episode_index")))


def _mean(values) -> float | None:
    numbers = [number for number in map(_number, values) if number is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
