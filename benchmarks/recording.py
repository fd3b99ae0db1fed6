"""What recording costs: env-only vs. eval_recorder vs. gymnasium RecordVideo, side by side,
with PASS/FAIL against the goals of issue 13.

Usage (from the repo root, with the ``bench`` extra installed: ``pip install -e '.[bench]'``)::

    python benchmarks/recording.py                  # every case and goal, 3 repeats (~30 min)
    python benchmarks/recording.py --repeats 1      # a quicker look (~7 min)
    python benchmarks/recording.py --cases small any800 --memory-steps --many-repeats 0   # a subset
    python benchmarks/recording.py --no-label       # ours without the burned-in label
    python benchmarks/recording.py --cases --memory-steps --many-repeats 0 --round-cases small   # one round case only

The last part runs benchmarks/round_wall.py's evaluation rounds (issue 19: stepping-thread
cost per step, round wall of select=all and select=worst:1 of 10 episodes, side by side with
env-only and RecordVideo, one repeat each, ~15 min: its rounds play whole episodes);
--round-cases with no names skips it.

Cases (the label is burned into every frame, as run_eval.py does by default):

  small, medium, large  Flatland, 10 agents on 40x40 (524x524 frames), 30 on 60x60
                        (544x544), 50 on 100x100 (504x504): flatland's own frame size
                        (FrameRenderer's default max_side does not scale it).
  any800                a generic ``rgb_array`` env (benchmarks/shapes_env.py) whose
                        ``render()`` returns 800x800 frames (the max_side cap), recorded
                        through the RGB path, as the recorder records any env; ~6 ms
                        per step and frame (see shapes_env.py).
  any800fast            the same env at ~2 ms per step: faster than one core encodes
                        800x800 frames. Reported for information (env, ours), no goal.
  many                  4 Flatland envs (small case, own seeds) stepped together in one
                        process, as an eval runner with num_envs_per_env_runner=4 steps them.

Modes, each run in its own fresh subprocess on the same seeded episode with the same
seeded random actions (modes alternate within each repeat; the order rotates):

  env      the env steps only (the baseline); in any800 also ``env.render()`` per step,
           the frame any recorder needs from a generic env.
  ours     what the recorder does: ``start_encoder_process()`` when the env is made, then
           per recorded frame (the reset frame and every step's): Flatland: FrameRenderer's
           yuv420p frame into ``StreamingEncoder.add_yuv420p(frame, label=text)``; any800:
           ``env.render()`` into ``StreamingEncoder.add(frame, label=text)``; the mp4
           finished at the end.
  anchor   gymnasium.wrappers.RecordVideo (frames kept in RAM, moviepy writes them when the
           episode ends) over flatland's RenderTool(env, gl="PILSVG"), or over the any800 env.
  ours1    (many) the four envs step, only the first is recorded: what one env costs there.

The timed region of every mode starts before the recorder is built and ends when the
video file is complete: setup (renderer, start of the encoder's helper process), reset,
every step, finishing the video. Env
construction is outside it, and so is reading the finished mp4 (the recorder then holds
its bytes, the "mp4 bytes" column, to send them to the driver). "added" = a mode minus
env-only on the same seeded episode, per repeat; the median over repeats is reported.
Per recorded frame: added wall / frames (what recording costs the stepping thread,
contention included), the time spent inside the recording calls themselves, and the
CPU time added in the process and used by its helper processes (robust to a busy
machine, which the wall figures are not).

Peak RSS = the process's high-water mark during the timed region (VmHWM, reset just
before it via /proc/self/clear_refs) + the high-water marks (VmHWM) of its helper
processes (our encoder process; moviepy's ffmpeg), read every 20 ms and at the end.
Every child imports the same modules first, so the differences are work, not libraries.
The memory goal lines also say how much of that is the encoder process's library pages
(its largest RssFile): shared, clean pages of PyAV's FFmpeg, libx264 ..., as many as the
page cache lets the kernel map (the same code measured 22-35 MB of them; README).

Quality (first repeat): after the measurements the ours child records the episode once
more, keeping every frame as it gives it to the encoder, and compares the decoded video
with them (PSNR in yuv420p, what the encoder encodes; RGB frames are converted as the
encoder converts them): the worst frame and the whole video.

Goals (issue 13), each printed as PASS or FAIL with its figures:
  1. time: ours adds <= 1/10 of what RecordVideo adds (small, medium, large), and
     <= 2 ms per recorded frame at 800x800 (any800);
  2. memory: ours adds <= 64 MB (process + helpers) in every case and episode length,
     flat in episode length (memory sweep at small and any800); decoded vs given >= 40 dB;
  3. many envs: 4 envs recorded at once use one helper process, whose memory is <= 2x
     what one env's helper takes (not 4x).
Shared machines give noisy times: the modes alternate and medians are reported.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shapes_env, when run as a script or a child

FPS = 10
CASES = {
    "small": dict(kind="flatland", agents=10, size=40, steps=400),
    "medium": dict(kind="flatland", agents=30, size=60, steps=450),
    "large": dict(kind="flatland", agents=50, size=100, steps=500),
    "any800": dict(kind="shapes", size=800, steps=400, field=640),
    "any800fast": dict(kind="shapes", size=800, steps=400, field=64, info=True),
    "many": dict(kind="many", agents=10, size=40, steps=400, envs=4),
}
TIME_CASES = ("small", "medium", "large", "any800", "any800fast")
MODES = {"flatland": ("env", "ours", "anchor"), "shapes": ("env", "ours", "anchor"), "many": ("env", "ours1", "ours")}
MEMORY_CASES = ("small", "any800")
MEMORY_STEPS = (250, 1000, 2000)
TIME_RATIO_GOAL = 0.10
FRAME_MS_GOAL = 2.0
MEMORY_GOAL_MB = 64.0
FLAT_MB = 8.0  # "flat in episode length": from the shortest to the longest episode, within this
PSNR_GOAL_DB = 40.0
MANY_HELPER_RATIO_GOAL = 2.0
ROUND_CASES = ("small", "between", "medium", "large", "any800")  # round_wall.CASES


# ---- child: one mode, one episode ------------------------------------------------------


def _import_everything() -> None:
    """Every mode imports the same modules, so RSS differences are not library code."""
    import av  # noqa: F401
    import gymnasium.wrappers  # noqa: F401
    import moviepy.video.io.ImageSequenceClip  # noqa: F401
    from flatland.envs.step_utils.states import TrainState  # noqa: F401
    from flatland.utils.rendertools import RenderTool  # noqa: F401

    import eval_recorder.encoding  # noqa: F401
    import eval_recorder.flatland.rendering  # noqa: F401
    import eval_recorder.overlay  # noqa: F401
    import shapes_env  # noqa: F401


class _Timer:
    """Adds up the time spent inside ``with timer:`` blocks (the recording calls)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._start


