"""What recording costs: env-only vs. eval_recorder vs. gymnasium RecordVideo, side by side.

Usage (from the repo root, with the ``bench`` extra installed: ``pip install -e '.[bench]'``)::

    python benchmarks/recording.py                      # both cases + memory, 3 repeats
    python benchmarks/recording.py --repeats 5 --cases small
    python benchmarks/recording.py --memory-steps       # skip the memory sweep
    python benchmarks/recording.py --label              # ours with the burned-in label (run_eval's default)

Modes, each run in its own fresh subprocess on the same seeded episode with the same
seeded random actions (modes alternate within each repeat; the order rotates):

  env      RailEnv steps only (the baseline).
  ours     eval_recorder's EpisodeRecorder: FrameRenderer (static rails drawn once per
           episode, trains composited per step, yuv420p patches) into the
           StreamingEncoder (H.264 in a helper process fed through a pipe, bounded
           queue), mp4 finished at the end.
  anchor   gymnasium.wrappers.RecordVideo over a gymnasium.Env adapter whose render()
           returns flatland RenderTool(env, gl="PILSVG")'s RGB frame; frames are kept in
           RAM and written by moviepy when the episode ends.

Both recording modes write flatland's native frame size (ours: FrameRenderer's default
max_side does not scale it). The timed region of every mode starts before the recorder
is built and ends when the video file is complete: it holds setup (RenderTool /
FrameRenderer construction), env.reset, every step and finishing the video. Env
construction is outside it. Peak RSS = the process's high-water mark during the timed
region (reset just before it via /proc/self/clear_refs) + the peak summed RSS of its
helper processes (our encoder process; moviepy's ffmpeg), sampled every 20 ms. Every
child imports the same modules first, so the differences are work, not libraries loaded.

Printed: per case and mode the median wall, peak RSS and bytes written over the repeats,
and what a mode adds (its value minus env-only's on the same seeded episode, per repeat,
median); then goal 1, added wall ours / RecordVideo ≤ 1/4, and goal 2, the peak RSS ours
adds at 250, 1000 and 2000 steps: < 64 MB and flat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np

MODES = ("env", "ours", "anchor")
CASES = {
    "small": dict(agents=10, size=40, steps=400),
    "large": dict(agents=50, size=100, steps=500),
}
MEMORY_STEPS = (250, 1000, 2000)
MEMORY_CASE = "small"
FPS = 10
TIME_GOAL = 0.25
MEMORY_GOAL_MB = 64.0
_LABEL = False  # --label: ours burns the label into every frame, as run_eval.py does by default


# ---- child: one mode, one episode ------------------------------------------------------


def _import_everything() -> None:
    """Every mode imports the same modules, so RSS differences are not library code."""
    import av  # noqa: F401
    import gymnasium.wrappers  # noqa: F401
    import moviepy.video.io.ImageSequenceClip  # noqa: F401
    from flatland.utils.rendertools import RenderTool  # noqa: F401

    import eval_recorder.recorder  # noqa: F401


def _make_env(agents: int, size: int, seed: int):
    from flatland.env_generation.env_generator import env_generator
    from flatland.envs.predictions import ShortestPathPredictorForRailEnv
    from flatland.ml.observations.flatten_tree_observation_for_rail_env import FlattenedNormalizedTreeObsForRailEnv

    # The observation builder eval_recorder.flatland.envs.make_env uses, so env steps cost what they cost there.
    obs_builder = FlattenedNormalizedTreeObsForRailEnv(
        max_depth=2, predictor=ShortestPathPredictorForRailEnv(max_depth=10)
    )
    rail_env, _, _ = env_generator(
        n_agents=agents, x_dim=size, y_dim=size, seed=seed, malfunction_interval=0, obs_builder_object=obs_builder
    )
    return rail_env


def _actions(num_agents: int, steps: int, seed: int) -> list[dict[int, int]]:
    rng = np.random.default_rng(seed)
    return [{i: int(a) for i, a in enumerate(row)} for row in rng.integers(0, 5, size=(steps, num_agents))]


def _episode_reset(rail_env, seed: int) -> None:
    """Back to the episode's start: same rails and schedule (made before timing), agents reset."""
    rail_env.reset(regenerate_rail=False, regenerate_schedule=False, random_seed=seed)


