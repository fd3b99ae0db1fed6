"""What a video's poster costs the driver: decoding a real Flatland video's last frame and
encoding that as JPEG (``eval_recorder.poster.last_frame_jpeg``), as ``VideoStore`` does
for every video it stores, side by side with decoding every frame to reach the last one
(how posters were made until 2026-12-07).

Usage (from the repo root)::

    python benchmarks/poster.py                   # 10 agents on 40x40 (524x524), 100, 300 and 900 frames
    python benchmarks/poster.py --frames 150 --repeats 20

The videos are recorded as the recorder records them (FrameRenderer's yuv420p frames,
random actions, the label burned in, StreamingEncoder: a keyframe every 250 frames);
reported per video length: its size, the median and the worst time of ``last_frame_jpeg``
over the repeats, the same for every frame decoded, their ratio, and the poster's size
(the two posters must be the same bytes, else the benchmark fails).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def record(path: Path, *, frames: int, agents: int, size: int, seed: int) -> bytes:
    """A Flatland episode of ``frames`` frames (the reset frame, then a frame per step) as an mp4."""
    from recording import _flatland_label, _make_rail_env

    from eval_recorder.encoding import StreamingEncoder
    from eval_recorder.flatland.rendering import FrameRenderer
    from eval_recorder.frames import DEFAULT_MAX_SIDE

    rail_env = _make_rail_env(agents, size, seed)
    rail_env.reset(regenerate_rail=False, regenerate_schedule=False, random_seed=seed)
    rail_env._max_episode_steps = max(rail_env._max_episode_steps, frames)  # long videos: the episode goes on
    renderer = FrameRenderer(rail_env, max_side=DEFAULT_MAX_SIDE)
    label = _flatland_label(rail_env, True)
    renderer.new_episode()
    rng = np.random.default_rng(seed)
    encoder = None
    for index in range(frames):
        if index:
            rail_env.step({agent: int(rng.integers(0, 5)) for agent in range(rail_env.get_num_agents())})
        frame = renderer.render_yuv420p()
        if encoder is None:
            encoder = StreamingEncoder(path, width=frame.shape[1], height=frame.shape[0] * 2 // 3, fps=10)
        encoder.add_yuv420p(frame, label=label())
    encoder.close()
    return path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 300, 900])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    from eval_recorder.poster import last_frame_jpeg

    def timed(make, mp4: bytes) -> tuple[list[float], bytes]:
        make(mp4)  # imports and first-call setup outside the timing
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            poster = make(mp4)
            times.append(time.perf_counter() - start)
        return times, poster

    with tempfile.TemporaryDirectory() as folder:
        for frames in args.frames:
            mp4 = record(Path(folder) / f"{frames}.mp4", frames=frames, agents=10, size=40, seed=7)
            times, poster = timed(last_frame_jpeg, mp4)
            every, theirs = timed(every_frame_jpeg, mp4)
            if poster != theirs:
                raise SystemExit(f"{frames} frames: the poster differs from the last frame decoded from the start")
            print(f"{frames} frames 524x524, mp4 {len(mp4) / 1000:.0f} kB: poster in {statistics.median(times) * 1000:.0f} ms "
                  f"(median of {args.repeats}, worst {max(times) * 1000:.0f} ms), every frame decoded "
                  f"{statistics.median(every) * 1000:.0f} ms (worst {max(every) * 1000:.0f} ms): "
                  f"{statistics.median(times) / statistics.median(every):.2f}x; jpeg {len(poster) / 1000:.1f} kB, "
                  "the same bytes")


def every_frame_jpeg(mp4: bytes) -> bytes:
    """The poster as it was made until 2026-12-07: every frame decoded, the last one as JPEG."""
    import io

    import av

    from eval_recorder.poster import JPEG_QUALITY

    with av.open(io.BytesIO(mp4), mode="r") as container:
        last = None
        for last in container.decode(container.streams.video[0]):
            pass
    out = io.BytesIO()
    last.to_image().save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


if __name__ == "__main__":
    main()
