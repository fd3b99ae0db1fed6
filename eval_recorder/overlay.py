"""The burned-in label: a small text strip on each frame saying what the video is.

Holds:
  label_text()   ``iteration 12 | step 40 | arrived 1/3``: training iteration of the
                 weights, env step of the episode, agents arrived / total.
  burn_label()   the frame with that text in a dark strip along its bottom edge; the
                 pixels above the strip are untouched.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["burn_label", "label_text"]


def label_text(*, training_iteration: int | None, step: int, arrived: int, agents: int) -> str:
    iteration = "?" if training_iteration is None else str(training_iteration)
    return f"iteration {iteration} | step {step} | arrived {arrived}/{agents}"


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def strip_height(frame_height: int) -> int:
    """Height in pixels of the label strip on a frame of ``frame_height`` (legible at any size)."""
    return max(14, frame_height // 20)


def burn_label(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of the RGB ``frame`` with ``text`` in white on a dark strip at the bottom."""
    height, width = frame.shape[:2]
    strip = strip_height(height)
    font = _font(max(10, strip - 4))
    band = Image.new("RGB", (width, strip), (20, 20, 20))
    ImageDraw.Draw(band).text((4, strip // 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    labelled = frame.copy()
    labelled[height - strip :] = np.asarray(band)
    return labelled