def _make_rail_env(agents: int, size: int, seed: int):
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


def _flatland_label(rail_env, label_on: bool):
    """What the recorder burns into a Flatland frame (None: label off)."""
    if not label_on:
        return lambda: None
    from flatland.envs.step_utils.states import TrainState

    from eval_recorder.overlay import label_text

    def label() -> str:
        arrived = sum(agent.state == TrainState.DONE for agent in rail_env.agents)
        extra = f"arrived {arrived}/{rail_env.get_num_agents()}"
        return label_text(training_iteration=0, step=rail_env._elapsed_steps, extra=extra)

    return label


class _Given:
    """The frames as given to the encoder (yuv420p), kept in a file for the quality check."""

    def __init__(self, path: Path) -> None:
        self.path, self._file, self._shape, self._count = path, open(path, "wb"), None, 0

    def keep(self, yuv: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(yuv).tobytes())
        self._shape, self._count = yuv.shape, self._count + 1

    def frames(self):
        self._file.close()
        return np.memmap(self.path, np.uint8, "r", shape=(self._count, *self._shape))


class _FlatlandRecording:
    """One Flatland env recorded as the recorder records it: FrameRenderer -> add_yuv420p(label=)."""

    def __init__(self, rail_env, path: Path, label_on: bool, timer: _Timer, given: _Given | None) -> None:
        from eval_recorder.encoding import start_encoder_process
        from eval_recorder.flatland.rendering import FrameRenderer
        from eval_recorder.frames import DEFAULT_MAX_SIDE

        self.path, self._timer, self._given = path, timer, given
        with timer:
            start_encoder_process()  # as the recorder does when its env is made
            self._renderer = FrameRenderer(rail_env, max_side=DEFAULT_MAX_SIDE)
            self._label = _flatland_label(rail_env, label_on)
        self._encoder = None

    def start(self) -> None:
        from eval_recorder.encoding import StreamingEncoder

        with self._timer:
            self._renderer.new_episode()
            frame, text = self._renderer.render_yuv420p(), self._label()
            height, width = frame.shape[0] * 2 // 3, frame.shape[1]
            self._encoder = StreamingEncoder(self.path, width=width, height=height, fps=FPS)
            self._encoder.add_yuv420p(frame, label=text)
        self._keep(frame, text)

    def capture(self) -> None:
        with self._timer:
            frame, text = self._renderer.render_yuv420p(), self._label()
            self._encoder.add_yuv420p(frame, label=text)
        self._keep(frame, text)

    def finish(self) -> tuple[int, int, str]:
        with self._timer:
            frames = self._encoder.close()
        return self.path.stat().st_size, frames, f"{self._encoder.width}x{self._encoder.height}"

    def _keep(self, frame: np.ndarray, text: str | None) -> None:
        if self._given is not None:
            from eval_recorder.overlay import burn_label_yuv420p

            self._given.keep(frame if text is None else burn_label_yuv420p(frame, text))


