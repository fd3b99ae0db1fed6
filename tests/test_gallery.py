"""The offline gallery: exact page structure and captions, atomic writes, and real playback
of real H.264 files in headless Chromium (skipped, with how to install it, where it is missing)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from eval_recorder.encoding import StreamingEncoder
from eval_recorder.gallery import GALLERY, render_gallery, write_gallery
from eval_recorder.naming import video_stem
from eval_recorder.tags import TrainingTag
from eval_recorder.video_store import MANIFEST, VideoStore, read_manifest
from helpers import episode

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


def record(iteration: int, episode_index: int, *, evaluation_round: int | None = None, **overrides) -> dict:
    """A manifest record as VideoStore writes it (``overrides`` replace some fields)."""
    evaluation_round = iteration if evaluation_round is None else evaluation_round
    fields = dict(
        file=f"flatland-it{iteration:06d}-ev{evaluation_round:04d}-ep{episode_index:03d}-run1.mp4",
        training_iteration=iteration, env_steps=400 * iteration, evaluation_round=evaluation_round,
        episode_index=episode_index, env_seed=77, episode_length=41, num_agents=3, agents_arrived=2,
        completion=2 / 3, episode_return=-12.5, frames=42, fps=10, width=484, height=484, run_id="run1",
        checkpoint=None,
    )
    fields.update(overrides)
    return fields


class Node:
    def __init__(self, tag: str, attrs: dict) -> None:
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def find_all(self, tag: str) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                found.extend([child] if child.tag == tag else [])
                found.extend(child.find_all(tag))
        return found

    def find(self, tag: str) -> Node:
        (node,) = self.find_all(tag)
        return node


class _TreeBuilder(HTMLParser):
    _VOID = {"meta", "link", "br", "img", "source", "hr", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self._open = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self._open[-1].children.append(node)
        if tag not in self._VOID:
            self._open.append(node)

    def handle_endtag(self, tag):
        assert self._open[-1].tag == tag, f"</{tag}> closes <{self._open[-1].tag}>"
        self._open.pop()

    def handle_data(self, data):
        self._open[-1].children.append(data)


def parse(page: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    assert [node.tag for node in builder._open] == ["#document"], "unclosed elements"
    return builder.root


def sections(page: str) -> list[tuple[str, str, list[str]]]:
    """[(section id, heading, [video src, ...]), ...] in page order."""
    return [
        (section.attrs["id"], section.find("h2").text(), [video.attrs["src"] for video in section.find_all("video")])
        for section in parse(page).find_all("section")
    ]


def captions(page: str) -> list[list[str]]:
    """Each figure's caption lines (the children of its figcaption), in page order."""
    return [
        [line.text() for line in figure.find("figcaption").children if isinstance(line, Node)]
        for figure in parse(page).find_all("figure")
    ]


def test_newest_iteration_first_grouped_by_iteration_then_round_and_episode():
    records = [
        record(1, 0), record(1, 1), record(3, 1), record(2, 1), record(2, 0),
        record(2, 0, evaluation_round=5), record(3, 0),
    ]
    page = render_gallery(records)
    assert sections(page) == [
        ("iteration-3", "Iteration 3", [
            "flatland-it000003-ev0003-ep000-run1.mp4", "flatland-it000003-ev0003-ep001-run1.mp4",
        ]),
        ("iteration-2", "Iteration 2", [
            "flatland-it000002-ev0002-ep000-run1.mp4", "flatland-it000002-ev0002-ep001-run1.mp4",
            "flatland-it000002-ev0005-ep000-run1.mp4",
        ]),
        ("iteration-1", "Iteration 1", [
            "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep001-run1.mp4",
        ]),
    ]
    tree = parse(page)
    nav = [link.attrs["href"] for link in tree.find("nav").find_all("a")]
    assert nav == ["#iteration-3", "#iteration-2", "#iteration-1"]
    assert tree.find("p").text() == "7 videos of 3 training iterations, newest first · run run1"
    assert tree.find("title").text() == "Evaluation videos"