def _run_env(rail_env, actions, seed, out_dir) -> tuple[int, str]:
    _episode_reset(rail_env, seed)
    for action in actions:
        rail_env.step(action)
    return 0, "-"


def _run_ours(rail_env, actions, seed, out_dir) -> tuple[int, str]:
    from eval_recorder.recorder import EpisodeRecorder
    from eval_recorder.flatland.rendering import DEFAULT_MAX_SIDE

    label = None
    if _LABEL:
        from flatland.envs.step_utils.states import TrainState

        from eval_recorder.overlay import label_text

        def label() -> str:
            arrived = sum(agent.state == TrainState.DONE for agent in rail_env.agents)
            step, agents = rail_env._elapsed_steps, rail_env.get_num_agents()
            return label_text(training_iteration=0, step=step, extra=f"arrived {arrived}/{agents}")

    recorder = EpisodeRecorder(rail_env, fps=FPS, max_side=DEFAULT_MAX_SIDE, runner_index=0, label=label)
    _episode_reset(rail_env, seed)
    recorder.start(env_seed=seed)
    for action in actions:
        rail_env.step(action)
        recorder.capture()
    episode = recorder.finish(
        weights_seq_no=0, episode_length=len(actions), num_agents=rail_env.get_num_agents(), agents_arrived=0,
        episode_return=0.0,
    )  # fmt: skip
    (out_dir / "ours.mp4").write_bytes(episode.mp4)
    return len(episode.mp4), f"{episode.width}x{episode.height}"


def _run_anchor(rail_env, actions, seed, out_dir) -> tuple[int, str]:
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(
        RenderToolEnv(rail_env), video_folder=str(out_dir), name_prefix="anchor",
        episode_trigger=lambda episode: True, fps=FPS, disable_logger=True,
    )  # fmt: skip
    env.reset(seed=seed)
    for action in actions:
        env.step(action)
    height, width = env.env.frame_shape
    env.close()  # the episode is cut at a fixed step count: close() writes the video
    return sum(path.stat().st_size for path in out_dir.glob("anchor*.mp4")), f"{width}x{height}"


class RenderToolEnv(gymnasium.Env):
    """A RailEnv as a gymnasium.Env whose render() is flatland RenderTool's RGB frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, rail_env) -> None:
        from flatland.utils.rendertools import RenderTool

        self.rail_env = rail_env
        self.render_mode = "rgb_array"
        self.action_space = gymnasium.spaces.Discrete(5)
        self.observation_space = gymnasium.spaces.Discrete(1)
        self._tool = RenderTool(rail_env, gl="PILSVG")
        self.frame_shape = (0, 0)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        _episode_reset(self.rail_env, seed)
        self._tool.reset()
        return {}, {}

    def step(self, action):
        observations, rewards, dones, info = self.rail_env.step(action)
        return observations, float(sum(rewards.values())), bool(dones["__all__"]), False, info

    def render(self):
        self._tool.render_env(show=False, show_observations=False, show_predictions=False)
        frame = np.ascontiguousarray(self._tool.get_image()[:, :, :3])
        self.frame_shape = frame.shape[:2]
        return frame


_RUNNERS = {"env": _run_env, "ours": _run_ours, "anchor": _run_anchor}


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(pid: int | str, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _peak_rss_mb() -> float:
    peak = _status_mb("self", "VmHWM")
    if peak:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _descendants(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for child in children.read_text().split():
                found += [int(child), *_descendants(int(child))]
        except OSError:
            pass
    return found


class _ChildMemory:
    """Samples the summed RSS of this process's descendants (encoder process, ffmpeg ...) every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_ChildMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        own_command = _command(os.getpid())
        while not self._stop.wait(0.02):
            # A child between fork and exec still runs our command and shares our pages: skip it.
            helpers = [pid for pid in _descendants(os.getpid()) if _command(pid) != own_command]
            self.peak_mb = max(self.peak_mb, sum(_status_mb(pid, "VmRSS") for pid in helpers))


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def run_child(mode: str, agents: int, size: int, steps: int, seed: int) -> dict:
    """Run one mode on one episode in this process; the measurements as a dict."""
    import gc

    _import_everything()
    rail_env = _make_env(agents, size, seed)
    rail_env.reset(random_seed=seed)  # rails and schedule of the episode, outside the timed region
    rail_env._max_episode_steps = steps + 1  # a fixed-length episode: not truncated early
    actions = _actions(rail_env.get_num_agents(), steps, seed)
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        peak_reset = _reset_peak_rss()
        with _ChildMemory() as children:  # helper processes count too: our encoder, moviepy's ffmpeg
            start = time.perf_counter()
            written, resolution = _RUNNERS[mode](rail_env, actions, seed, Path(tmp))
            wall = time.perf_counter() - start
        peak = _peak_rss_mb()
        child_peak = children.peak_mb
    return dict(
        mode=mode, wall_s=wall, process_peak_mb=peak, child_peak_mb=child_peak, peak_rss_mb=peak + child_peak,
        bytes=written, resolution=resolution, peak_reset=peak_reset,
    )  # fmt: skip


