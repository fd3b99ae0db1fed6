"""The encoder helper process's program (``serve``), and the messages between it and
``encoding`` (packed and unpacked here, for both sides).

Run as ``python -P encoder_process.py SOCKET_FD`` by ``encoding`` (one helper per recording
process). The helper is paid for on every eval runner, so it loads as little as it can:
this file imports only os, socket, struct and sys at the top (not numpy, nor ``encoding``
and what it imports), and of PyAV only the container and video modules
(``_import_pyav``), not the package's ``__init__``, which also loads its audio, filter,
device and resampling modules.

An encoder may also draw its frames (``O`` with a drawing, ``"module:Class"``, e.g. Flatland's
``eval_recorder.flatland.scene.SceneDrawing``): its shared memory holds the episode's scene,
each ``P`` message carries a few frames' states and labels, and the helper draws each frame
(``Class(scene).frame(state)``, yuv420p), burns the label in and encodes it, off the env's
stepping thread. Those modules (numpy, PIL, the renderer) load only when such an encoder opens.
An episode drawn after it ended (``B``) has its frames' states and labels in the shared
memory after the scene (``pack_frames``): one message draws them all, and the helper says
``G`` every ``PROGRESS_FRAMES`` frames, so a long episode's drawing is not taken for a hung helper.

Large frames take two more savings, with the same H.264 bytes: RGB frames are read and
converted to yuv420p a band of rows at a time (``_RgbBands``), not as a whole RGB copy, and
the helper turns transparent huge pages off for itself before x264 allocates frames that
large (``_no_huge_pages``). After each encoder is finished or dropped, the helper gives the
memory freed in its C heap back to the system (``_trim``: glibc's ``malloc_trim``): drawing and
encoding an episode leave that heap full of free holes that glibc keeps, and the next episode's
would add more (a drawing helper's peak: 104 MB over a 4-episode round without, 97 with).
"""

from __future__ import annotations

import os
import socket
import struct
import sys

__all__ = ["BATCH", "FRAME", "ID", "ID_NUMBER", "MESSAGE_BYTES", "NO_LABEL", "PIXEL_FORMATS", "pack_frames",
           "pack_open", "serve", "unpack_frames", "unpack_open"]

# H.264 colour tags (FFmpeg's AVColorSpace/AVColorPrimaries/AVColorTransferCharacteristic
# SMPTE 170M = BT.601; AVColorRange MPEG = limited): what PyAV's rgb24 conversion and
# rendering.FrameRenderer.render_yuv420p produce, so players need not guess.
_BT601, _LIMITED_RANGE = 6, 1
# x264 options, each for memory or speed at no cost to the picture that matters here:
#   rc-lookahead=1, bframes=0: x264 keeps about rc-lookahead + bframes frames (and their
#     analysis) alive; with these it keeps few, and at the crf used the files are as small
#     and as close to the input as veryfast's defaults at a higher crf.
#   subme=0: integer-pel motion search spares the half-pel planes of every reference frame
#     and much encoding time; on flatland's frames the files grow a little, quality stays.
#   weightp=0: no weighted prediction (for fades, which env frames do not have): same files, faster.
#   no-deblock=1, me=dia: at this crf deblocking does not bring the picture closer to the
#     input, and the diamond search costs little in size; together they save encoding time.
#   force-cfr=1: the frames come at a constant rate (pts = frame number), so x264 holds one
#     input frame fewer for timestamp-based rate control; the same H.264 bytes.
#   sync-lookahead=0: no lookahead buffer of its own (with one thread it has none; said, not
#     left to "auto").
# The default crf (16, encoding.StreamingEncoder) brings decoded flatland frames close to what
# 4:2:0 chroma subsampling alone allows.
# Not taken: mbtree=0 would spare memory but makes the files much larger.
# (Figures for all of these: benchmarks/recording.py and the README's Performance section.)
_X264_PARAMS = "rc-lookahead=1:bframes=0:subme=0:weightp=0:no-deblock=1:me=dia:force-cfr=1:sync-lookahead=0"
PIXEL_FORMATS = {b"R": "rgb24", b"Y": "yuv420p"}
# libx264 asks for transparent huge pages (madvise) for each large buffer and rounds it up to
# whole huge pages, part of which is never touched; from about this frame size on, that is
# its frame buffers. Encoders of frames this large turn huge pages off for the helper first
# (the same H.264 bytes, no slower). Below it x264 asks for none, and the helper does not
# load ctypes to turn them off.
_NO_HUGE_PAGES_FROM_PIXELS = 640 * 640
_PR_SET_THP_DISABLE = 41

