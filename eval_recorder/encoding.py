"""Streaming H.264 encoding of frames into mp4 files (PyAV, libx264, yuv420p).

``StreamingEncoder`` turns frames of one size into one mp4: RGB frames, or frames already in
yuv420p (BT.601, limited range), which skip the colour conversion, optionally with the label
burned in on the way (``label=``).

How: every StreamingEncoder of a process is served by one helper process
(``encoder_process`` run as a script; it loads only PyAV's container and video modules),
started with the first encoder (or earlier, by ``start_encoder_process``, so that the first
episode does not wait for FFmpeg to load) and kept for the next ones, so an eval runner with
several envs recording at once pays for one Python + FFmpeg, not one per env. Each encoder
owns one or two frame slots in shared memory (a memfd mapped here); ``add`` copies the frame
into a free slot (burning the label into the copy) and sends the helper a few bytes saying
which slot to encode. The helper reads the slot straight into the frame it encodes (an RGB
slot band by band, converting it to yuv420p), frees the slot and encodes, on its own core,
while the env steps. Memory is bounded by the slots: a producer faster than the encoder
waits for a slot instead of queueing frames.

Why a process and not a thread: PyAV releases the GIL inside FFmpeg, but takes it back
several times per frame (send, receive, mux ...), and against an env that steps in pure
Python each take-back is a GIL hand-over the stepping thread waits for. Why shared memory
and not a pipe: a pipe write copies the frame into the kernel, the helper copies it out
and again into FFmpeg's frame, in pieces of the pipe's size, each a wake-up of the other
side; a slot is one copy here and one read there.

An encoder made with ``drawing=("module:Class", scene)`` has no slots: ``add_state(state,
label=...)`` sends the frame's state (a few bytes per frame, ``STATES_PER_MESSAGE`` frames a
message) and the helper draws the frame
itself (``encoder_process``), so the stepping thread neither draws nor copies frames.
With ``frames=[(state, label), ...]`` too (an episode drawn after it ended), they go with the
scene into its shared memory and one message draws them all; ``finish_later()`` asks for the
mp4 without waiting, ``done()`` says whether it is finished (or failed) without waiting, and
``wait()`` waits for it, as ``close()`` does.

The helper is a fault domain of its own: every wait for it has a deadline
(``HELPER_FIRST_REPLY_SECONDS``, then ``HELPER_REPLY_SECONDS``), a helper that dies or says
nothing that long (killed, stopped, stuck) is taken as gone (a silent one is killed), and
every encoder it served fails with ``EncoderFailed`` naming the cause, at once; the next
encoder gets a new helper.
"""

from __future__ import annotations

import mmap
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from collections import deque
from pathlib import Path

import numpy as np

from eval_recorder import encoder_process
from eval_recorder.errors import EncoderFailed
from eval_recorder.encoder_process import (
    BATCH, FRAME, ID, ID_NUMBER, MESSAGE_BYTES, pack_frame, pack_frames, pack_open,
)

__all__ = [
    "HELPER_FIRST_REPLY_SECONDS", "HELPER_REPLY_SECONDS", "StreamingEncoder", "encoder_process_ids",
    "start_encoder_process",
]

# Deadlines on every wait for the helper. Its replies come within a frame's encoding time
# (a slot freed, a file finished or dropped); these are generous for a loaded 2-core machine,
# yet far below RLlib's sample timeout (evaluation_sample_timeout_s, 120 s by default), so a
# stuck helper costs the episode it encodes, never the round. The first reply of a new helper
# also waits for it to load Python and FFmpeg.
HELPER_FIRST_REPLY_SECONDS = 60.0
HELPER_REPLY_SECONDS = 20.0
# add_state: frames sent to the helper in one message (fewer sends, locks, wake-ups). 32 saved
# the stepping thread ~0.01 ms per step at 30 trains but left the helper up to 31 frames more to
# draw when a round ends, which the runner waits for: 45-70 ms instead of 2-7 (benchmarks/round_wall.py).
STATES_PER_MESSAGE = 8

