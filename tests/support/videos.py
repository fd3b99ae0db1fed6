"""Real, tiny H.264 mp4 files for tests: made by PyAV directly (as the recorder writes them)
or by the project's own encoder, and counted back by decoding."""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["decoded_frames", "encode", "rgb_frames", "tiny_mp4"]


def tiny_mp4(frames: int = 6, width: int = 32, height: int = 24, fps: int = 10, shade: int = 0) -> bytes:
    """An mp4 as the recorder writes them (libx264, yuv420p, faststart) of ``frames`` frames."""
    fd, path = tempfile.mkstemp(suffix=".mp4")  # faststart rewrites the file: needs a real one
    os.close(fd)
    try:
        _encode(path, frames, width, height, fps, shade)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def _encode(path: str, frames: int, width: int, height: int, fps: int, shade: int) -> None:
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            picture = np.full((height, width, 3), (shade + 40 * index) % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())


def decoded_frames(data_or_path) -> int:
    with av.open(data_or_path if isinstance(data_or_path, str) else io.BytesIO(data_or_path)) as container:
        return sum(1 for _ in container.decode(video=0))


def rgb_frames(path: Path) -> list[np.ndarray]:
    """Every frame of the video at ``path``, decoded to RGB uint8 arrays (height, width, 3)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def encode(path: Path, *, frames: int, width: int, height: int, fps: int = 10) -> bytes:
    """A real H.264 mp4 of ``frames`` frames at ``path``, made by the project's own encoder:
    a bar moving over a gradient; its bytes."""
    from eval_recorder.encoding import StreamingEncoder

    encoder = StreamingEncoder(path, width=width, height=height, fps=fps)
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    for index in range(frames):
        frame = gradient.copy()
        frame[:, index * 8 % width:(index * 8 % width) + 8] = (255, 40, 40)
        encoder.add(frame)
    assert encoder.close() == frames
    return path.read_bytes()
