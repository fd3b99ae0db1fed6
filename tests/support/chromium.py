"""Headless Chromium for tests, driven over its DevTools pipe: real time, the real page, no
Python packages needed.

Holds:
  CHROMIUM          the browser's path (None where it is not installed).
  needs_chromium    pytest mark: skip, with how to install it, where it is missing.
  Chromium          one browser process: open a file in a tab, evaluate JavaScript in it,
                    take a screenshot (of the viewport or the whole page).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path

import pytest

__all__ = ["CHROMIUM", "Chromium", "needs_chromium"]

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found: install it (Debian/Ubuntu: `apt-get install -y chromium`) "
    "to open the gallery in a real browser",
)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: the page must need no network
    "--autoplay-policy=no-user-gesture-required", "--no-first-run", "--hide-scrollbars",
)


class Chromium:
    """Headless Chromium driven over its DevTools pipe (commands on fd 3, replies on fd 4,
    JSON messages ended by NUL)."""

    def __init__(self, profile: Path, log: Path, *flags: str) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Copies above fd 4 to dup2 onto 3 and 4 in the child (a dup2 of a fd onto itself
        # would leave it close-on-exec). posix_spawn, not a preexec_fn: safe with threads.
        child_commands, child_replies = (
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in (commands_read, replies_write)
        )
        argv = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", *flags]
        self.log = log
        self._pid = os.posix_spawn(CHROMIUM, argv, {**os.environ, "HOME": str(profile)}, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, child_commands, 3),
            (os.POSIX_SPAWN_DUP2, child_replies, 4),
        ])
        for fd in (commands_read, replies_write, child_commands, child_replies):
            os.close(fd)
        self._buffer, self._last_id, self._events = b"", 0, []

    def open(self, page: Path) -> str:
        """Load ``page`` (a file) in a new tab; the tab's session id once its load event fired."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Page.navigate", session, url=page.as_uri())
        self._event("Page.loadEventFired", session, timeout=60)
        return session

    def evaluate(self, session: str, expression: str, *, timeout: float = 120):
        """The value of ``expression`` (a promise is awaited) in the tab."""
        reply = self.call("Runtime.evaluate", session, timeout=timeout, expression=expression,
                          awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")  # none for undefined

    def screenshot(self, session: str, path: Path, *, full_page: bool = False) -> Path:
        """Save what the tab shows (its viewport; ``full_page``: the whole page, also what
        is scrolled out of view, 1 px per CSS px) as a PNG at ``path``."""
        params = {}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session)["cssContentSize"]
            params = dict(captureBeyondViewport=True,
                          clip=dict(x=0, y=0, width=size["width"], height=size["height"], scale=1))
        data = self.call("Page.captureScreenshot", session, format="png", **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def call(self, method: str, session: str | None = None, *, timeout: float = 60, **params) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(f"chromium is gone; its log ends:\n{self._log_tail()}") from None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline, method)
            if reply.get("id") == self._last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self._events.append(reply)

    def _event(self, method: str, session: str, *, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event
            self._events.append(self._read(deadline, method))

    def _read(self, deadline: float, waiting_for: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready = left > 0 and select.select([self._replies], [], [], left)[0]
            chunk = os.read(self._replies, 1 << 16) if ready else b""
            if not chunk:
                raise AssertionError(f"chromium gave no answer to {waiting_for}; its log ends:\n{self._log_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        os.kill(self._pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while os.waitpid(self._pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
                break
            time.sleep(0.05)
        os.close(self._commands)
        os.close(self._replies)
