"""A process that stores videos into a folder and is killed (kill -9) at a chosen moment.

    python storing_child.py FOLDER RUN_ID MODE KILL_AT FIRST COUNT MP4_FILE...

Stores COUNT videos (iterations FIRST, FIRST+1, ...; the mp4 bytes cycle through the
files), printing ``stored <name>`` after each. MODE says where it SIGKILLs itself, at the
KILL_AT-th video (1-based):
  after-link      right after the video got its final name (before its sidecar)
  after-sidecar   right after its sidecar got its final name (before the manifest line)
  mid-line        half way through writing its manifest line
  never           not at all (the test kills it from outside)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers

from eval_recorder.tags import TrainingTag  # noqa: E402
from eval_recorder.video_index import MANIFEST
from eval_recorder.video_store import VideoStore  # noqa: E402
from helpers import episode  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(folder: str, run_id: str, mode: str, kill_at: str, first: str, count: str, *mp4_files: str) -> None:
    kill_at_n, seen = int(kill_at), {".mp4": 0, ".json": 0, "line": 0}
    real_link, real_write = os.link, os.write

    def link(src, dst, *args, **kwargs):
        real_link(src, dst, *args, **kwargs)
        suffix = Path(dst).suffix
        seen[suffix] += 1
        if seen[suffix] == kill_at_n and (mode, suffix) in (("after-link", ".mp4"), ("after-sidecar", ".json")):
            die()

    def write(fd, data):
        if mode == "mid-line" and os.readlink(f"/proc/self/fd/{fd}").endswith(MANIFEST):
            seen["line"] += 1
            if seen["line"] == kill_at_n:
                real_write(fd, bytes(data[: len(data) // 2]))
                os.fsync(fd)
                die()
        return real_write(fd, data)

    os.link, os.write = link, write
    mp4s = [Path(name).read_bytes() for name in mp4_files]
    store = VideoStore(Path(folder), run_id=run_id)
    for number in range(int(count)):
        iteration = int(first) + number
        stem = f"flatland-it{iteration:06d}-ev{iteration:04d}-ep000-{run_id}"
        path, _ = store.store(episode=episode(mp4=mp4s[number % len(mp4s)]), stem=stem,
                              tag=TrainingTag(iteration, 400 * iteration), evaluation_round=iteration,
                              episode_index=0, checkpoint=None)
        print("stored", path.name, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
