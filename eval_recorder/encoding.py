"""Streaming H.264 encoding of frames into an mp4 file (PyAV, libx264, yuv420p).

Holds:
  StreamingEncoder  frames in, mp4 out. Encoding runs in a small helper process
                    (this file run as a script, importing only PyAV) that reads raw
                    frames from a pipe, so the env keeps stepping on its own core
                    while frames are compressed, and memory stays flat (a bounded
                    pipe + queue of frames, never the whole episode). Takes RGB
                    frames, or frames already in yuv420p (BT.601, limited range),
                    which skip the colour conversion.
  even_size         the (width, height) H.264/yuv420p can take for a frame size.

Why a process and not a thread: PyAV releases the GIL inside FFmpeg, but takes it back
four or five times per frame (send, receive, mux ...). Against an env that steps in
pure Python, each take-back forces a GIL hand-over, and on this 2-core machine the
stepping thread lost about as much time waiting as the encoder spent encoding. Through a
pipe, the stepping thread pays one ``write`` per frame.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

__all__ = ["StreamingEncoder", "even_size"]

# Frames the helper process holds in memory, waiting to be encoded. Bounded so that memory
# does not grow with episode length: a producer faster than the encoder waits instead.
_QUEUE_FRAMES = 4
_PIPE_BYTES = 1 << 20  # pipe buffer asked for (Linux's default limit for a process)
_STOP = object()
# One byte before each frame on the pipe says its pixel format.
_FORMATS = {b"R": "rgb24", b"Y": "yuv420p"}
_TAGS = {name: tag for tag, name in _FORMATS.items()}
# H.264 colour tags (FFmpeg's AVColorSpace/AVColorPrimaries/AVColorTransferCharacteristic
# SMPTE 170M = BT.601; AVColorRange MPEG = limited): what PyAV's rgb24 conversion and
# rendering.FrameRenderer.render_yuv420p produce, so players need not guess.
_BT601, _LIMITED_RANGE = 6, 1
# x264 keeps about rc-lookahead + bframes frames (and their analysis) alive: with veryfast's
# 10 + 3 that is ~30 MB at 500x500; with 1 + 0 it is ~13 MB, and at crf 18 the files are as
# small and as close to the input (~40 dB PSNR in YUV) as veryfast's defaults at crf 23.
# The default crf 16 goes a little further (~42 dB in YUV): flatland frames then decode to
# 30.6 dB PSNR in RGB at 13 px cells (40x40 grid) and 29.8 dB at 5 px cells (100x100),
# where 4:2:0 chroma subsampling alone allows 31.9 and 30.9 dB.
_X264_PARAMS = "rc-lookahead=1:bframes=0"


def even_size(width: int, height: int) -> tuple[int, int]:
    """Largest even (width, height) not above the given one (yuv420p needs even sides)."""
    return width - width % 2, height - height % 2


class StreamingEncoder:
    """Encode uint8 frames of one fixed size into an H.264 mp4 at ``path``.

    ``add(frame)`` (RGB, shape (height, width, 3)) or ``add_yuv420p(frame)`` (shape
    (height * 3 // 2, width)) hands a frame to the encoder process and returns once it
    is in the pipe (blocking only while the encoder is ``_QUEUE_FRAMES`` frames plus a
    pipe's worth behind). ``close()`` flushes the encoder, finishes the mp4 and returns
    the number of frames written; a failure of the encoder is raised by the next ``add``
    or by ``close``. ``abort()`` stops the encoder without caring about the file.
    libx264 runs with ``crf``, ``preset`` and ``threads`` threads (default 1: env frames
    are small, and the stepping process needs the other core), and a short lookahead
    without B-frames (see ``_X264_PARAMS``), which keeps its memory small.
    """

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        fps: int,
        crf: int = 16,
        preset: str = "veryfast",
        threads: int = 1,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 with yuv420p needs even frame sides, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0
        self._log = tempfile.TemporaryFile(prefix="eval-recorder-encoder-")
        arguments = [str(self.path), str(width), str(height), str(fps), str(crf), preset, str(threads)]
        self._process = subprocess.Popen(
            # -P: this file's folder (the package) is not put on sys.path; the process imports only PyAV.
            [sys.executable, "-P", str(Path(__file__).resolve()), *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            bufsize=0,
        )
        _widen_pipe(self._process.stdin)
        self._failed: str | None = None

    def add(self, frame) -> None:
        """Queue one RGB uint8 frame of shape (height, width, 3) for encoding."""
        self._send(frame, "rgb24", (self.height, self.width, 3))

    def add_yuv420p(self, frame) -> None:
        """Queue one yuv420p frame: uint8 of shape (height * 3 // 2, width), Y then U then V."""
        self._send(frame, "yuv420p", (self.height * 3 // 2, self.width))

    def close(self) -> int:
        """Flush and finish the mp4; returns the number of frames in it."""
        self._raise_if_failed()
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        if self._process.wait() != 0:
            self._fail()
        self._log.close()
        return self.frames

    def abort(self) -> None:
        """Stop the encoder process and leave the file as it is (maybe invalid)."""
        if self._process.poll() is None:
            self._process.kill()
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        self._process.wait()
        self._log.close()

    def _send(self, frame, pixel_format: str, shape: tuple[int, ...]) -> None:
        self._raise_if_failed()
        if tuple(frame.shape) != shape or frame.dtype.name != "uint8":
            name = "frame" if pixel_format == "rgb24" else "yuv420p frame"
            raise ValueError(f"{name} must be uint8 of shape {shape}, got {frame.dtype} {tuple(frame.shape)}")
        if not frame.flags.c_contiguous:
            frame = frame.copy()
        try:
            self._process.stdin.write(_TAGS[pixel_format])
            data = memoryview(frame).cast("B")
            while data:
                data = data[self._process.stdin.write(data) :]
        except BrokenPipeError:
            self._process.wait()
            self._fail()
        self.frames += 1

    def _fail(self) -> None:
        self._log.seek(0)
        log = self._log.read().decode(errors="replace").strip().splitlines()
        self._failed = "\n".join(log[-20:]) or f"encoder process exited with {self._process.returncode}"
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise RuntimeError(f"encoding {self.path.name} failed: {self._failed}")


def _widen_pipe(pipe) -> None:
    """Let the pipe hold a couple of frames, so a write rarely waits for the encoder."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or not allowed: the default pipe size works, with less slack


# ---- the encoder process --------------------------------------------------------------


def encode_stream(
    source: BinaryIO, path: str, *, width: int, height: int, fps: int, crf: int, preset: str, threads: int
) -> int:
    """Encode the tagged raw frames read from ``source`` until EOF into an mp4 at ``path``.

    Runs in the encoder process (and in tests, in-process). Frames are read on a thread
    into a bounded queue while the previous ones are encoded.
    """
    import av

    container = av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"})
    try:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": _X264_PARAMS}
        context = stream.codec_context
        context.thread_count = threads
        context.colorspace = context.color_primaries = context.color_trc = _BT601
        context.color_range = _LIMITED_RANGE
        frames = 0
        pending: queue.Queue = queue.Queue(maxsize=_QUEUE_FRAMES)
        reader = threading.Thread(target=_read_frames, args=(source, width, height, pending), daemon=True)
        reader.start()
        while (item := pending.get()) is not _STOP:
            if isinstance(item, BaseException):
                raise item
            pixel_format, data = item
            frame = av.VideoFrame(width, height, pixel_format)
            _fill_planes(frame, data, width, height, pixel_format)
            container.mux(stream.encode(frame))
            frames += 1
        container.mux(stream.encode(None))
        return frames
    finally:
        container.close()


def _read_frames(source: BinaryIO, width: int, height: int, pending: queue.Queue) -> None:
    sizes = {"rgb24": width * height * 3, "yuv420p": width * height * 3 // 2}
    try:
        while tag := source.read(1):
            if tag not in _FORMATS:
                raise ValueError(f"unknown frame tag {tag!r}")
            pixel_format = _FORMATS[tag]
            data = bytearray(sizes[pixel_format])
            view, filled = memoryview(data), 0
            while filled < len(data):
                got = source.readinto(view[filled:])
                if not got:
                    raise EOFError(f"stream ended inside a frame ({filled} of {len(data)} bytes)")
                filled += got
            pending.put((pixel_format, data))
        pending.put(_STOP)
    except BaseException as error:  # handed to the encoding thread
        pending.put(error)


def _fill_planes(frame, data: bytearray, width: int, height: int, pixel_format: str) -> None:
    """Copy packed rows into the frame's planes (whose rows may be padded)."""
    if pixel_format == "rgb24":
        layout = [(width * 3, height)]
    else:
        layout = [(width, height), (width // 2, height // 2), (width // 2, height // 2)]
    source, offset = memoryview(data), 0
    for plane, (row_bytes, rows) in zip(frame.planes, layout):
        target, stride = memoryview(plane), plane.line_size
        if stride == row_bytes:
            target[: row_bytes * rows] = source[offset : offset + row_bytes * rows]
            offset += row_bytes * rows
            continue
        for row in range(rows):
            target[row * stride : row * stride + row_bytes] = source[offset : offset + row_bytes]
            offset += row_bytes


def _main(arguments: list[str]) -> int:
    path, width, height, fps, crf, preset, threads = arguments
    encode_stream(
        sys.stdin.buffer, path, width=int(width), height=int(height), fps=int(fps), crf=int(crf), preset=preset,
        threads=int(threads),
    )  # fmt: skip
    return 0


if __name__ == "__main__":  # the encoder process: python -P encoding.py PATH WIDTH HEIGHT FPS CRF PRESET THREADS
    sys.exit(_main(sys.argv[1:]))
