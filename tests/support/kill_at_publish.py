"""``run_eval.py`` that kills itself (SIGKILL, as a crash or an OOM kill would) at the
moment it publishes its N-th video:

    python kill_at_publish.py MODE N [run_eval.py overrides...]

MODE:
  after-link    right after the video got its final name in the video folder: no sidecar,
                no manifest line, nothing sent to wandb
  after-wandb   right after the video was handed to wandb (``WandbSink.log_videos``
                returned): wandb's service may or may not have written it yet
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    mode, count = sys.argv[1], int(sys.argv[2])
    seen = 0

    def die_at_count() -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "after-link":
        real_link = os.link

        def link(src, dst, *args, **kwargs):
            real_link(src, dst, *args, **kwargs)
            if str(dst).endswith(".mp4"):
                die_at_count()

        os.link = link
    elif mode == "after-wandb":
        from eval_recorder.wandb_sink import WandbSink

        real_log_videos = WandbSink.log_videos

        def log_videos(self, records, **kwargs):
            real_log_videos(self, records, **kwargs)
            for _ in records:
                die_at_count()

        WandbSink.log_videos = log_videos
    else:
        raise SystemExit(f"unknown mode {mode}")
    sys.argv = [str(ROOT / "run_eval.py"), *sys.argv[3:]]
    runpy.run_path(str(ROOT / "run_eval.py"), run_name="__main__")


if __name__ == "__main__":
    main()
