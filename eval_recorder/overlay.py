"""The burned-in label: a small text strip on each frame saying what the video is.

Holds:
  label_text()   ``iteration 12 | step 40 | arrived 1/3``: training iteration of the
                 weights, env step of the episode, and what the frame source adds
                 (Flatland: agents arrived / total; other envs: the return so far).
  burn_label()   the RGB frame with that text in a dark strip along its bottom edge;
                 the pixels above the strip are untouched.
  burn_label_yuv420p()  the same on a yuv420p frame (what the recorder encodes).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["burn_label", "burn_label_yuv420p", "label_text", "strip_height"]


def label_text(*, training_iteration: int | None, step: int, extra: str | None = None) -> str:
    iteration = "?" if training_iteration is None else str(training_iteration)
    text = f"iteration {iteration} | step {step}"
    return f"{text} | {extra}" if extra else text


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def strip_height(frame_height: int) -> int:
    """Height in pixels (even) of the label strip on a frame of ``frame_height``."""
    height = max(14, frame_height // 20)
    return height + height % 2


def _band(width: int, height: int, text: str) -> np.ndarray:
    strip = strip_height(height)
    band = Image.new("RGB", (width, strip), (20, 20, 20))
    ImageDraw.Draw(band).text((4, strip // 2), text, fill=(255, 255, 255), font=_font(max(10, strip - 4)), anchor="lm")
    return np.asarray(band)


def burn_label(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of the RGB ``frame`` with ``text`` in white on a dark strip at the bottom."""
    height, width = frame.shape[:2]
    labelled = frame.copy()
    labelled[height - strip_height(height) :] = _band(width, height, text)
    return labelled


def burn_label_yuv420p(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of the yuv420p ``frame`` ((h * 3 / 2, w) planes) with the label strip of
    ``burn_label``: only the strip is drawn in RGB and converted, as the renderer converts."""
    from eval_recorder.flatland.rendering import paste_rows_yuv420p

    width, height = frame.shape[1], frame.shape[0] * 2 // 3
    labelled = frame.copy()
    paste_rows_yuv420p(labelled, height - strip_height(height), _band(width, height, text))
    return labelled
