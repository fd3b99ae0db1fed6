"""Off-screen frames of a Flatland ``RailEnv`` (what ``render: human`` records).

Holds:
  FrameRenderer      one RGB uint8 frame per call, from flatland's own RenderTool,
                     drawn off-screen (no display needed), scaled to ``max_side``.
  frames_rendered    how many frames this process has rendered: lets a test prove
                     that training env runners never render.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from eval_recorder.encoding import even_size

__all__ = ["FrameRenderer", "frames_rendered"]

_FRAMES_RENDERED = 0


def frames_rendered() -> int:
    """Number of frames any FrameRenderer of this process has produced."""
    return _FRAMES_RENDERED


class FrameRenderer:
    """Render the current state of ``rail_env`` as an RGB frame with even sides.

    ``max_side`` caps the longest side in pixels (0 = flatland's own size). Call
    ``new_episode()`` after the env was reset: the rails may have been regenerated.
    """

    def __init__(self, rail_env, *, max_side: int = 0) -> None:
        from flatland.utils.rendertools import RenderTool

        self._tool = RenderTool(rail_env, gl="PILSVG")
        self._max_side = max_side
        self._size: tuple[int, int] | None = None

    def new_episode(self) -> None:
        """Forget the rails drawn so far; the next frame draws them anew."""
        self._tool.reset()

    def render(self) -> np.ndarray:
        global _FRAMES_RENDERED
        self._tool.render_env(show=False, show_observations=False, show_predictions=False)
        rgba = self._tool.get_image()
        height, width = rgba.shape[:2]
        if self._size is None:
            self._size = even_size(*_scaled(width, height, self._max_side))
        image = Image.fromarray(rgba[..., :3])
        if image.size != self._size:
            image = image.resize(self._size, Image.BILINEAR)
        _FRAMES_RENDERED += 1
        return np.asarray(image)


def _scaled(width: int, height: int, max_side: int) -> tuple[int, int]:
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    factor = max_side / max(width, height)
    return max(2, round(width * factor)), max(2, round(height * factor))