def test_captions_say_iteration_steps_episode_completion_return_and_checkpoint():
    checkpoint = "outputs/2026-11-23/20-03-27/checkpoints/it000012"
    page = render_gallery([
        record(12, 1, env_steps=4800, episode_return=-41.5),
        record(12, 0, evaluation_round=13, agents_arrived=3, episode_return=7.0, checkpoint=checkpoint),
    ])
    assert captions(page) == [
        ["iteration 12 · 4800 env steps · episode 1 · 2/3 arrived · return -41.50",
         "flatland-it000012-ev0012-ep001-run1.mp4"],
        ["iteration 12 · 4800 env steps · episode 0 · 3/3 arrived · return 7.00",
         "checkpoint outputs/2026-11-23/20-03-27/checkpoints/it000012",
         "flatland-it000012-ev0013-ep000-run1.mp4"],
    ]
    (first, second) = parse(page).find_all("figure")
    assert first.find("video").attrs == {
        "controls": None, "preload": "none", "src": "flatland-it000012-ev0012-ep001-run1.mp4",
        "width": "484", "height": "484",
    }
    assert first.find("a").attrs == {"class": "file", "href": "flatland-it000012-ev0012-ep001-run1.mp4"}
    assert second.find("figcaption").find_all("span")[1].attrs == {"class": "checkpoint"}
    assert parse(page).find("p").text() == "2 videos of 1 training iteration, newest first · run run1"


def test_everything_taken_from_records_is_escaped():
    name = """it's <b>&"bold".mp4"""
    checkpoint = """</span><script>alert("x")</script>"""
    page = render_gallery([record(1, 0, file=name, checkpoint=checkpoint, run_id="<i>run</i>")])
    assert "<b>" not in page and "<i>" not in page and "<script>alert" not in page
    assert page.count("<script") == 1  # the page's own, nothing from a record
    tree = parse(page)
    assert tree.find("video").attrs["src"] == "it%27s%20%3Cb%3E%26%22bold%22.mp4"
    assert tree.find("figure").find("a").attrs["href"] == "it%27s%20%3Cb%3E%26%22bold%22.mp4"
    assert captions(page) == [[
        "iteration 1 · 400 env steps · episode 0 · 2/3 arrived · return -12.50", f"checkpoint {checkpoint}", name,
    ]]
    assert tree.find("p").text() == "1 video of 1 training iteration, newest first · run <i>run</i>"


def test_the_page_fetches_nothing_from_anywhere_else():
    page = render_gallery([record(2, 0), record(1, 0, checkpoint="https://example.com/ckpt")])
    tree = parse(page)
    links = [node.attrs[key] for node in _all_nodes(tree) for key in ("src", "href") if key in node.attrs]
    assert links == [
        "#iteration-2", "#iteration-1",
        "flatland-it000002-ev0002-ep000-run1.mp4", "flatland-it000002-ev0002-ep000-run1.mp4",
        "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep000-run1.mp4",
    ]
    assert not tree.find_all("link") and not tree.find_all("img") and not tree.find_all("iframe")
    style, script = tree.find("style").text(), tree.find("script").text()
    assert "url(" not in style and "@import" not in style and "@font-face" not in style
    assert "fetch" not in script and "http" not in script and "import" not in script


def _all_nodes(node: Node) -> list[Node]:
    nodes = []
    for child in node.children:
        if isinstance(child, Node):
            nodes.extend([child, *_all_nodes(child)])
    return nodes


def test_records_it_cannot_show_are_left_out():
    good = record(1, 0)
    records = [
        record(1, 1, file="../elsewhere.mp4"), record(1, 2, file="sub/video.mp4"), record(1, 3, file=""),
        record(1, 4, file=None), record(1, 5, training_iteration="1"), record(1, 6, episode_return=None),
        {key: value for key, value in record(1, 7).items() if key != "env_steps"},
        5, ["flatland.mp4"], good,
    ]
    assert sections(render_gallery(records)) == [("iteration-1", "Iteration 1", [good["file"]])]


def test_no_videos_yet():
    tree = parse(render_gallery([]))
    assert tree.find("p").text() == "0 videos of 0 training iterations, newest first"
    assert not tree.find_all("section") and not tree.find_all("nav")