def _shapes_label(label_on: bool, step: int, episode_return: float) -> str | None:
    from eval_recorder.overlay import label_text

    return label_text(training_iteration=0, step=step, extra=f"return {episode_return:.2f}") if label_on else None


def _keep_rgb(given: _Given | None, frame: np.ndarray, text: str | None) -> None:
    """Keep an RGB frame as given, converted to yuv420p as the encoder converts it."""
    if given is not None:
        import av

        from eval_recorder.overlay import burn_label

        labelled = frame if text is None else burn_label(frame, text)
        given.keep(av.VideoFrame.from_ndarray(labelled, format="rgb24").reformat(format="yuv420p").to_ndarray())


def _psnr(path: Path, given: np.ndarray) -> tuple[float, float]:
    """(lowest over frames, whole video) PSNR in dB between the decoded mp4 and the ``given`` frames."""
    import av

    errors = []
    with av.open(str(path)) as container:
        for decoded, expected in zip(container.decode(video=0), given, strict=True):
            errors.append(float(((decoded.to_ndarray(format="yuv420p").astype(np.float64) - expected) ** 2).mean()))

    def db(mse: float) -> float:
        return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))

    return db(max(errors)), db(sum(errors) / len(errors))


def _run(case: dict, mode: str, steps: int, seed: int, out_dir: Path, label_on: bool, given: _Given | None = None):
    """Run one mode; what it wrote and what the recording calls cost. Timed by the caller's region.
    ``given``: keep the frames as given to the encoder (the quality check's run, not timed)."""
    kind = case["kind"]
    result = dict(bytes=0, frames=0, resolution="-", in_calls_s=0.0)
    if kind in ("flatland", "many"):
        envs = case["prepared"]
        actions = [_actions(env.get_num_agents(), steps, seed + i) for i, env in enumerate(envs)]
        if mode == "anchor":
            written, resolution, frames = _anchor(RenderToolEnv(envs[0]), actions[0], seed, out_dir)
            return dict(result, bytes=written, frames=frames, resolution=resolution)
        recorded = {"env": 0, "ours": len(envs), "ours1": 1}[mode]
        timer = _Timer()
        recordings = [_FlatlandRecording(env, out_dir / f"ours{i}.mp4", label_on, timer, given if i == 0 else None)
                      for i, env in enumerate(envs[:recorded])]  # fmt: skip
        for i, env in enumerate(envs):
            _episode_reset(env, seed + i)
            if i < recorded:
                recordings[i].start()
        for step in range(steps):
            for i, env in enumerate(envs):
                env.step(actions[i][step])
                if i < recorded:
                    recordings[i].capture()
        finished = [recording.finish() for recording in recordings]
        if finished:
            result.update(bytes=sum(f[0] for f in finished), frames=sum(f[1] for f in finished),
                          resolution=finished[0][2], in_calls_s=timer.seconds)  # fmt: skip
        return result
    # a generic rgb_array env (any800)
    env = case["prepared"][0]
    if mode == "anchor":
        written, resolution, frames = _anchor(env, [step % 5 for step in range(1, steps + 1)], seed, out_dir)
        return dict(result, bytes=written, frames=frames, resolution=resolution)
    timer = _Timer()
    if mode == "ours":
        from eval_recorder.encoding import start_encoder_process

        with timer:
            start_encoder_process()  # as the recorder does when its env is made
    env.reset(seed=seed)
    frame = env.render()
    encoder, path, episode_return = None, out_dir / "ours0.mp4", 0.0
    if mode == "ours":
        from eval_recorder.encoding import StreamingEncoder

        with timer:
            height, width = frame.shape[:2]
            text = _shapes_label(label_on, 0, episode_return)
            encoder = StreamingEncoder(path, width=width, height=height, fps=FPS)
            encoder.add(frame, label=text)
        _keep_rgb(given, frame, text)
    for step in range(1, steps + 1):
        episode_return += env.step(step % 5)[1]
        frame = env.render()
        if encoder is not None:
            with timer:
                text = _shapes_label(label_on, step, episode_return)
                encoder.add(frame, label=text)
            _keep_rgb(given, frame, text)
    if encoder is not None:
        with timer:
            frames = encoder.close()
        result.update(bytes=path.stat().st_size, frames=frames, resolution=f"{encoder.width}x{encoder.height}",
                      in_calls_s=timer.seconds)  # fmt: skip
    return result


