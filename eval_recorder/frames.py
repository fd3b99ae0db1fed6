"""Frame sources: where the recording wrapper gets its pictures and the episode's facts.

A ``FrameSource`` is the only env-specific part of recording: the wrapper owns the episode
(reset, steps, end) and asks its source for each frame, the label's extra text, the
episode's facts and, for sources that play them, saved scenarios. ``RenderFrames`` is the
default source (the env's own ``render()``, ``rgb_array``); plug-in sources are found
through the ``eval_recorder.frame_sources`` entry point group (``pyproject.toml``), so the
core never imports them by name: each entry is a FrameSource subclass whose ``find(env)``
returns an instance for an env it recognises, else None.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from eval_recorder.errors import NoFrames
from eval_recorder.yuv import even_size

__all__ = ["DEFAULT_MAX_SIDE", "FrameSource", "RenderFrames", "count_frame", "env_name", "find_frame_source", "frames_rendered",
           "most_agents", "plugin_sources", "read_scenarios", "scaled_size", "scenario_kinds"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "eval_recorder.frame_sources"
RGB, YUV420P = "rgb24", "yuv420p"
DEFAULT_MAX_SIDE = 800
"""Default cap on the longest frame side, in pixels (0 = no cap)."""

_FRAMES_RENDERED = 0


def frames_rendered() -> int:
    """Number of frames any frame source of this process has produced."""
    return _FRAMES_RENDERED


def count_frame() -> None:
    """Frame sources call this once per frame they produce."""
    global _FRAMES_RENDERED
    _FRAMES_RENDERED += 1


class FrameSource:
    """Pictures and facts of one env's episodes.

    ``label`` is the short env label that starts every video's file name. The wrapper
    calls ``new_episode()`` after each reset, ``frame()`` for each recorded frame, and
    ``label_extra()`` / ``facts()`` for the burned-in label and the episode's metadata.
    """

    label: str = "env"

    @classmethod
    def find(cls, env: Any, *, max_side: int) -> "FrameSource | None":
        """A source for ``env`` if this kind of source recognises it, else None."""
        return None

    def new_episode(self) -> None:
        """The env was reset (its world may have changed)."""

    def frame(self) -> tuple[str, np.ndarray]:
        """The current state as ``("rgb24", (h, w, 3) uint8)`` or ``("yuv420p", (h*3//2, w) uint8)``,
        even sides, at most ``max_side`` on the longest side."""
        raise NotImplementedError

    drawn_beside: str | None = None
    """``"module:Class"`` of this source's drawing beside the env, else None (``frame()`` draws
    on the stepping thread). When set, recording asks for ``frame_size()`` and ``scene()``
    after each reset and ``state()`` for each recorded frame, and the encoder helper process
    imports the class and draws there: ``Class(scene)``, then ``.frame(state)`` returns the
    yuv420p frame ``frame()`` would have given. The stepping thread only packs a few bytes."""

    def frame_size(self) -> tuple[int, int]:
        """(width, height) of this episode's frames (a source with ``drawn_beside``)."""
        raise NotImplementedError

    def scene(self) -> bytes:
        """What stays fixed during the episode just reset, packed (a source with ``drawn_beside``)."""
        raise NotImplementedError

    def state(self) -> bytes:
        """The env's current state as the drawing needs it, packed (a source with ``drawn_beside``)."""
        raise NotImplementedError

    def label_extra(self) -> str | None:
        """Extra text of the burned-in label (e.g. ``arrived 1/3``), or None."""
        return None

    def facts(self) -> dict[str, Any]:
        """Facts of the episode that just ended, beyond length and return (e.g. Flatland's
        ``num_agents``, ``agents_arrived``, ``completion``)."""
        return {}

    record_kind: str | None = None
    """The kind of replay record ``replay_capture()`` keeps (e.g. ``flatland``: a flatland
    Trajectory); None: the core's own (``eval_recorder.episode_record``)."""

    def replay_capture(self) -> Any:
        """Right after a reset: this source's own capture of the episode's replay record (with
        ``step_multi(actions, rewards, terminateds, truncateds)`` and/or ``step(action, reward,
        terminated, truncated)`` after each env step, and ``finish()`` giving an object with
        ``to_bytes()``), or None for the core's ``EpisodeCapture``."""
        return None

    @classmethod
    def publish_record(cls, data: bytes, folder: Path, stem: str) -> str | None:
        """On the driver: write a ``record_kind`` record (``data``, from ``to_bytes()``) into
        ``folder`` under a name made of ``stem``, complete or not at all, never overwriting;
        the name, or None if it is taken."""
        raise NotImplementedError

    @classmethod
    def record_name(cls, stem: str) -> str:
        """The name ``publish_record`` gives a record of ``stem``."""
        raise NotImplementedError

    @classmethod
    def render_record(cls, path: Path, *, max_side: int, steps) -> Any:
        """On the driver, later: ``(pixel format, frame, label extra)`` of each of ``steps``
        (ascending env steps, 0: after the reset) of the episode whose ``record_kind`` record
        is stored at ``path``, drawn as ``frame()`` / ``label_extra()`` drew them live; it first
        checks that the record replays (``ReplayDiverged``, naming the first step that differs,
        before any frame). No ``steps``: only that check."""
        raise NotImplementedError(f"{cls.__name__} cannot draw its stored episodes again")

    def close(self) -> None:
        """Release what the source holds."""

    # ---- saved scenarios (a plug-in that plays them overrides all four) ---------------

    plays_scenarios: bool = False
    """Whether this kind of source can load saved scenarios into its env (``load_scenario``)."""

    scenario_files: str | None = None
    """What its saved scenarios are, for messages (e.g. "saved Flatland scenarios (.pkl or
    .mpk files of RailEnvPersister)"); None if it plays none."""

    @classmethod
    def is_scenario(cls, name: str) -> bool:
        """Whether a file called ``name`` is a saved scenario this kind of source plays."""
        return False

    @classmethod
    def scenario_agents(cls, name: str, data: bytes) -> int | None:
        """How many agents the saved scenario ``data`` (file ``name``) runs, if this kind of
        source plays saved scenarios, else None."""
        return None

    def load_scenario(self, name: str, data: bytes) -> dict[str, Any]:
        """Load the saved scenario ``data`` (file ``name``) into the env before its next
        reset; returns the reset options that keep it."""
        raise NotImplementedError(f"{type(self).__name__} plays no saved scenarios")


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longest side is at most ``max_side`` (0 = no
    cap), then made even (``yuv.even_size``)."""
    if max_side > 0 and max(width, height) > max_side:
        factor = max_side / max(width, height)
        width, height = max(2, round(width * factor)), max(2, round(height * factor))
    return even_size(width, height)


class RenderFrames(FrameSource):
    """Frames from the env's own ``render()``, which must return ``rgb_array`` frames
    (gymnasium's ``render_mode="rgb_array"``): (h, w, 3) or (h, w, 4) uint8 arrays of one
    size per episode.

    Anything else is refused with ``NoFrames`` naming the env and what it returned: a
    ``render()`` that raises, returns no array, an array of another dtype (float frames in
    [0, 1] too: they are not guessed at and scaled), or changes its frames' size within an
    episode (never stretched to the first size).
    """

    def __init__(self, env: Any, *, max_side: int, label: str = "env") -> None:
        self._env = env
        # Named now: RLlib's gym.make later puts its own id on the env (rllib-single-agent-env-v0).
        self._name = env_name(env)
        self._max_side = max_side
        self.label = label
        self._shape: tuple[int, ...] | None = None  # the episode's first frame, as render() gave it

    @classmethod
    def find(cls, env: Any, *, max_side: int) -> "RenderFrames":
        mode = getattr(env, "render_mode", None)
        if mode is not None and mode != "rgb_array":
            raise NoFrames(
                f"the env {env_name(env)} renders in mode {mode!r}, not 'rgb_array'; "
                f"make the evaluation env with render_mode='rgb_array' so that its frames can be recorded."
            )
        return cls(env, max_side=max_side)

    def new_episode(self) -> None:
        self._shape = None

    def frame(self) -> tuple[str, np.ndarray]:
        image = self._render()
        height, width = image.shape[:2]
        out_width, out_height = scaled_size(width, height, self._max_side)
        if (out_width, out_height) != even_size(width, height):
            from PIL import Image

            image = np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, :3])).resize(
                (out_width, out_height), Image.BILINEAR))
        else:
            image = image[:out_height, :out_width, :3]
        count_frame()
        return RGB, np.ascontiguousarray(image)

    def _render(self) -> np.ndarray:
        """The env's frame, checked (NoFrames, naming what render() did, if it is not one)."""
        name = self._name
        try:
            image = self._env.render()
        except Exception as error:  # the env's own code: any failure is its render()'s
            raise NoFrames(
                f"the env {name} raised {type(error).__name__} in render() ({_first_line(error)}); "
                f"fix its render() so that it returns rgb_array frames (uint8 arrays of shape (height, width, 3))."
            ) from None
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] not in (3, 4) or image.size == 0:
            what = type(image).__name__ if not isinstance(image, np.ndarray) else f"an array of shape {image.shape}"
            raise NoFrames(
                f"the env {name} returned {what} from render(), not an rgb_array frame; "
                f"make the evaluation env with render_mode='rgb_array' so that its frames can be recorded."
            )
        if image.dtype != np.uint8:
            raise NoFrames(
                f"the env {name} returned frames of dtype {image.dtype} from render(), not uint8; make its render() "
                f"return uint8 RGB frames (values 0 to 255: e.g. (frame * 255).astype(np.uint8) for floats in [0, 1])."
            )
        if self._shape is None:
            self._shape = image.shape
        elif image.shape != self._shape:
            raise NoFrames(
                f"the env {name} returned frames of shape {image.shape} from render() after frames of shape "
                f"{self._shape} in the same episode; make its render() keep one frame size for a whole episode."
            )
        return image


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")


def env_name(env: Any) -> str:
    """How an env instance is named in labels and messages: its gymnasium id, else its class."""
    spec = getattr(env, "spec", None)
    if getattr(spec, "id", None):
        return spec.id
    return type(getattr(env, "unwrapped", env)).__name__


@functools.lru_cache(maxsize=1)
def plugin_sources() -> tuple[type[FrameSource], ...]:
    """The frame source classes installed under the entry point group, in name order."""
    from importlib.metadata import entry_points  # here: Flatland's drawing helper imports this module without it

    found = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except Exception as error:  # a broken plug-in must not stop recording with render()
            logger.warning("frame source %s could not be loaded (%s: %s); it is skipped",
                           entry.name, type(error).__name__, error)
    return tuple(found)


def find_frame_source(env: Any, *, max_side: int, label: str) -> FrameSource:
    """The source that draws ``env``: a plug-in that recognises it, else its own render().

    ``label`` (the env's label) is used unless the plug-in has its own (``flatland``).
    Raises NoFrames for an env that renders no rgb_array frames."""
    for source_class in plugin_sources():
        source = source_class.find(env, max_side=max_side)
        if source is not None:
            return source
    source = RenderFrames.find(env, max_side=max_side)
    source.label = label
    return source


def read_scenarios(folder: str | None) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every saved scenario in ``folder`` that an installed frame
    source plays, in name order (none without a folder)."""
    if not folder:
        return []
    files = sorted(path for path in Path(folder).iterdir()
                   if path.is_file() and any(source.is_scenario(path.name) for source in plugin_sources()))
    return [(path.name, path.read_bytes()) for path in files]


def scenario_kinds() -> str:
    """What the installed frame sources take as saved scenarios, for messages."""
    kinds = [source.scenario_files for source in plugin_sources() if source.scenario_files]
    return " or ".join(kinds) or "saved scenarios (no installed frame source plays any)"


def most_agents(scenarios: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """The saved scenario (name, bytes) that runs the most agents, as the installed frame
    sources count them (the first one if none can)."""

    def agents(scenario: tuple[str, bytes]) -> int:
        counts = [source_class.scenario_agents(*scenario) for source_class in plugin_sources()]
        return max((count for count in counts if count is not None), default=0)

    return max(scenarios, key=agents)