def test_write_gallery_shows_the_manifest_videos_present_and_replaces_the_page_atomically(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    for index in range(3):
        store.store(episode=episode(mp4=f"video {index}".encode()), stem=f"flatland-it000001-ev0001-ep{index:03d}-run1",
                    tag=TrainingTag(1, 400), evaluation_round=1, episode_index=index, checkpoint=None)
    (tmp_path / "flatland-it000001-ev0001-ep001-run1.mp4").unlink()  # removed by hand
    with (tmp_path / MANIFEST).open("a") as manifest:  # a record of a file that never arrived
        manifest.write(json.dumps(record(4, 0, file="flatland-it000004-ev0004-ep000-run1.mp4")) + "\n")

    path = write_gallery(tmp_path)
    assert path == tmp_path / GALLERY
    records = read_manifest(tmp_path)
    assert path.read_text() == render_gallery([records[0], records[2]])
    assert sections(path.read_text()) == [
        ("iteration-1", "Iteration 1", [
            "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep002-run1.mp4",
        ]),
    ]
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path)) == [
        "flatland-it000001-ev0001-ep000-run1.json", "flatland-it000001-ev0001-ep000-run1.mp4",
        "flatland-it000001-ev0001-ep001-run1.json",
        "flatland-it000001-ev0001-ep002-run1.json", "flatland-it000001-ev0001-ep002-run1.mp4",
        GALLERY, MANIFEST,
    ]

    # The next round: a new page replaces the old one; a reader of the old one still has all of it.
    store.store(episode=episode(mp4=b"video 3"), stem="flatland-it000002-ev0002-ep000-run1", tag=TrainingTag(2, 800),
                evaluation_round=2, episode_index=0, checkpoint=None)
    with path.open() as old_reader:
        old_page = path.read_text()
        write_gallery(tmp_path)
        assert old_reader.read() == old_page
    assert [section[0] for section in sections(path.read_text())] == ["iteration-2", "iteration-1"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_a_failed_write_keeps_the_old_page_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / GALLERY).write_text("the old page")

    def no_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_gallery(tmp_path)
    assert (tmp_path / GALLERY).read_text() == "the old page"
    assert os.listdir(tmp_path) == [GALLERY]


# --- in a real browser ---------------------------------------------------------------------------


class Chromium:
    """Headless Chromium driven over its DevTools pipe (commands on fd 3, replies on fd 4,
    JSON messages ended by NUL): real time, the real page, no Python packages needed."""

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
        return reply["result"]["value"]

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