# Messages on the socket (SOCK_SEQPACKET: one send is one message), all little-endian.
#   to the helper:   O id sizes preset path [drawing] (+ the slots' fd)  open an encoder (pack_open)
#                    F id slot format          encode the frame in that slot
#                    P id frames               draw and encode the frames (pack_frames: states, labels)
#                    B id offset length        draw and encode every frame packed at offset (pack_frames)
#                    C id                      flush and finish the mp4
#                    A id                      drop the encoder, file as it is
#   from the helper: S id slot                 the slot is free again
#                    D id frames               the mp4 is finished
#                    X id text                 the encoder failed (why)
#                    K id                      the encoder was dropped
#                    G id frames               frames drawn so far of a B (the helper is alive)
FRAME = struct.Struct("<cIIc")
ID = struct.Struct("<cI")
ID_NUMBER = struct.Struct("<cII")
NO_LABEL = 0xFFFF  # label-length of a frame without a label
BATCH = struct.Struct("<cIQQ")  # B id offset length
_PACKED = struct.Struct("<HI")  # per packed frame: label-length (NO_LABEL: none), state-length
PROGRESS_FRAMES = 32
MESSAGE_BYTES = 1 << 16
# O id width height fps crf threads slot_bytes scene_bytes, then preset \0 path [\0 drawing]
_OPEN = struct.Struct("<cIIIIIIII")
_OPEN_FIELDS = ("id", "width", "height", "fps", "crf", "threads", "slot_bytes", "scene_bytes")


def pack_open(settings: dict) -> bytes:
    """The message that opens an encoder with ``settings`` (_OPEN_FIELDS, ``preset``, ``path``
    and, for an encoder that draws its frames, ``drawing``: "module:Class")."""
    numbers = _OPEN.pack(b"O", *(settings[field] for field in _OPEN_FIELDS))
    drawing = settings.get("drawing")
    return (numbers + settings["preset"].encode() + b"\0" + os.fsencode(settings["path"])
            + (b"\0" + drawing.encode() if drawing else b""))


def pack_frame(state: bytes, label: str | None) -> bytes:
    """One frame's ``state`` and ``label`` (None: none) as the helper reads them (``P``, ``B``)."""
    text = b"" if label is None else label.encode()
    if len(text) >= NO_LABEL:
        raise ValueError(f"a label of {len(text)} bytes is more than a frame holds ({NO_LABEL - 1})")
    return b"".join((_PACKED.pack(NO_LABEL if label is None else len(text), len(state)), text, state))


def pack_frames(frames) -> bytes:
    """``(state, label)`` pairs (label None: none) as the helper reads them after a ``B``."""
    return b"".join([pack_frame(state, label) for state, label in frames])


def unpack_frames(data: bytes):
    """The ``(state, label)`` pairs of ``pack_frames``, one by one."""
    at = 0
    while at < len(data):
        label_length, state_length = _PACKED.unpack_from(data, at)
        at += _PACKED.size
        label = None
        if label_length != NO_LABEL:
            label, at = data[at : at + label_length].decode(), at + label_length
        if at + state_length > len(data):
            raise EOFError(f"the packed frames ended early ({len(data)} bytes)")
        yield data[at : at + state_length], label
        at += state_length


def unpack_open(message: bytes) -> dict:
    settings = dict(zip(_OPEN_FIELDS, _OPEN.unpack_from(message)[1:]))
    preset, path, *drawing = message[_OPEN.size :].split(b"\0", 2)
    return dict(settings, preset=preset.decode(), path=os.fsdecode(path),
                drawing=drawing[0].decode() if drawing else None)


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


_LIBC: dict = {}  # the C library's functions by name, once looked up (None: there is none)


def _libc(name: str):
    """The C library's function ``name``, looked up once; None where there is none (not Linux,
    no ctypes, or a C library without it: musl has no malloc_trim)."""
    if name not in _LIBC:
        _LIBC[name] = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _LIBC[name] = getattr(ctypes.CDLL(None, use_errno=True), name)
            except (ImportError, OSError, AttributeError):
                pass
    return _LIBC[name]


