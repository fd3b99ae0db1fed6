"""Real H.264 videos for tests, made by the project's own encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval_recorder.encoding import StreamingEncoder

__all__ = ["encode"]


def encode(path: Path, *, frames: int, width: int, height: int, fps: int = 10) -> bytes:
    """A real H.264 mp4 of ``frames`` frames at ``path``: a bar moving over a gradient; its bytes."""
    encoder = StreamingEncoder(path, width=width, height=height, fps=fps)
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    for index in range(frames):
        frame = gradient.copy()
        frame[:, index * 8 % width:(index * 8 % width) + 8] = (255, 40, 40)
        encoder.add(frame)
    assert encoder.close() == frames
    return path.read_bytes()