@pytest.fixture
def chromium(tmp_path):
    """Start headless Chromium with extra flags: ``chromium("--window-size=800,600")``."""
    started = []

    def start(*flags: str) -> Chromium:
        started.append(Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log", *flags))
        return started[-1]

    yield start
    for browser in started:
        browser.close()


# Waits until every video has its metadata (the page itself starts loading it), then plays
# them all to the end; returns what the browser saw and shows.
_PLAYBACK_PROBE = """(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const videos = [...document.querySelectorAll("video")];
  for (let i = 0; i < 600 && videos.some((v) => v.readyState < 1 && !v.error); i++) await sleep(50);
  const durations = videos.map((v) => v.duration);
  for (const video of videos) video.play().catch(() => {});
  for (let i = 0; i < 600 && videos.some((v) => !v.ended && !v.error); i++) await sleep(50);
  return videos.map((video, i) => {
    const figcaption = video.closest("figure").querySelector("figcaption");
    return {
      section: video.closest("section").querySelector("h2").innerText,
      src: video.getAttribute("src"),
      duration: durations[i],
      size: [video.videoWidth, video.videoHeight],
      error: video.error && video.error.code,
      ended: video.ended,
      framesDecoded: video.getVideoPlaybackQuality().totalVideoFrames,
      caption: [...figcaption.children].map((line) => line.innerText),
      captionShown: figcaption.getBoundingClientRect().height > 0,
    };
  });
})()"""

# Scrolls through the page one screen at a time, waiting at each stop until the videos on
# screen have metadata, and counts how many videos hold a loaded player at once. Then loads
# every video at once (what a page without lazy loading does) and counts the failures.
_SCROLL_PROBE = """(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const videos = [...document.querySelectorAll("video")];
  const loaded = new Set(), failed = new Set();
  let mostAtOnce = 0;
  const look = () => {
    let live = 0, waiting = 0;
    videos.forEach((video, i) => {
      if (video.readyState > 0) { live++; if (video.duration > 0) loaded.add(i); }
      if (video.error) failed.add(i);
      const box = video.getBoundingClientRect();
      if (box.bottom > 0 && box.top < innerHeight && video.readyState === 0 && !video.error) waiting++;
    });
    mostAtOnce = Math.max(mostAtOnce, live);
    return waiting;
  };
  for (let y = 0; y < document.documentElement.scrollHeight; y += innerHeight) {
    window.scrollTo(0, y);
    for (let i = 0; i < 200 && look() > 0; i++) await sleep(50);
  }
  await sleep(300);
  look();
  const result = { videos: videos.length, loaded: loaded.size, failed: failed.size, mostAtOnce };
  for (const video of videos) {
    if (!video.hasAttribute("src")) video.src = video.dataset.src;
    video.preload = "auto";
    video.load();
  }
  for (let i = 0; i < 200 && videos.some((v) => v.readyState === 0 && !v.error); i++) await sleep(50);
  result.failedAllAtOnce = videos.filter((v) => v.error).length;
  return result;
})()"""


def encode(path: Path, *, frames: int, width: int, height: int, fps: int = 10) -> bytes:
    """A real H.264 mp4 of ``frames`` frames: a bar moving over a gradient."""
    encoder = StreamingEncoder(path, width=width, height=height, fps=fps)
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    for index in range(frames):
        frame = gradient.copy()
        frame[:, index * 8 % width:(index * 8 % width) + 8] = (255, 40, 40)
        encoder.add(frame)
    assert encoder.close() == frames
    return path.read_bytes()


@needs_chromium
def test_chromium_plays_every_video_from_disk_with_the_manifest_captions(tmp_path, chromium):
    folder, sources = tmp_path / "videos", tmp_path / "sources"
    folder.mkdir()
    sources.mkdir()
    store = VideoStore(folder, run_id="run1")
    checkpoint = "outputs/2026-11-23/20-03-27/checkpoints/it000004"
    # (iteration, round, episode, frames, width, height, arrived, return, checkpoint)
    videos = [
        (1, 1, 0, 5, 64, 48, 0, -30.0, None), (1, 1, 1, 7, 64, 48, 1, -21.25, None),
        (2, 2, 0, 4, 96, 64, 2, -3.5, None), (2, 2, 1, 6, 96, 64, 3, 0.0, None),
        (4, 3, 0, 8, 80, 80, 2, -7.75, checkpoint),
    ]
    for iteration, evaluation_round, index, frames, width, height, arrived, episode_return, ckpt in videos:
        mp4 = encode(sources / f"{iteration}-{index}.mp4", frames=frames, width=width, height=height)
        tag = TrainingTag(iteration, 400 * iteration)
        store.store(
            episode=episode(mp4=mp4, frames=frames, width=width, height=height, fps=10, num_agents=3,
                            agents_arrived=arrived, episode_return=episode_return),
            stem=video_stem(env="flatland", training_iteration=iteration, evaluation_round=evaluation_round, episode_index=index, run_id="run1"),
            tag=tag, evaluation_round=evaluation_round, episode_index=index, checkpoint=ckpt,
        )
    with (folder / MANIFEST).open("a") as manifest:  # listed, but its file is not there
        manifest.write(json.dumps(record(3, 0, file="flatland-it000003-ev0009-ep000-run1.mp4")) + "\n")

    browser = chromium("--window-size=1280,2000")
    seen = browser.evaluate(browser.open(write_gallery(folder)), _PLAYBACK_PROBE)

    by_file = {r["file"]: r for r in read_manifest(folder)}
    assert [video["src"] for video in seen] == [
        "flatland-it000004-ev0003-ep000-run1.mp4",
        "flatland-it000002-ev0002-ep000-run1.mp4", "flatland-it000002-ev0002-ep001-run1.mp4",
        "flatland-it000001-ev0001-ep000-run1.mp4", "flatland-it000001-ev0001-ep001-run1.mp4",
    ]
    for video in seen:
        r = by_file[video["src"]]
        assert video["error"] is None, video
        assert video["duration"] > 0 and video["duration"] == pytest.approx(r["frames"] / r["fps"], abs=0.05), video
        assert video["size"] == [r["width"], r["height"]], video
        assert video["ended"] and video["framesDecoded"] == r["frames"], video  # played, every frame decoded
        assert video["section"] == f"Iteration {r['training_iteration']}"
        expected = [
            f"iteration {r['training_iteration']} · {r['env_steps']} env steps · episode {r['episode_index']} · "
            f"{r['agents_arrived']}/{r['num_agents']} arrived · return {r['episode_return']:.2f}",
            *([f"checkpoint {r['checkpoint']}"] if r["checkpoint"] is not None else []),
            r["file"],
        ]
        assert video["caption"] == expected and video["captionShown"], video


@needs_chromium
def test_chromium_stays_under_its_player_limit_while_scrolling_a_long_gallery(tmp_path, chromium):
    """Chromium fails every media player of a page beyond a limit (1000; lowered here to 20
    so a short page shows it): the gallery loads only videos near the screen, frees the rest."""
    folder = tmp_path / "videos"
    folder.mkdir()
    encode(tmp_path / "clip.mp4", frames=3, width=64, height=48)
    records = [
        record(iteration, index, width=64, height=48, frames=3) for iteration in range(30, 0, -1) for index in range(2)
    ]
    for r in records:
        os.link(tmp_path / "clip.mp4", folder / r["file"])
    (folder / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in records))

    browser = chromium("--window-size=800,600", "--max-web-media-player-count=20")
    seen = browser.evaluate(browser.open(write_gallery(folder)), _SCROLL_PROBE)

    assert (seen["videos"], seen["loaded"], seen["failed"]) == (60, 60, 0), seen
    assert seen["mostAtOnce"] <= 20, seen
    assert seen["failedAllAtOnce"] > 0, seen  # all at once (no lazy loading) breaks videos: the limit is real
