"""What checking a video folder at resume costs: every listed video's size and sha256
against its manifest record (``eval_recorder.video_index.find_altered``), as a resumed
``RecordingSession`` does before it records anything.

Usage (from the repo root)::

    python benchmarks/resume_check.py                  # 1000 videos of a 200-frame Flatland episode
    python benchmarks/resume_check.py --videos 300 --frames 100 --repeats 5

One real video is recorded as the recorder records them (benchmarks/poster.py's ``record``:
10 agents on 40x40, 524x524), then stored ``--videos`` times (each copy one byte apart, so
each has its own sha256) with a manifest line each, in a temporary folder. Reported: the
folder's size, the median and worst time of the check over the repeats and its throughput.
The files were just written, so they are read from the page cache; from a cold disk the
check reads the folder's bytes once more (add size / the disk's read rate).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fill(folder: Path, mp4: bytes, count: int) -> int:
    """``count`` videos of ``mp4``'s size (each one byte apart) with their manifest lines; bytes."""
    from eval_recorder.video_index import MANIFEST

    lines = []
    for index in range(count):
        data = mp4[:-4] + index.to_bytes(4, "big")
        name = f"flatland-it{index // 2:06d}-ev{index // 2:04d}-ep{index % 2:03d}-bench.mp4"
        (folder / name).write_bytes(data)
        lines.append(json.dumps({"file": name, "run_id": "bench", "bytes": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()}))
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")
    return count * len(mp4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from poster import record

    from eval_recorder.video_index import find_altered

    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryDirectory() as folder:
        mp4 = record(Path(scratch) / "one.mp4", frames=args.frames, agents=10, size=40, seed=7)
        total = fill(Path(folder), mp4, args.videos)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            altered, restored = find_altered(folder)
            times.append(time.perf_counter() - start)
            assert altered == [] and restored == []
        median = statistics.median(times)
        print(f"{args.videos} videos of {args.frames} frames 524x524 ({len(mp4) / 1000:.0f} kB each, "
              f"{total / 1e6:.0f} MB): checked in {median * 1000:.0f} ms (median of {args.repeats}, worst "
              f"{max(times) * 1000:.0f} ms), {total / 1e6 / median:.0f} MB/s, {median / args.videos * 1e6:.0f} us "
              f"per video")


if __name__ == "__main__":
    main()