# Frame slots per encoder: frames waiting to be encoded, bounded so that memory does not
# grow with episode length (a producer faster than the encoder waits for a slot). The helper
# takes a frame out of its slot (reads it, or converts an RGB one to yuv420p) into the frame
# it encodes before encoding it, so one slot already lets the env step while the previous
# frame is encoded; a second lets the env run a frame further ahead.
# Two while a slot (an RGB frame) takes at most _TWO_SLOTS_MAX_BYTES (Flatland's own frame
# sizes), where two are a little faster than one; one above, where a second slot is no
# faster and costs a frame's memory (benchmarks/recording.py, cases small, any800, any800fast).
_TWO_SLOTS_MAX_BYTES = 1 << 20


def start_encoder_process() -> int:
    """Start this process's encoder helper process if none is running; its process id.

    Call it when recording is set up (e.g. when an env that records is made): the helper
    loads Python and FFmpeg while the env resets, instead of while the first episode's
    frames wait for it.
    """
    return _service().process.pid


def encoder_process_ids() -> list[int]:
    """Process ids of the encoder helper processes this process started that are alive."""
    service = _service_if_running()
    return [service.process.pid] if service is not None else []


class StreamingEncoder:
    """Encode uint8 frames of one fixed size into an H.264 mp4 at ``path``.

    ``add(frame)`` (RGB, shape (height, width, 3)) or ``add_yuv420p(frame)`` (shape
    (height * 3 // 2, width)) copies the frame into one of the encoder's shared slots,
    with ``label``, if given, burned into the copy (``overlay.burn_label`` of the frame,
    byte for byte, without a second copy), and returns; it waits only while all slots
    are still waiting for the encoder. ``close()`` flushes the encoder, finishes the mp4
    and returns the number of frames written; a failure of this encoder (or of the helper
    process: dead, or silent past its deadline) is raised by the next ``add`` or by ``close``
    as ``EncoderFailed``. ``abort()`` drops the encoder
    and leaves the file as it is (maybe invalid).
    libx264 runs with ``crf``, ``preset`` and ``threads`` threads (default 1: env frames
    are small, and the env keeps stepping on another core), and a short lookahead
    without B-frames (see ``encoder_process._X264_PARAMS``), which keeps its memory small.
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
        drawing: tuple[str, bytes] | None = None,
        frames: list[tuple[bytes, str | None]] | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 with yuv420p needs even frame sides, got {width}x{height}")
        if frames is not None and drawing is None:
            raise ValueError("frames= (states to draw) needs drawing=")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0
        slot_bytes = width * height * 3  # an RGB frame; a yuv420p frame uses the first half
        # An encoder with a drawing ("module:Class", scene) has no frame slots: its shared
        # memory holds the scene, which the helper reads once, and its frames are states.
        slots = 0 if drawing is not None else 2 if slot_bytes <= _TWO_SLOTS_MAX_BYTES else 1
        packed = pack_frames(frames) if frames is not None else b""
        size = len(drawing[1]) + len(packed) if drawing is not None else slot_bytes * slots
        memory = _shared_memory(max(size, 1))
        try:
            self._slots = mmap.mmap(memory.fileno(), max(size, 1))
            if drawing is not None:
                self._slots[:size] = drawing[1] + packed
        except BaseException:
            memory.close()
            raise
        self._rgb = [
            np.frombuffer(self._slots, np.uint8, slot_bytes, slot * slot_bytes).reshape(height, width, 3)
            for slot in range(slots)
        ]
        self._yuv = [view.reshape(-1)[: slot_bytes // 2].reshape(height * 3 // 2, width) for view in self._rgb]
        settings = dict(
            path=str(self.path), width=width, height=height, fps=fps, crf=crf, preset=preset, threads=threads,
            slot_bytes=slot_bytes, scene_bytes=len(drawing[1]) if drawing is not None else 0,
            drawing=drawing[0] if drawing is not None else None,
        )  # fmt: skip
        self._service = _service()
        try:
            self._id = self._service.open(settings, memory.fileno(), slots)
        finally:
            memory.close()  # the helper has its own descriptor now; the mapping keeps ours alive
        self._done = False
        self._queued: list[bytes] = []  # packed frames (add_state) not sent yet
        self._queued_bytes = 0
        self._finalizer = weakref.finalize(self, self._service.forget, self._id)
        if packed:
            self._service.encode_state(BATCH.pack(b"B", self._id, len(drawing[1]), len(packed)))
            self.frames = len(frames)

    def add(self, frame, *, label: str | None = None) -> None:
        """Queue one RGB uint8 frame of shape (height, width, 3), with ``label`` burned in if given."""
        self._check(frame, "frame", (self.height, self.width, 3))
        slot = self._service.slot(self._id, self.path.name)
        target = self._rgb[slot]
        if label is None:
            target[...] = frame
        else:
            from eval_recorder.overlay import burn_label_in_place, strip_height

            top = self.height - strip_height(self.height)
            target[:top] = frame[:top]
            burn_label_in_place(target, label)
        self._service.encode(self._id, slot, b"R")
        self.frames += 1

    def add_yuv420p(self, frame, *, label: str | None = None) -> None:
        """Queue one yuv420p frame: uint8 of shape (height * 3 // 2, width), Y then U then V,
        with ``label`` burned in if given (``overlay.burn_label_yuv420p``)."""
        self._check(frame, "yuv420p frame", (self.height * 3 // 2, self.width))
        slot = self._service.slot(self._id, self.path.name)
        target = self._yuv[slot]
        target[...] = frame
        if label is not None:
            from eval_recorder.overlay import burn_label_in_place

            burn_label_in_place(target, label, pixel_format="yuv420p")
        self._service.encode(self._id, slot, b"Y")
        self.frames += 1

    def add_state(self, state: bytes, *, label: str | None = None) -> None:
        """Queue one frame of an encoder with a drawing: the helper draws ``state`` (bytes of the
        source's ``state()``), burns ``label`` in if given and encodes it. The frames go to the
        helper ``STATES_PER_MESSAGE`` at a time (and at ``close``); sending waits only while the
        helper is that far behind that the socket to it is full."""
        if self._done:
            raise RuntimeError(f"encoding {self.path.name}: frame added after close() or abort()")
        packed = pack_frame(state, label)  # raises for a label too long
        if ID.size + len(packed) > MESSAGE_BYTES:
            raise ValueError(f"a state of {len(state)} bytes with its label is more than a message to the encoder "
                             f"helper holds ({MESSAGE_BYTES} bytes)")
        if self._queued and ID.size + self._queued_bytes + len(packed) > MESSAGE_BYTES:
            self._send_states()
        self._queued.append(packed)
        self._queued_bytes += len(packed)
        self.frames += 1
        if len(self._queued) >= STATES_PER_MESSAGE:
            self._send_states()

    def _send_states(self) -> None:
        if not self._queued:
            return
        message = ID.pack(b"P", self._id) + b"".join(self._queued)
        self._queued, self._queued_bytes = [], 0
        self._service.check(self._id, self.path.name)
        self._service.encode_state(message)

    def close(self) -> int:
        """Flush and finish the mp4; returns the number of frames in it."""
        if self._done:
            raise RuntimeError(f"encoding {self.path.name}: close() after close() or abort()")
        self._done = True
        try:
            self._send_states()
            self._service.finish(self._id, self.path.name)
        finally:
            self._release()
        return self.frames

    def finish_later(self) -> None:
        """Ask for the mp4 to be finished and return at once (``done()``, ``wait()``)."""
        if self._done:
            raise RuntimeError(f"encoding {self.path.name}: finish_later() after close() or abort()")
        self._send_states()
        self._service.finish_later(self._id, self.path.name)

    def done(self) -> bool:
        """After ``finish_later()``: whether the mp4 is finished or the encoder failed (no wait)."""
        return self._service.settled(self._id)

    def wait(self) -> int:
        """After ``finish_later()``: wait for the mp4 (raising what failed); its number of frames."""
        if self._done:
            raise RuntimeError(f"encoding {self.path.name}: wait() after close() or abort()")
        self._done = True
        try:
            self._service.wait_finished(self._id, self.path.name)
        finally:
            self._release()
        return self.frames

    def abort(self) -> None:
        """Drop the encoder and leave the file as it is (maybe invalid)."""
        if self._done:
            return
        self._done = True
        try:
            self._service.abort(self._id)
        finally:
            self._release()

    def _check(self, frame, name: str, shape: tuple[int, ...]) -> None:
        if self._done:
            raise RuntimeError(f"encoding {self.path.name}: frame added after close() or abort()")
        if tuple(frame.shape) != shape or frame.dtype.name != "uint8":
            raise ValueError(f"{name} must be uint8 of shape {shape}, got {frame.dtype} {tuple(frame.shape)}")

    def _release(self) -> None:
        self._finalizer.detach()
        self._rgb = self._yuv = []
        try:
            self._slots.close()
        except BufferError:
            pass  # a caller still holds a view of a slot; the mapping goes with it


def _shared_memory(size: int):
    """A file of ``size`` bytes in memory, with no name in the file system (memfd on Linux)."""
    if hasattr(os, "memfd_create"):
        memory = open(os.memfd_create("eval-recorder-frames", os.MFD_CLOEXEC), "r+b", buffering=0)
    else:
        memory = tempfile.TemporaryFile(prefix="eval-recorder-frames-", buffering=0)
    try:
        memory.truncate(size)
    except BaseException:
        memory.close()
        raise
    return memory


class _EncoderState:
    """What this process knows of one encoder in the helper."""

    def __init__(self, slots: int) -> None:
        self.free: deque[int] = deque(range(slots))
        self.finished = False
        self.dropped = False
        self.failure: str | None = None


class _EncoderService:
    """This process's helper process, the socket to it and the state of every open encoder.

    Used from any thread (a lock orders the socket); replies for any encoder are taken
    in as they arrive, whichever encoder is waiting.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log = tempfile.TemporaryFile(prefix="eval-recorder-encoder-")
        try:
            self.process = subprocess.Popen(
                # -P: the program's folder (the package) is not put on sys.path; it imports only PyAV.
                [sys.executable, "-P", str(Path(encoder_process.__file__).resolve()), str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.owner = os.getpid()
        self._socket = ours
        self._lock = threading.RLock()
        self._next_id = 0
        self._states: dict[int, _EncoderState] = {}
        self._replied = False  # a first reply came (the helper loaded PyAV)
        self.dead: str | None = None

    def running(self) -> bool:
        return self.owner == os.getpid() and self.dead is None and self.process.poll() is None

    def open(self, settings: dict, fd: int, slots: int) -> int:
        with self._lock:
            self._next_id += 1
            number = self._next_id
            self._states[number] = _EncoderState(slots)
            self._send(pack_open(dict(settings, id=number)), fd=fd)
            return number

    def slot(self, number: int, name: str) -> int:
        """A free slot of encoder ``number``, waiting for the helper to free one if needed."""
        with self._lock:
            state = self._states[number]
            self._take_replies(block=False)
            while not state.free and state.failure is None:
                self._take_replies(block=True)
            _raise_failure(state, name)
            return state.free.popleft()

    def encode(self, number: int, slot: int, pixel_format: bytes) -> None:
        with self._lock:
            self._send(FRAME.pack(b"F", number, slot, pixel_format))

    def check(self, number: int, name: str) -> None:
        """Take in the replies there are; raise encoder ``number``'s failure, if it failed."""
        with self._lock:
            self._take_replies(block=False)
            _raise_failure(self._states[number], name)

    def encode_state(self, message: bytes) -> None:
        with self._lock:
            self._send(message)

    def finish(self, number: int, name: str) -> None:
        try:
            self.finish_later(number, name)
        except BaseException:
            with self._lock:
                self._states.pop(number, None)
            raise
        self.wait_finished(number, name)

    def finish_later(self, number: int, name: str) -> None:
        with self._lock:
            _raise_failure(self._states[number], name)
            self._send(ID.pack(b"C", number))

    def settled(self, number: int) -> bool:
        with self._lock:
            self._take_replies(block=False)
            state = self._states.get(number)
            return state is None or state.finished or state.failure is not None

    def wait_finished(self, number: int, name: str) -> None:
        with self._lock:
            state = self._states[number]
            try:
                while not state.finished and state.failure is None:
                    self._take_replies(block=True)
                _raise_failure(state, name)
            finally:
                del self._states[number]

    def abort(self, number: int) -> None:
        with self._lock:
            state = self._states.get(number)
            if state is None:
                return
            try:
                if self.dead is None:  # wait for the drop, so nothing writes the file after we return
                    self._send(ID.pack(b"A", number))
                    while not state.dropped and self.dead is None:
                        self._take_replies(block=True)
            finally:
                del self._states[number]

    def forget(self, number: int) -> None:
        """An encoder was collected without close() or abort(): drop it in the helper, without waiting."""
        with self._lock:
            if self._states.pop(number, None) is not None and self.dead is None and self.owner == os.getpid():
                self._send(ID.pack(b"A", number), wait=False)

    # -- socket --

    def _deadline(self) -> float:
        return HELPER_REPLY_SECONDS if self._replied else HELPER_FIRST_REPLY_SECONDS

    def _send(self, message: bytes, *, fd: int | None = None, wait: bool = True) -> None:
        """Send one message; waits (up to the deadline) only while the socket is full, and
        not at all unless ``wait``."""
        if self.dead is not None:
            return  # every encoder already carries the failure
        try:
            while True:
                try:
                    if fd is None:
                        self._socket.send(message, socket.MSG_DONTWAIT)
                    else:
                        socket.send_fds(self._socket, [message], [fd], socket.MSG_DONTWAIT)
                    return
                except BlockingIOError:
                    if not wait:
                        return
                    if not self._ready(select.POLLOUT):
                        self._hung()
                        return
        except OSError:
            self._died()

    def _ready(self, event: int) -> bool:
        """Wait until the socket is ready for ``event`` (or closed); False after the deadline."""
        poller = select.poll()
        poller.register(self._socket, event | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(self._deadline() * 1000))

    def _take_replies(self, *, block: bool) -> None:
        """Take in the helper's replies: one (waiting for it, up to the deadline) if
        ``block``, else all there are."""
        while self.dead is None:
            if block and not self._ready(select.POLLIN):
                self._hung()
                return
            try:
                message = self._socket.recv(MESSAGE_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if block:
                    continue
                return
            except OSError:
                message = b""
            if not message:
                self._died()
                return
            self._replied = True
            self._dispatch(message)
            if block:
                return

    def _dispatch(self, message: bytes) -> None:
        kind, number = ID.unpack_from(message)
        state = self._states.get(number)
        if state is None:
            return  # a reply for an encoder that was forgotten
        if kind == b"S":
            state.free.append(ID_NUMBER.unpack(message)[2])
        elif kind == b"D":
            state.finished = True
        elif kind == b"X":
            state.failure = message[ID.size :].decode(errors="replace")
        elif kind == b"K":
            state.dropped = True

    def _hung(self) -> None:
        """The helper said nothing within its deadline (stopped, stuck): it is killed and
        taken as gone."""
        seconds = self._deadline()
        self.process.kill()  # SIGKILL ends a stopped process too
        self._died(f"the encoder helper process (pid {self.process.pid}) answered nothing for {seconds:g} s "
                   f"and was killed")

    def _died(self, cause: str | None = None) -> None:
        """The helper is gone: every open encoder fails with ``cause``, else with what it
        left in its log or how it ended."""
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if cause is None:
            self._log.seek(0)
            log = [line for line in self._log.read().decode(errors="replace").splitlines() if line.strip()]
            cause = _ended(self.process.pid, code) + (f": {log[-1].strip()}" if log else "")
        self.dead = cause
        for state in self._states.values():
            if state.failure is None:
                state.failure = self.dead
        self._socket.close()
        self._log.close()


def _ended(pid: int, code: int) -> str:
    """How the helper ended, in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the encoder helper process (pid {pid}) was killed by {name}"
    return f"the encoder helper process (pid {pid}) exited with code {code}"


def _raise_failure(state: _EncoderState, name: str) -> None:
    if state.failure is not None:
        found = re.search(r"\[Errno (\d+)\]", state.failure)
        raise EncoderFailed(f"encoding {name} failed: {state.failure}", cause=state.failure,
                            errno_code=int(found.group(1)) if found else None)


_current: _EncoderService | None = None
_current_lock = threading.Lock()


def _service() -> _EncoderService:
    """This process's encoder service, with a helper process started if none is running."""
    global _current
    with _current_lock:
        if _current is None or not _current.running():
            _current = _EncoderService()
        return _current


def _service_if_running() -> _EncoderService | None:
    with _current_lock:
        return _current if _current is not None and _current.running() else None
