"""The encoder helper process's program, and the messages between it and ``encoding``.

Holds:
  serve         the helper's loop: encoders opened, frames read from shared-memory slots and
                encoded, mp4 files finished, as the messages on its socket say.
  FRAME, ID, ID_NUMBER, MESSAGE_BYTES, PIXEL_FORMATS, pack_open, unpack_open
                the messages (see below), shared with ``encoding``, the process that sends them.

Run as ``python -P encoder_process.py SOCKET_FD`` by ``encoding`` (one helper per recording
process). The helper is paid for on every eval runner, so it loads as little as it can:
this file imports only os, socket, struct and sys at the top, and of PyAV only the container
and video modules (``_import_pyav``), not the package's ``__init__``, which also loads its
audio, filter, device and resampling modules. Measured against a helper that imported
``encoding`` (json, subprocess, tempfile ...) and all of PyAV: ~3 MB less resident memory
per helper (34.4 -> 31.1 MB idle, 61.4 -> 58.5 MB encoding 800x800 frames).
"""

from __future__ import annotations

import os
import socket
import struct
import sys

# H.264 colour tags (FFmpeg's AVColorSpace/AVColorPrimaries/AVColorTransferCharacteristic
# SMPTE 170M = BT.601; AVColorRange MPEG = limited): what PyAV's rgb24 conversion and
# rendering.FrameRenderer.render_yuv420p produce, so players need not guess.
_BT601, _LIMITED_RANGE = 6, 1
# x264 keeps about rc-lookahead + bframes frames (and their analysis) alive: with veryfast's
# 10 + 3 that is ~30 MB at 500x500; with 1 + 0 it is ~13 MB, and at crf 18 the files are as
# small and as close to the input (~40 dB PSNR in YUV) as veryfast's defaults at crf 23.
# subme=0 (integer-pel motion search) spares the half-pel planes of every reference frame
# (~5 MB at 800x800) and a third of the encoding time; on flatland's frames the files grow
# by 2 % and PSNR stays at 42 dB in YUV (measured at 524x524 and 504x504). weightp=0: no
# weighted prediction (for fades, which env frames do not have): same files, ~5 % faster.
# no-deblock, me=dia: at this crf the deblocking filter does not bring the picture closer
# to the input (PSNR the same or 0.1 dB better without it), the diamond search costs 0-2 %
# in size; together ~15 % less encoding time (800x800 generic frames: 3.3 -> 2.8 ms).
# The default crf 16 goes a little further (~42 dB in YUV): flatland frames then decode to
# 30.6 dB PSNR in RGB at 13 px cells (40x40 grid) and 29.8 dB at 5 px cells (100x100),
# where 4:2:0 chroma subsampling alone allows 31.9 and 30.9 dB.
# force-cfr: the frames come at a constant rate (pts = frame number), so x264 need not hold
# one more frame back for timestamp-based rate control: one input frame fewer in flight
# (~2 MB at 800x800, ~0.9 MB at 524x524), the same H.264 bytes. sync-lookahead=0: no
# lookahead buffer of its own (with one thread it has none; said, not left to "auto").
# Not taken: mbtree=0 spares ~2.5 MB at 800x800 but makes the files 1.5-2 times larger.
_X264_PARAMS = "rc-lookahead=1:bframes=0:subme=0:weightp=0:no-deblock=1:me=dia:force-cfr=1:sync-lookahead=0"
PIXEL_FORMATS = {b"R": "rgb24", b"Y": "yuv420p"}

# Messages on the socket (SOCK_SEQPACKET: one send is one message), all little-endian.
#   to the helper:   O id sizes preset path (+ the slots' fd)  open an encoder (pack_open)
#                    F id slot format          encode the frame in that slot
#                    C id                      flush and finish the mp4
#                    A id                      drop the encoder, file as it is
#   from the helper: S id slot                 the slot is free again
#                    D id frames               the mp4 is finished
#                    X id text                 the encoder failed (why)
#                    K id                      the encoder was dropped
FRAME = struct.Struct("<cIIc")
ID = struct.Struct("<cI")
ID_NUMBER = struct.Struct("<cII")
MESSAGE_BYTES = 1 << 16
_OPEN = struct.Struct("<cIIIIIII")  # O id width height fps crf threads slot_bytes, then preset \0 path
_OPEN_FIELDS = ("id", "width", "height", "fps", "crf", "threads", "slot_bytes")