def _quality(case: dict, mode: str, steps: int, seed: int, out_dir: Path, label_on: bool) -> dict:
    """Record the episode once more (not timed), keeping the frames as given; compare the decoded video."""
    out_dir.mkdir()
    given = _Given(out_dir / "given.raw")
    _run(case, mode, steps, seed, out_dir, label_on, given)
    lowest, whole = _psnr(out_dir / "ours0.mp4", given.frames())
    return dict(psnr_lowest_db=lowest, psnr_db=whole)


def _anchor(env: gymnasium.Env, actions, seed: int, out_dir: Path) -> tuple[int, str, int]:
    from gymnasium.wrappers import RecordVideo

    recorder = RecordVideo(
        env, video_folder=str(out_dir), name_prefix="anchor", episode_trigger=lambda episode: True, fps=FPS,
        disable_logger=True,
    )  # fmt: skip
    recorder.reset(seed=seed)
    for action in actions:
        recorder.step(action)
    frames = len(recorder.recorded_frames)
    height, width = recorder.recorded_frames[0].shape[:2]
    recorder.close()  # the episode is cut at a fixed step count: close() writes the video
    return sum(path.stat().st_size for path in out_dir.glob("anchor*.mp4")), f"{width}x{height}", frames


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
        return np.ascontiguousarray(self._tool.get_image()[:, :, :3])


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(pid: int | str, field: str) -> float:
    return _status_mbs(pid, field)[0]


