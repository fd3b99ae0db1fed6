"""Streaming H.264 encoding of frames into an mp4 file (PyAV, libx264, yuv420p).

Holds:
  StreamingEncoder  frames in, mp4 out; encodes on a background thread so the env
                    keeps stepping while frames are compressed, and memory stays flat
                    (a small bounded queue of frames, never the whole episode).
                    Takes RGB frames, or frames already in yuv420p (BT.601, limited
                    range), which skip the encoder's colour conversion.
  even_size         the (width, height) H.264/yuv420p can take for a frame size.
"""

from __future__ import annotations

import queue
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["StreamingEncoder", "even_size"]

# Frames waiting for the encoder thread. Bounded so that memory does not grow with
# episode length: a producer faster than the encoder waits instead of piling up frames.
_QUEUE_FRAMES = 8
_STOP = object()
# H.264 colour tags (ffmpeg's AVColorSpace/AVColorPrimaries/AVColorTransferCharacteristic
# SMPTE 170M = BT.601, AVColorRange MPEG = limited): what PyAV's rgb24 conversion and
# rendering.FrameRenderer.render_yuv420p produce, so players need not guess.
_BT601, _LIMITED_RANGE = 6, 1


def even_size(width: int, height: int) -> tuple[int, int]:
    """Largest even (width, height) not above the given one (yuv420p needs even sides)."""
    return width - width % 2, height - height % 2


class StreamingEncoder:
    """Encode uint8 frames of one fixed size into an H.264 mp4 at ``path``.

    ``add(frame)`` (RGB) or ``add_yuv420p(frame)`` hands a frame to the encoder thread
    and returns at once (blocking only if the thread is ``_QUEUE_FRAMES`` frames
    behind). ``close()`` flushes the encoder, finishes the mp4 and returns the number of
    frames written. A failure on the encoder thread is raised again by the next ``add``
    or by ``close``. libx264 runs with ``threads`` threads (default 1: the frames of an
    env are small and the stepping thread needs the other core).
    """

    def __init__(
        self, path: Path, *, width: int, height: int, fps: int, crf: int = 23, preset: str = "veryfast", threads: int = 1
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 with yuv420p needs even frame sides, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0
        self._container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps, 1))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": preset}
        context = self._stream.codec_context
        context.thread_count = threads
        context.colorspace = context.color_primaries = context.color_trc = _BT601
        context.color_range = _LIMITED_RANGE
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="eval-recorder-encoder", daemon=True)
        self._thread.start()

    def add(self, frame: np.ndarray) -> None:
        """Queue one RGB uint8 frame of shape (height, width, 3) for encoding."""
        self._raise_if_failed()
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be uint8 of shape {(self.height, self.width, 3)}, got {frame.dtype} {frame.shape}"
            )
        self._queue.put((frame, "rgb24"))
        self.frames += 1

    def add_yuv420p(self, frame: np.ndarray) -> None:
        """Queue one frame in yuv420p layout: uint8 of shape (height * 3 // 2, width)."""
        self._raise_if_failed()
        if frame.shape != (self.height * 3 // 2, self.width) or frame.dtype != np.uint8:
            raise ValueError(
                f"yuv420p frame must be uint8 of shape {(self.height * 3 // 2, self.width)}, "
                f"got {frame.dtype} {frame.shape}"
            )
        self._queue.put((frame, "yuv420p"))
        self.frames += 1

    def close(self) -> int:
        """Flush and finish the mp4; returns the number of frames in it."""
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_if_failed()
        return self.frames

    def abort(self) -> None:
        """Stop the encoder thread and close the file without caring whether it is valid."""
        self._queue.put(_STOP)
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"encoding {self.path.name} failed: {self._error}") from self._error

    def _run(self) -> None:
        stopped = False
        try:
            while (item := self._queue.get()) is not _STOP:
                frame, pixel_format = item
                video_frame = av.VideoFrame.from_ndarray(frame, format=pixel_format)
                self._container.mux(self._stream.encode(video_frame))
            stopped = True
            self._container.mux(self._stream.encode(None))
        except BaseException as error:  # handed to the producer thread
            self._error = error
            # Keep draining so that a producer blocked on a full queue is released.
            while not stopped:
                stopped = self._queue.get() is _STOP
        finally:
            try:
                self._container.close()
            except Exception as error:  # a broken file must not hide the first error
                self._error = self._error or error