def pack_open(settings: dict) -> bytes:
    """The message that opens an encoder with ``settings`` (_OPEN_FIELDS, ``preset``, ``path``)."""
    numbers = _OPEN.pack(b"O", *(settings[field] for field in _OPEN_FIELDS))
    return numbers + settings["preset"].encode() + b"\0" + os.fsencode(settings["path"])


def unpack_open(message: bytes) -> dict:
    settings = dict(zip(_OPEN_FIELDS, _OPEN.unpack_from(message)[1:]))
    preset, path = message[_OPEN.size :].split(b"\0", 1)
    return dict(settings, preset=preset.decode(), path=os.fsdecode(path))


def _import_pyav():
    """PyAV with only the modules the helper uses loaded; the ``av`` package module.

    ``import av`` runs the package's ``__init__``, which imports every PyAV module (audio,
    filters, subtitles, devices, bitstream filters ...). The helper makes the package module
    without running it and imports the container and video modules (which import what they
    need themselves, ``av._core`` first). A PyAV whose modules are laid out otherwise gets
    the plain ``import av``.
    """
    import importlib.util

    spec = importlib.util.find_spec("av")
    if spec is not None and spec.submodule_search_locations is not None:
        sys.modules["av"] = importlib.util.module_from_spec(spec)
        try:
            import av._core  # initialises FFmpeg, as av/__init__ does first
            import av.container
            import av.logging  # noqa: F401 - FFmpeg's log lines go through Python logging, as with `import av`
            import av.video.frame
            import av.video.reformatter  # noqa: F401

            return sys.modules["av"]
        except Exception:  # noqa: BLE001 - any other layout (missing module, missing attribute): all of it, below
            for name in [name for name in sys.modules if name == "av" or name.startswith("av.")]:
                del sys.modules[name]
    import av

    return av