def _status_mbs(pid: int | str, *fields: str) -> list[float]:
    """The ``fields`` (kB) of /proc/PID/status in MB, read at once (0.0 for any not there)."""
    found = dict.fromkeys(fields, 0.0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = line.split(":", 1)[0]
            if name in found:
                found[name] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return [found[field] for field in fields]


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


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class _Helpers:
    """The high-water marks (VmHWM) of this process's helper processes (our encoder process,
    moviepy's ffmpeg), read every 20 ms and at the end; the peak is their sum. Also the CPU
    time they used (as last read: a helper that exits between two reads loses < 20 ms), and
    the most of their RSS that was pages of files (RssFile: their libraries' code and data).
    ``poll=False``: read once, at the end (for helpers that live until then: their high-water
    marks keep their peaks), with no thread taking the measured process's GIL meanwhile."""

    def __init__(self, poll: bool = True) -> None:
        import threading

        self._peaks: dict[int, float] = {}
        self._cpu: dict[int, float] = {}
        self._files: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if poll else None
        self._own_command = _command(os.getpid())

    def __enter__(self) -> "_Helpers":
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return sum(self._peaks.values())

    @property
    def file_mb(self) -> float:
        return sum(self._files.values())

    @property
    def processes(self) -> int:
        return len(self._peaks)

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def _sample(self) -> None:
        for pid in _descendants(os.getpid()):
            # A child between fork and exec still runs our command and shares our pages: skip it.
            if _command(pid) != self._own_command:
                peak, files = _status_mbs(pid, "VmHWM", "RssFile")  # one read of its status
                if peak:
                    self._peaks[pid] = max(self._peaks.get(pid, 0.0), peak)
                    self._cpu[pid] = max(self._cpu.get(pid, 0.0), _cpu_s(pid))
                    self._files[pid] = max(self._files.get(pid, 0.0), files)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def run_child(case_name: str, mode: str, steps: int, seed: int, label_on: bool, quality: bool) -> dict:
    """Run one mode of one case on one episode in this process; the measurements as a dict."""
    import gc

    _import_everything()
    case = dict(CASES[case_name])
    if case["kind"] == "shapes":
        from shapes_env import ShapesEnv

        case["prepared"] = [ShapesEnv(size=case["size"], field=case["field"])]
    else:
        envs = []
        for i in range(case.get("envs", 1)):
            rail_env = _make_rail_env(case["agents"], case["size"], seed + i)
            rail_env.reset(random_seed=seed + i)  # rails and schedule of the episode, outside the timed region
            rail_env._max_episode_steps = steps + 1  # a fixed-length episode: not truncated early
            envs.append(rail_env)
        case["prepared"] = envs
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        peak_reset = _reset_peak_rss()
        with _Helpers() as helpers:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = _run(case, mode, steps, seed, Path(tmp), label_on)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        peak = _peak_rss_mb()
        if quality and mode.startswith("ours"):  # after the measurements: not part of recording
            result.update(_quality(case, mode, steps, seed, Path(tmp) / "quality", label_on))
    return dict(
        result, mode=mode, wall_s=wall, process_peak_mb=peak, helper_peak_mb=helpers.peak_mb,
        helper_file_mb=helpers.file_mb,
        helper_processes=helpers.processes, peak_rss_mb=peak + helpers.peak_mb, peak_reset=peak_reset,
        process_cpu_s=cpu, helper_cpu_s=helpers.cpu_s,
    )  # fmt: skip


# ---- parent: alternate modes in subprocesses, report -------------------------------------


def _spawn(case: str, mode: str, steps: int, seed: int, label_on: bool, quality: bool) -> dict:
    command = [
        sys.executable, __file__, "--child", mode, "--case", case, "--steps", str(steps), "--seed", str(seed),
        *([] if label_on else ["--no-label"]), *(["--quality"] if quality else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} {mode} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(case: str, steps: int, repeats: int, modes, label_on: bool, quality: bool, seed: int = 1):
    """{mode: [result per repeat]}; repeat r uses seed+r for every mode, modes rotate order."""
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        order = list(modes[repeat % len(modes) :]) + list(modes[: repeat % len(modes)])
        for mode in order:
            result = _spawn(case, mode, steps, seed + repeat, label_on, quality and repeat == 0)
            results[mode].append(result)
            print(
                f"  {case} {steps} steps, repeat {repeat} {mode:6s} wall {result['wall_s']:7.2f} s"
                f"  peak RSS {result['peak_rss_mb']:6.0f} MB ({result['process_peak_mb']:.0f} + "
                f"{result['helper_peak_mb']:.0f})  bytes {result['bytes']:>10,d}",
                file=sys.stderr,
                flush=True,
            )
    return results


def _median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def _added(results: dict[str, list[dict]], mode: str, key: str) -> list[float]:
    """Per repeat, ``mode`` minus env-only on the same seeded episode."""
    return [r[key] - e[key] for r, e in zip(results[mode], results["env"])]


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Goals:
    """Collects PASS/FAIL lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[bool, str]] = []

    def check(self, met: bool, text: str) -> None:
        self.lines.append((met, text))
        print(f"{'PASS' if met else 'FAIL'}  {text}")

    def summary(self) -> int:
        """Print how many goals passed; the exit code (1 if any failed)."""
        failed = [text for met, text in self.lines if not met]
        print(f"\n{'ALL GOALS PASS' if not failed else f'{len(failed)} GOAL(S) FAIL'} "
              f"({len(self.lines)} checks; load average at the end: {_load()})")  # fmt: skip
        return 0 if not failed else 1


def _describe(name: str, steps: int | None = None) -> str:
    case = CASES[name]
    if case["kind"] == "shapes":
        text = f"generic rgb_array env, {case['size']}x{case['size']} frames"
    else:
        envs = f"{case['envs']} envs x " if case["kind"] == "many" else ""
        text = f"{envs}{case['agents']} agents, {case['size']}x{case['size']}"
    return text if steps is None else f"{text}, {steps} steps"


def _modes(name: str) -> tuple[str, ...]:
    case = CASES[name]
    return ("env", "ours") if case.get("info") else MODES[case["kind"]]


def report_case(name: str, results: dict[str, list[dict]], goals: Goals) -> dict:
    case = CASES[name]
    modes = _modes(name)
    repeats = len(results["env"])
    print(f"\n## {name}: {_describe(name, case['steps'])}, {repeats} repeats "
          "(medians; added = minus env-only on the same episode)")  # fmt: skip
    print("| mode | resolution | wall s | added s (min-max) | added ms per frame: wall / in calls / CPU process + "
          "helpers | peak RSS MB (process + helpers) | added MB | mp4 bytes |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for mode in modes:
        rows = results[mode]
        wall = _median(rows, "wall_s")
        process, helpers = _median(rows, "process_peak_mb"), _median(rows, "helper_peak_mb")
        if mode == "env":
            print(f"| env | - | {wall:.2f} | | | {process + helpers:.0f} ({process:.0f} + {helpers:.0f}) | | |")
            continue
        walls = _added(results, mode, "wall_s")
        frames = _median(rows, "frames")
        per_frame = statistics.median(w / r["frames"] * 1000 for w, r in zip(walls, rows))
        in_calls = statistics.median(r["in_calls_s"] / r["frames"] * 1000 for r in rows) if mode != "anchor" else None
        cpu = statistics.median(c / r["frames"] * 1000 for c, r in zip(_added(results, mode, "process_cpu_s"), rows))
        helper_cpu = statistics.median(r["helper_cpu_s"] / r["frames"] * 1000 for r in rows)
        added_mb = statistics.median(_added(results, mode, "peak_rss_mb"))
        summary[mode] = dict(added_s=statistics.median(walls), per_frame_ms=per_frame, in_calls_ms=in_calls,
                             added_mb=added_mb, helper_mb=helpers, frames=frames, helper_cpu_ms=helper_cpu,
                             helper_file_mb=_median(rows, "helper_file_mb"),
                             helper_processes=max(r["helper_processes"] for r in rows),
                             psnr=next(((r["psnr_lowest_db"], r["psnr_db"]) for r in rows if "psnr_db" in r), None))  # fmt: skip
        calls = f" / {'-' if in_calls is None else f'{in_calls:.2f}'} / {cpu:.2f} + {helper_cpu:.2f}"
        print(f"| {mode} | {rows[0]['resolution']} | {wall:.2f} "
              f"| {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | {per_frame:.2f}{calls} "
              f"| {process + helpers:.0f} ({process:.0f} + {helpers:.0f}) | {added_mb:.0f} "
              f"| {int(_median(rows, 'bytes')):,d} |")  # fmt: skip
    env_ms = _median(results["env"], "wall_s") / case["steps"] * 1000
    print(f"env-only: {env_ms:.2f} ms per step" + (" (step + render)" if case["kind"] == "shapes" else ""))
    if case["kind"] == "many":
        one, four = summary["ours1"], summary["ours"]
        ratio = four["helper_mb"] / one["helper_mb"] if one["helper_mb"] else float("inf")
        goals.check(four["helper_processes"] == 1 and ratio <= MANY_HELPER_RATIO_GOAL,
                    f"goal 3 [{name}]: 4 envs recorded at once by {four['helper_processes']} helper process, "
                    f"helper peak {four['helper_mb']:.0f} MB vs {one['helper_mb']:.0f} MB for one env "
                    f"(x{ratio:.2f}, goal <= x{MANY_HELPER_RATIO_GOAL:.0f}); recording adds {four['added_mb']:.0f} "
                    f"MB for 4 envs, {one['added_mb']:.0f} MB for one")  # fmt: skip
        return summary
    ours = summary["ours"]
    size = f"[{name} {ours_resolution(results)}]"
    frame_cost = (f"ours adds {ours['per_frame_ms']:.2f} ms per recorded frame on the stepping thread "
                  f"({ours['in_calls_ms']:.2f} ms inside the recording calls; env-only {env_ms:.2f} ms per step; "
                  f"the encoder process used {ours['helper_cpu_ms']:.2f} ms of CPU per frame)")  # fmt: skip
    if case.get("info"):
        print(f"INFO  {size}: {frame_cost}. An env that makes frames faster than the encoder process encodes "
              "them (on a 2-core machine, where both share the cores) waits for it; no goal.")  # fmt: skip
        return summary
    anchor = summary["anchor"]
    ratio = ours["added_s"] / anchor["added_s"]
    if case["kind"] == "flatland":
        goals.check(ratio <= TIME_RATIO_GOAL,
                    f"goal 1 time {size}: ours adds {ours['added_s']:.2f} s ({ours['per_frame_ms']:.2f} ms per "
                    f"frame), RecordVideo adds {anchor['added_s']:.2f} s; ratio {ratio:.3f} "
                    f"(goal <= {TIME_RATIO_GOAL})")  # fmt: skip
    else:
        goals.check(ours["per_frame_ms"] <= FRAME_MS_GOAL,
                    f"goal 1 time {size}: {frame_cost} (goal <= {FRAME_MS_GOAL:.0f} ms); ratio to RecordVideo "
                    f"{ratio:.3f}")  # fmt: skip
    goals.check(ours["added_mb"] <= MEMORY_GOAL_MB,
                f"goal 2 memory {size}: ours adds {ours['added_mb']:.0f} MB (process + helpers, "
                f"{_library_pages(ours['helper_file_mb'])}; RecordVideo adds {anchor['added_mb']:.0f} MB) "
                f"(goal <= {MEMORY_GOAL_MB:.0f} MB)")  # fmt: skip
    if ours["psnr"] is not None:
        lowest, whole = ours["psnr"]
        goals.check(lowest >= PSNR_GOAL_DB,
                    f"goal 2 quality {size}: decoded vs given (yuv420p), PSNR of the worst frame {lowest:.1f} dB, "
                    f"of the whole video {whole:.1f} dB (goal >= {PSNR_GOAL_DB:.0f} dB)")  # fmt: skip
    return summary


def _library_pages(file_mb: float) -> str:
    """What of the encoder process's RSS is its libraries' pages: shared, clean, and as many as the
    page cache lets the kernel map (up to ~10 MB more with the same code; README, Performance)."""
    return f"{file_mb:.0f} MB of it the encoder process's library pages"


def ours_resolution(results) -> str:
    return results["ours"][0]["resolution"]


def report_memory(name: str, per_steps: dict[int, dict[str, list[dict]]], goals: Goals) -> None:
    steps_list = sorted(per_steps)
    print(f"\n## memory: {_describe(name)}, peak RSS (process + helpers) added over "
          "env-only, by episode length (medians)")  # fmt: skip
    print("| steps | env MB | ours MB | ours − env MB (process + helpers) |")
    print("|---:|---:|---:|---:|")
    added, files = [], []
    for steps in steps_list:
        results = per_steps[steps]
        ours = statistics.median(_added(results, "ours", "peak_rss_mb"))
        process = statistics.median(_added(results, "ours", "process_peak_mb"))
        helpers = statistics.median(_added(results, "ours", "helper_peak_mb"))
        files.append(_median(results["ours"], "helper_file_mb"))
        added.append(ours)
        print(f"| {steps} | {_median(results['env'], 'peak_rss_mb'):.0f} | {_median(results['ours'], 'peak_rss_mb'):.0f} "
              f"| {ours:.0f} ({process:.0f} + {helpers:.0f}) |")  # fmt: skip
    growth = added[-1] - added[0]
    goals.check(max(added) <= MEMORY_GOAL_MB and abs(growth) <= FLAT_MB,
                f"goal 2 memory [{name}, {steps_list[0]}-{steps_list[-1]} steps]: ours adds at most "
                f"{max(added):.0f} MB ({_library_pages(files[added.index(max(added))])}; goal <= "
                f"{MEMORY_GOAL_MB:.0f}), changing by {growth:+.0f} MB from {steps_list[0]} to {steps_list[-1]} "
                f"steps (flat: within {FLAT_MB:.0f} MB)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(TIME_CASES), choices=list(TIME_CASES),
                        help="time cases to run (each: env, ours, RecordVideo)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="repeats per mode (medians are reported)")
    parser.add_argument("--memory-cases", nargs="*", default=list(MEMORY_CASES), choices=list(MEMORY_CASES),
                        help="cases of the memory sweep over episode lengths (none: skip it)")  # fmt: skip
    parser.add_argument("--memory-steps", nargs="*", type=int, default=list(MEMORY_STEPS),
                        help="episode lengths of the memory sweep (none: skip it)")  # fmt: skip
    parser.add_argument("--memory-repeats", type=int, default=1, help="repeats per mode in the memory sweep")
    parser.add_argument("--many-repeats", type=int, default=1, help="repeats of the 4-env case (0: skip it)")
    parser.add_argument("--no-label", action="store_true", help="ours without the burned-in label")
    parser.add_argument("--round-cases", nargs="*", default=None, choices=list(ROUND_CASES),
                        help="cases of the evaluation-round part (benchmarks/round_wall.py; default: all; "
                             "none: skip it)")  # fmt: skip
    parser.add_argument("--round-repeats", type=int, default=1, help="repeats per mode of the round part")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--quality", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    label_on = not args.no_label

    if args.child:
        print(json.dumps(run_child(args.case, args.child, args.steps, args.seed, label_on, args.quality)))
        return 0

    print(f"# recording benchmark ({os.cpu_count()} CPUs, python {sys.version.split()[0]}, load average {_load()}), "
          f"ours {'with' if label_on else 'WITHOUT'} the burned-in label")  # fmt: skip
    goals = Goals()
    for name in args.cases:
        case = CASES[name]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results = measure(name, case["steps"], args.repeats, _modes(name), label_on, quality=not case.get("info"))
        report_case(name, results, goals)
    if args.many_repeats:
        case = CASES["many"]
        print("running many ...", file=sys.stderr, flush=True)
        results = measure("many", case["steps"], args.many_repeats, MODES["many"], label_on, quality=False)
        report_case("many", results, goals)
    if args.memory_steps:
        for name in args.memory_cases:
            per_steps = {}
            for steps in args.memory_steps:
                print(f"running memory {name} {steps} steps ...", file=sys.stderr, flush=True)
                per_steps[steps] = measure(name, steps, args.memory_repeats, ("env", "ours"), label_on, quality=False)
            report_memory(name, per_steps, goals)
    if args.round_cases is None or args.round_cases:
        import round_wall

        round_wall.run(args.round_cases or list(round_wall.CASES), args.round_repeats, goals)
    return goals.summary()


if __name__ == "__main__":
    sys.exit(main())
