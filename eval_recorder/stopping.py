"""Stopping a run cleanly when it is asked to: SIGTERM (what SLURM, Kubernetes, Ray and Tune
send to stop or preempt a job) the same way as Ctrl-C (SIGINT).

A run stopped by a signal exits with 128 + its number (``EXIT_CODES``: SIGINT 130, SIGTERM
143); one that crashed on an exception exits (and tells wandb) 1. While ``StopSignals`` is
installed (``with StopSignals() as stop:``, main thread), the first SIGINT or SIGTERM raises
KeyboardInterrupt in the main thread — the path on which a job stores the episodes that
finished, finishes its wandb run with ``stop.exit_code`` and releases its folder — and a
second one sets ``stop.hurry``: waits give up, and once ``stop.closed()`` was called the
process ends at once with that exit code. ``critical()`` marks a block no signal may cut in
half (a video being stored, a wandb call): a stop inside it takes effect when it ends.

Why KeyboardInterrupt and not an exception of our own: Ray's ``ray.get`` turns whatever a
signal handler raises while it waits into a plain KeyboardInterrupt, so the signal that
stopped the run is read from ``StopSignals.exit_code``, never from the exception.

Why install after ``ray.init`` again (``StopSignals.install()``): Ray's core worker puts its
own SIGTERM handler in place when it starts in a process (it prints "SIGTERM received" and
aborts: exit code 134), replacing whatever handler was there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterator

__all__ = ["EXIT_CODES", "StopSignals", "children_shielded", "critical", "exit_code_for"]

logger = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

# Deferred stops: only the main thread runs signal handlers, so only its critical blocks count.
_depth = 0
_deferred: Callable[[], None] | None = None


@contextlib.contextmanager
def children_shielded(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Processes started inside this block (and the processes they start) begin with
    ``signals`` blocked — as Ray starts its own processes with SIGINT blocked — so a stop
    signal sent to the whole process group reaches only this process, which then stops
    them itself, after closing the run. (Here such a signal waits until the block ends.)
    Threads started inside the block keep it blocked: it goes to the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def exit_code_for(signal_number: int) -> int:
    """The exit code of a process stopped by ``signal_number`` (128 + its number)."""
    return 128 + int(signal_number)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A block a stop signal must not cut in half; a stop that arrives inside it (in the
    main thread) takes effect when the outermost such block ends."""
    global _depth, _deferred
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _deferred is not None:
            action, _deferred = _deferred, None
            action()


def _when_allowed(action: Callable[[], None]) -> None:
    """Run ``action`` now, or at the end of the critical block the main thread is in."""
    global _deferred
    if _depth > 0:
        _deferred = action
    else:
        action()


class StopSignals:
    """Turns SIGINT and SIGTERM into a clean stop of the main thread (see module docstring).

    ``on_stop`` (default: raise KeyboardInterrupt) is what the first signal does in the main
    thread once no critical block is open; e.g. a Ray actor's own exit. ``tell`` shows the
    user a line (default: on stderr), e.g. the farewell of a process that ends at once."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
                 on_stop: Callable[[int], None] | None = None, tell: Callable[[str], None] | None = None) -> None:
        self.signals = tuple(signals)
        self._tell = tell or (lambda line: print(line, file=sys.stderr, flush=True))
        self.signal_number: int | None = None  # the first stop signal received
        self.hurry = threading.Event()  # set by a second signal: stop at once
        self._on_stop = on_stop
        self._previous: dict[int, object] = {}
        self._closed = False
        self._farewell: str | None = None
        self._before_exit: Callable[[], None] | None = None

    @property
    def stopping(self) -> bool:
        return self.signal_number is not None

    @property
    def exit_code(self) -> int:
        """The stopped run's exit code: 143 after SIGTERM, 130 after SIGINT or when none
        was seen (a KeyboardInterrupt raised by other means, e.g. an interactive session)."""
        return exit_code_for(self.signal_number) if self.signal_number is not None else EXIT_CODES[signal.SIGINT]

    def install(self) -> "StopSignals":
        """Put the handlers in place (again): call it after anything that replaces signal
        handlers, such as ``ray.init``. Only the main thread can; elsewhere it does nothing."""
        if threading.current_thread() is not threading.main_thread():
            logger.debug("stop signals are handled only in the main thread")
            return self
        for number in self.signals:
            current = signal.getsignal(number)
            if current is not self._handle and number not in self._previous:
                self._previous[number] = current
            signal.signal(number, self._handle)
        return self

    def uninstall(self) -> None:
        """Give the signals back to the handlers that were there before (main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number, previous in self._previous.items():
            try:
                signal.signal(number, previous if previous is not None else signal.SIG_DFL)
            except (TypeError, ValueError):
                signal.signal(number, signal.SIG_DFL)
        self._previous.clear()

    def previous_handler(self, number: int):
        """The handler of ``number`` before ours (e.g. Ray's own in a Ray worker)."""
        return self._previous.get(number)

    def closed(self, farewell: str | None = None, *, exit_within: float | None = None,
               before_exit: Callable[[], None] | None = None) -> None:
        """The run's folder and wandb run are closed: from now on a further signal ends
        the process at once, after printing ``farewell`` (e.g. how to resume) on stderr
        and calling ``before_exit`` (e.g. telling child processes to go); if one already
        asked to hurry, that happens now. ``exit_within``: end the process so after that
        many seconds at the latest (what is left, stopping Ray, may hang)."""
        self._closed = True
        self._farewell = farewell
        self._before_exit = before_exit
        if self.hurry.is_set():
            self._exit_now()
        if exit_within is not None:
            timer = threading.Timer(exit_within, self._exit_late)
            timer.daemon = True
            timer.start()

    def exit_now(self) -> None:
        """End the process at once with ``exit_code``, printing the farewell."""
        self._exit_now()

    def _exit_late(self) -> None:
        logger.warning("stopping Ray takes too long; ending the process")
        self._exit_now()

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.uninstall()

    def _handle(self, number: int, frame) -> None:
        if self.signal_number is None:
            self.signal_number = number
            logger.info("received %s: stopping cleanly", signal.Signals(number).name)
            _when_allowed(self._stop)
            return
        if not self.hurry.is_set():
            self.hurry.set()
            self._tell(f"received {signal.Signals(number).name} again: stopping at once")
        if self._closed:
            self._exit_now()

    def _stop(self) -> None:
        if self._on_stop is not None:
            self._on_stop(self.signal_number)
        else:
            raise KeyboardInterrupt(f"stopped by {signal.Signals(self.signal_number).name}")

    def _exit_now(self) -> None:
        if self._farewell:
            self._tell(self._farewell)
        if self._before_exit is not None:
            try:
                self._before_exit()
            except Exception as error:
                logger.debug("before exit: %s", error)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(self.exit_code)