class _Encoding:
    """One mp4 being written in the helper: container, stream, the frames slots are read into."""

    def __init__(self, av, settings: dict, fd: int) -> None:
        from fractions import Fraction

        self._av = av
        self.fd = fd
        self.width, self.height = settings["width"], settings["height"]
        self.slot_bytes = settings["slot_bytes"]
        self.time_base = Fraction(1, settings["fps"])
        self.frames = 0
        self._frames: dict[str, tuple[object, list[memoryview]]] = {}
        self._reformatter = av.video.reformatter.VideoReformatter()
        self.container = av.container.open(settings["path"], mode="w", format="mp4", options={"movflags": "+faststart"})
        try:
            self.stream = self.container.add_stream("libx264", rate=Fraction(settings["fps"], 1))
            self.stream.width, self.stream.height = self.width, self.height
            self.stream.pix_fmt = "yuv420p"
            options = {"crf": str(settings["crf"]), "preset": settings["preset"], "x264-params": _X264_PARAMS}
            self.stream.options = options
            context = self.stream.codec_context
            context.thread_count = settings["threads"]
            context.colorspace = context.color_primaries = context.color_trc = _BT601
            context.color_range = _LIMITED_RANGE
        except BaseException:
            self.container.close()
            raise

    def read(self, slot: int, pixel_format: str):
        """The frame in ``slot``, read from shared memory into the (reused) frame PyAV encodes."""
        frame, rows = self._frame(pixel_format)
        _read_rows(self.fd, rows, slot * self.slot_bytes)
        return frame

    def encode(self, frame) -> None:
        if frame.format.name != "yuv420p":
            # swscale in this thread only (~2.3 ms at 800x800): the helper takes one core and
            # leaves the other to the env. One reformatter keeps its swscale context.
            frame = self._reformatter.reformat(frame, format="yuv420p", threads=1)
        frame.pts, frame.time_base = self.frames, self.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self) -> int:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.frames

    def drop(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - dropping a broken encoder: the file is abandoned anyway
            pass

    def _frame(self, pixel_format: str):
        """A frame to read slots into, and views of its rows as packed in a slot (planes may be padded)."""
        found = self._frames.get(pixel_format)
        if found is None:
            frame = self._av.video.frame.VideoFrame(self.width, self.height, pixel_format)
            if pixel_format == "rgb24":
                layout = [(self.width * 3, self.height)]
            else:
                layout = [(self.width, self.height)] + [(self.width // 2, self.height // 2)] * 2
            rows: list[memoryview] = []
            for plane, (row_bytes, count) in zip(frame.planes, layout):
                view, stride = memoryview(plane).cast("B"), plane.line_size
                if stride == row_bytes:
                    rows.append(view[: row_bytes * count])
                else:
                    rows += [view[row * stride : row * stride + row_bytes] for row in range(count)]
            found = self._frames[pixel_format] = (frame, rows)
        return found


def _read_rows(fd: int, rows: list[memoryview], offset: int) -> None:
    """Fill ``rows`` with the bytes of ``fd`` from ``offset`` on (preadv, in batches of IOV_MAX)."""
    batch = 1024
    for start in range(0, len(rows), batch):
        views = rows[start : start + batch]
        wanted = sum(len(view) for view in views)
        if hasattr(os, "preadv"):
            got = os.preadv(fd, views, offset)
        else:  # no preadv: row by row
            got = 0
            for view in views:
                data = os.pread(fd, len(view), offset + got)
                view[: len(data)] = data
                got += len(data)
        if got != wanted:
            raise EOFError(f"frame slot ended early ({got} of {wanted} bytes)")
        offset += wanted


def serve(connection: socket.socket) -> None:
    """The helper's loop: encoders opened, frames encoded and files finished as the messages say,
    until the other end closes. A failing encoder is reported and dropped; the others go on."""
    av = _import_pyav()  # loaded once, before the first frame waits for it

    encodings: dict[int, _Encoding] = {}
    failures: dict[int, str] = {}  # failed encoders not closed or aborted yet

    def reply(kind: bytes, number: int, value: int | None = None, text: str = "") -> None:
        head = ID.pack(kind, number) if value is None else ID_NUMBER.pack(kind, number, value)
        connection.send(head + text.encode())

    def fail(number: int, error: BaseException) -> None:
        encoding = encodings.pop(number, None)
        if encoding is not None:
            encoding.drop()
            os.close(encoding.fd)
        failures[number] = f"{type(error).__name__}: {error}"
        reply(b"X", number, text=failures[number])

    while True:
        message, fds, _, _ = socket.recv_fds(connection, MESSAGE_BYTES, 1)
        if not message:
            return
        kind = message[:1]
        if kind == b"O":
            settings = unpack_open(message)
            number = settings["id"]
            try:
                encodings[number] = _Encoding(av, settings, fds[0])
            except Exception as error:  # noqa: BLE001 - reported to the encoder that asked
                os.close(fds[0])
                fail(number, error)
        elif kind == b"F":
            _, number, slot, pixel_format = FRAME.unpack(message)
            encoding = encodings.get(number)
            if encoding is None:  # failed already: free the slot, there is nothing to encode into
                reply(b"S", number, slot)
                continue
            try:
                frame = encoding.read(slot, PIXEL_FORMATS[pixel_format])
                reply(b"S", number, slot)  # the slot is free while its frame is encoded
                encoding.encode(frame)
            except Exception as error:  # noqa: BLE001
                fail(number, error)
        elif kind == b"C":
            number = ID.unpack(message)[1]
            encoding = encodings.get(number)
            if encoding is None:
                reply(b"X", number, text=failures.pop(number, "unknown encoder"))
                continue
            try:
                frames = encoding.finish()
            except Exception as error:  # noqa: BLE001
                fail(number, error)
                failures.pop(number)
                continue
            del encodings[number]
            os.close(encoding.fd)
            reply(b"D", number, frames)
        elif kind == b"A":
            number = ID.unpack(message)[1]
            failures.pop(number, None)
            encoding = encodings.pop(number, None)
            if encoding is not None:
                encoding.drop()
                os.close(encoding.fd)
            reply(b"K", number)


def _main(arguments: list[str]) -> int:
    with socket.socket(fileno=int(arguments[0])) as connection:
        try:
            serve(connection)
        except (ConnectionError, BrokenPipeError):
            pass  # the recording process went away
    return 0


if __name__ == "__main__":  # the helper process: python -P encoder_process.py SOCKET_FD
    sys.exit(_main(sys.argv[1:]))