# ---- parent: alternate modes in subprocesses, report -------------------------------------


def _spawn(mode: str, agents: int, size: int, steps: int, seed: int) -> dict:
    command = [
        sys.executable, __file__, "--child", mode,
        "--agents", str(agents), "--size", str(size), "--steps", str(steps), "--seed", str(seed),
        *(["--label"] if _LABEL else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(agents: int, size: int, steps: int, repeats: int, modes=MODES, seed: int = 1) -> dict[str, list[dict]]:
    """{mode: [result per repeat]}; repeat r uses seed+r for every mode, modes rotate order."""
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        order = list(modes[repeat % len(modes) :]) + list(modes[: repeat % len(modes)])
        for mode in order:
            result = _spawn(mode, agents, size, steps, seed + repeat)
            results[mode].append(result)
            print(
                f"  repeat {repeat} {mode:6s} wall {result['wall_s']:7.2f} s  peak RSS {result['peak_rss_mb']:7.0f} MB"
                f"  bytes {result['bytes']:>10,d}",
                file=sys.stderr,
                flush=True,
            )
    return results


def _median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _added(results: dict[str, list[dict]], mode: str, key: str) -> list[float]:
    """Per repeat, ``mode`` minus env-only on the same seeded episode."""
    return [r[key] - e[key] for r, e in zip(results[mode], results["env"])]


def report_time(name: str, case: dict, results: dict[str, list[dict]]) -> bool:
    repeats = len(results["env"])
    print(f"\n## {name}: {case['agents']} agents, {case['size']}x{case['size']}, {case['steps']} steps, "
          f"{repeats} repeats (medians; added = minus env-only on the same episode)")  # fmt: skip
    print("| mode | resolution | wall s | added s (min-max) | peak RSS MB (process + helpers) | bytes written |")
    print("|---|---|---:|---:|---:|---:|")
    for mode in MODES:
        walls = _added(results, mode, "wall_s")
        added = "" if mode == "env" else f"{statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f})"
        process, helpers = _median(results[mode], "process_peak_mb"), _median(results[mode], "child_peak_mb")
        resolution, wall = results[mode][0]["resolution"], _median(results[mode], "wall_s")
        print(f"| {mode} | {resolution} | {wall:.2f} | {added} "
              f"| {process + helpers:.0f} ({process:.0f} + {helpers:.0f}) "
              f"| {int(_median(results[mode], 'bytes')):,d} |")  # fmt: skip
    ours_added = statistics.median(_added(results, "ours", "wall_s"))
    anchor_added = statistics.median(_added(results, "anchor", "wall_s"))
    ratio = ours_added / anchor_added
    met = ratio <= TIME_GOAL
    print(f"goal 1: ours adds {ours_added:.2f} s, RecordVideo adds {anchor_added:.2f} s; "
          f"ratio {ratio:.3f} (goal <= {TIME_GOAL}) -> {'MET' if met else 'NOT MET'}")  # fmt: skip
    mem = statistics.median(_added(results, "ours", "peak_rss_mb"))
    anchor_mem = statistics.median(_added(results, "anchor", "peak_rss_mb"))
    print(f"peak RSS added: ours {mem:.0f} MB, RecordVideo {anchor_mem:.0f} MB")
    return met


def report_memory(steps_list, per_steps: dict[int, dict[str, list[dict]]]) -> bool:
    case = CASES[MEMORY_CASE]
    print(f"\n## memory: {case['agents']} agents, {case['size']}x{case['size']}, "
          "peak RSS (process + helpers) added over env-only (medians)")  # fmt: skip
    print("| steps | env MB | ours MB | RecordVideo MB | ours − env MB (process + helpers) | RecordVideo − env |")
    print("|---:|---:|---:|---:|---:|---:|")
    added = []
    for steps in steps_list:
        results = per_steps[steps]
        peaks = {m: _median(results[m], "peak_rss_mb") for m in MODES}
        ours = statistics.median(_added(results, "ours", "peak_rss_mb"))
        process = statistics.median(_added(results, "ours", "process_peak_mb"))
        helpers = statistics.median(_added(results, "ours", "child_peak_mb"))
        anchor = statistics.median(_added(results, "anchor", "peak_rss_mb"))
        added.append(ours)
        print(f"| {steps} | {peaks['env']:.0f} | {peaks['ours']:.0f} | {peaks['anchor']:.0f} "
              f"| {ours:.0f} ({process:.0f} + {helpers:.0f}) | {anchor:.0f} |")  # fmt: skip
    growth = added[-1] - added[0]
    met = max(added) < MEMORY_GOAL_MB and abs(growth) < MEMORY_GOAL_MB / 8
    print(f"goal 2: ours adds at most {max(added):.0f} MB (goal < {MEMORY_GOAL_MB:.0f}); from {steps_list[0]} to "
          f"{steps_list[-1]} steps it changes by {growth:+.0f} MB -> {'MET' if met else 'NOT MET'}")  # fmt: skip
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES), help="time cases to run")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per mode (medians are reported)")
    parser.add_argument("--memory-steps", nargs="*", type=int, default=list(MEMORY_STEPS),
                        help="episode lengths for the memory sweep (none: skip it)")  # fmt: skip
    parser.add_argument("--memory-repeats", type=int, default=1, help="repeats per mode in the memory sweep")
    parser.add_argument("--label", action="store_true",
                        help="ours burns the label (iteration | step | arrived) into every frame, "
                        "as run_eval.py does by default (recording.overlay)")  # fmt: skip
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--agents", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global _LABEL
    _LABEL = args.label

    if args.child:
        print(json.dumps(run_child(args.child, args.agents, args.size, args.steps, args.seed)))
        return 0

    print(f"# recording benchmark ({os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"load average {_load()}){' — ours with the burned-in label' if _LABEL else ''}")  # fmt: skip
    met = []
    for name in args.cases:
        case = CASES[name]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results = measure(case["agents"], case["size"], case["steps"], args.repeats)
        met.append(report_time(name, case, results))
    if args.memory_steps:
        case = CASES[MEMORY_CASE]
        per_steps = {}
        for steps in args.memory_steps:
            print(f"running memory {steps} steps ...", file=sys.stderr, flush=True)
            per_steps[steps] = measure(case["agents"], case["size"], steps, args.memory_repeats)
        met.append(report_memory(args.memory_steps, per_steps))
    print(f"\nall goals met: {all(met)} (load average at the end: {_load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