def _no_huge_pages() -> bool:
    """Turn transparent huge pages off for this process from now on (Linux); whether they are off.
    Where that cannot be done (no ctypes, no prctl), encoding goes on as it is."""
    prctl = _libc("prctl")
    return prctl is not None and prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0


def _trim() -> None:
    """Give the free memory of this process's C heap back to the system (glibc; elsewhere nothing).

    glibc keeps what is freed inside its heap for later, and serves arrays and frames from the
    heap once one of their size has been freed (its mmap threshold rises), so an episode's
    drawing and encoding leave tens of MB of free holes that the next episode's do not fill.
    ``malloc_trim(0)`` returns every free page of them: 1.1-1.6 ms of the helper's time, once
    per episode, after the runner has its reply.
    """
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)


class _Encoding:
    """One mp4 being written in the helper: container, stream, the frame slots are read into."""

    def __init__(self, av, settings: dict, fd: int) -> None:
        from fractions import Fraction

        self._av = av
        self.fd = fd
        self.width, self.height = settings["width"], settings["height"]
        self.slot_bytes = settings["slot_bytes"]
        self.time_base = Fraction(1, settings["fps"])
        self.frames = 0
        # The yuv420p frame PyAV encodes, reused: slots are read (or RGB bands converted) into it.
        self._frame = av.video.frame.VideoFrame(self.width, self.height, "yuv420p")
        self._rows = _plane_rows(self._frame, [(self.width, self.height)] + [(self.width // 2, self.height // 2)] * 2)
        self._bands: _RgbBands | None = None
        self._drawing = _drawing(settings, fd) if settings.get("drawing") else None
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
        """The frame in ``slot`` as the yuv420p frame to encode; the slot is not needed after this.

        A yuv420p slot is read straight into the frame; an RGB one is converted into it band by
        band (swscale in this thread only: the helper takes one core and leaves the rest to
        the env).
        """
        offset = slot * self.slot_bytes
        if pixel_format == "yuv420p":
            _read_rows(self.fd, self._rows, offset)
        else:
            if self._bands is None:
                self._bands = _RgbBands(self._av, self.width, self.height)
            self._bands.convert(self.fd, offset, self._frame)
        return self._frame

    def draw(self, state: bytes, label: str | None):
        """The frame the drawing makes of ``state``, with ``label`` burned in, as the frame to encode."""
        frame = self._drawing.frame(state)
        if label is not None:
            from eval_recorder.overlay import burn_label_in_place

            burn_label_in_place(frame, label, pixel_format="yuv420p")
        data, at = memoryview(frame).cast("B"), 0
        for view in self._rows:
            view[:] = data[at : at + len(view)]
            at += len(view)
        return self._frame

    def encode(self, frame) -> None:
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


# RGB frames are converted to yuv420p in bands of _BAND_ROWS rows, each read from its slot with
# _BAND_MARGIN rows more above and below, so that swscale's vertical chroma filter (2 rows
# each side for its default bilinear filter, 4 for bicubic) sees the rows it sees in the whole
# frame: the same bytes as converting the whole frame (tests/test_encoding.py), without a
# whole-frame RGB copy. Smaller bands cost more time for little less memory.
_BAND_ROWS = 200
_BAND_MARGIN = 4


class _RgbBands:
    """Converts RGB frames of one size, read from a file at an offset, into yuv420p frames, band by band."""

    def __init__(self, av, width: int, height: int) -> None:
        self.width, self.height = width, height
        band_height = min(height, _BAND_ROWS + 2 * _BAND_MARGIN)
        # Every band is read as band_height rows (moved inside the frame at its edges), so one
        # swscale context serves all of them.
        self._step = _BAND_ROWS if height > band_height else height
        self._band = av.video.frame.VideoFrame(width, band_height, "rgb24")
        self._rows = _plane_rows(self._band, [(width * 3, band_height)])
        self._reformatter = av.video.reformatter.VideoReformatter()

    def convert(self, fd: int, offset: int, target) -> None:
        """Read the RGB frame at ``offset`` of ``fd`` and write it as yuv420p into ``target``."""
        band_height, row_bytes = self._band.height, self.width * 3
        for top in range(0, self.height, self._step):
            start = min(max(top - _BAND_MARGIN, 0), self.height - band_height)
            _read_rows(fd, self._rows, offset + start * row_bytes)
            converted = self._reformatter.reformat(self._band, format="yuv420p", threads=1)
            rows = min(self._step, self.height - top)
            for plane, (source, destination) in enumerate(zip(converted.planes, target.planes)):
                shift = 0 if plane == 0 else 1  # chroma planes: half the rows and columns
                _copy_rows(source, destination, (top - start) >> shift, top >> shift, rows >> shift, self.width >> shift)


def _drawing(settings: dict, fd: int):
    """The drawing an encoder draws its frames with: ``module:Class`` of ``settings["drawing"]``
    made from the scene (``scene_bytes`` bytes of ``fd``). Its modules (numpy, PIL, the env's
    renderer) load in the helper only when the first such encoder opens."""
    import importlib

    # numpy imports hashlib (numpy.random -> secrets -> hmac), whose OpenSSL backend maps
    # libcrypto into the helper: 3.4 MB of its peak RSS. The helper hashes nothing, and
    # without that backend hashlib uses CPython's own implementations.
    sys.modules.setdefault("_hashlib", None)
    module, _, name = settings["drawing"].partition(":")
    scene = os.pread(fd, settings["scene_bytes"], 0)
    if len(scene) != settings["scene_bytes"]:
        raise EOFError(f"the scene ended early ({len(scene)} of {settings['scene_bytes']} bytes)")
    return getattr(importlib.import_module(module), name)(scene)


def _plane_rows(frame, layout: list[tuple[int, int]]) -> list[memoryview]:
    """Views of ``frame``'s rows, plane by plane, as (row bytes, rows) in ``layout``: one view per
    plane whose rows are not padded, else one per row."""
    rows: list[memoryview] = []
    for plane, (row_bytes, count) in zip(frame.planes, layout):
        view, stride = memoryview(plane).cast("B"), plane.line_size
        if stride == row_bytes:
            rows.append(view[: row_bytes * count])
        else:
            rows += [view[row * stride : row * stride + row_bytes] for row in range(count)]
    return rows


def _copy_rows(source, target, first_source: int, first_target: int, count: int, row_bytes: int) -> None:
    """Copy ``count`` rows of ``row_bytes`` from plane ``source`` (from row ``first_source``) to plane
    ``target`` (from row ``first_target``)."""
    source_view, target_view = memoryview(source).cast("B"), memoryview(target).cast("B")
    source_stride, target_stride = source.line_size, target.line_size
    if source_stride == target_stride:
        begin, end = first_source * source_stride, (first_source + count) * source_stride
        target_view[first_target * target_stride : first_target * target_stride + end - begin] = source_view[begin:end]
        return
    for row in range(count):
        at, to = (first_source + row) * source_stride, (first_target + row) * target_stride
        target_view[to : to + row_bytes] = source_view[at : at + row_bytes]


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
    huge_pages_off = False

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
                if settings["width"] * settings["height"] >= _NO_HUGE_PAGES_FROM_PIXELS and not huge_pages_off:
                    huge_pages_off = _no_huge_pages()
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
        elif kind in (b"P", b"B"):  # frames to draw: in the message, or packed in the shared memory
            batch = BATCH.unpack(message) if kind == b"B" else None
            number = batch[1] if batch else ID.unpack_from(message)[1]
            encoding = encodings.get(number)
            if encoding is None:  # failed already: nothing to draw into
                continue
            try:
                data = os.pread(encoding.fd, batch[3], batch[2]) if batch else message[ID.size :]
                if batch and len(data) != batch[3]:
                    raise EOFError(f"the packed frames ended early ({len(data)} of {batch[3]} bytes)")
                for drawn, (state, label) in enumerate(unpack_frames(data), 1):
                    encoding.encode(encoding.draw(state, label))
                    if batch and drawn % PROGRESS_FRAMES == 0:
                        reply(b"G", number, drawn)
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
            del encoding
            _trim()
        elif kind == b"A":
            number = ID.unpack(message)[1]
            failures.pop(number, None)
            encoding = encodings.pop(number, None)
            if encoding is not None:
                encoding.drop()
                os.close(encoding.fd)
            reply(b"K", number)
            del encoding
            _trim()


def _main(arguments: list[str]) -> int:
    with socket.socket(fileno=int(arguments[0])) as connection:
        try:
            serve(connection)
        except (ConnectionError, BrokenPipeError):
            pass  # the recording process went away
    return 0


if __name__ == "__main__":  # the helper process: python -P encoder_process.py SOCKET_FD
    sys.exit(_main(sys.argv[1:]))
