"""What recording costs a whole evaluation round: env-only vs. recording every episode vs.
keeping only the worst one, with PASS/FAIL against issue 19's goals (point 6; goals of point 4).

Usage (from the repo root, with the ``bench`` extra installed)::

    python benchmarks/round_wall.py                                # every case, 1 repeat (~15 min)
    python benchmarks/round_wall.py --repeats 3 --cases small any800   # ~11 min

benchmarks/recording.py runs it too (``--round-cases``, ``--round-repeats``).

A round = 10 episodes played back to back on one env in one process, as one eval runner
plays them, each to its end, with seeded random actions (the same in every mode; an agent
gets an action while it gets observations, as RLlib gives them). Each mode runs in its own
fresh subprocess; modes alternate within each repeat (the order rotates); medians are reported.

Flatland cases (flatland-rl's ``RayMultiAgentWrapper`` around the RailEnv, as the recorder
sees it in real runs; every episode on the same rails and timetable, reset with seed
seed+episode): small 10 trains on 40x40, between 20 on 50x50, medium 30 on 60x60, large 50 on
100x100. Episodes are whole, as an evaluation plays them: each ends when every train is done or
at the RailEnv's own cap on its steps (set from the timetable, so it differs between the
repeats' seeds 1, 2, 3: small 284/197/278 steps, between 325/340/340, medium 436/483/404, large
299/521/920; the random actions bring few trains home, so most episodes run to it). Until
2026-12-07 they were cut at 200/150/120/80 steps to keep a run short, which measured only the
start of each episode, when few trains have left (the steps then cost less), and spread each
episode's fixed costs (its reset's initial state, its record's packing, its video's hand-over)
over a quarter to a sixth of its steps; the report prints those per-episode costs on their own.

  env      the wrapped env only (the baseline).
  all      ``record_episodes(env, fps=10, max_side=800, overlay=True)``; the driver stores every
           episode's video and replay record into a fresh folder as it arrives
           (``VideoStore.store``: mp4, poster, record, sidecar, manifest line).
  worst1   the same with ``select="worst:1"``, as an eval runner records in a round with
           ``recording.select=worst:1``: the runner keeps each episode's train states and has
           the encoder helper draw, after the episode, only the episodes worst:1 may still choose
           (worse than every earlier one; the others carry their record only), waiting at the
           round's end (``pop_finished()``) for those still being drawn; the driver stores the
           video of the worst episode only (``selection.choose("worst:1")``: lowest completion,
           then return) and the other 9 episodes' replay records (``VideoStore.store_record``).
  anchor   (small) gymnasium's RecordVideo (moviepy) over flatland's RenderTool: a reference.

any800: benchmarks/shapes_env.py's env (800x800 ``rgb_array`` frames, ~6 ms a step and frame),
10 episodes of 150 steps (gymnasium's TimeLimit ends them). INFO only:

  env            step only.
  all            record_episodes: every episode rendered and encoded live on the stepping thread.
  worst1-live    the same; the driver stores the worst episode's video, the others' records.
  worst1-replay  what a recorder that skips frames could do: the bare env steps while an
                 ``EpisodeCapture`` keeps each episode's seed and actions; after the round the
                 worst episode is replayed from its record in the same process, rendered and
                 encoded (``StreamingEncoder``), and stored like worst1-live's.

The driver is a process of its own (``run_driver``), as in a real run: the runner hands it each
episode as it pops it (timed as the stepping thread's), and it stores them as they arrive.

Figures per mode: round wall (from before the first reset until the driver stored the round;
the wrapper and the driver are made before it, as a runner makes its env once, and the encoder
helper has loaded and encoded a frame, as an eval runner's probe has it do before any round), of it the
driver's tail (after the runner's last episode) and the driver's busy time,
env steps; stepping-thread cost = time inside the recording wrapper's reset / step /
pop_finished calls minus the time inside the wrapped env's reset / step (timed by a shim
around them), per env step (worst1-replay: the capture's calls), and of it the part in the
calls made once per episode (its reset, its last step, which finishes its record and video,
and handing it over), per episode: a cost the benchmark's capped episodes spread over fewer
steps than whole episodes would (the report prints the env's own cap on an episode's steps
beside the benchmark's); added MB = the process's
high-water mark (VmHWM, reset before the wrapper is made) plus its helper processes' (the
encoder process; moviepy's ffmpeg; not the driver's), minus env-only's: what recording adds
to an eval runner. The helpers' high-water marks are read once, when the round is stored (the
encoder helper lives on until then), not by a thread polling /proc in the runner's process:
such a thread takes the stepping thread's GIL, and more often the more helpers it reads (in a
small round it used 6 % of the round's wall in CPU with no helper to read and 14 % with the
driver and the encoder helper, which made every recording mode look slower than it is). Only
the anchor's ffmpeg processes, one per episode, are polled every 20 ms.

Goals (Flatland cases), each printed as PASS or FAIL with its figures: stepping-thread cost
of all <= 0.2 ms per step; round wall all / env <= 1.10 and worst1 / env <= 1.03; memory added
<= 64 MB (hard limit 96 MB: up to it counts as met, the figure is printed). Beside the ratios
an INFO line splits them: the recording's own time (stepping thread and driver's tail) as a
share of env-only's round, and the env's own ms per step in each mode, which moves between
rounds of the same episodes by more than the goals' margins on a noisy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # recording, shapes_env, as a script or a child

import recording  # noqa: E402
from recording import (  # noqa: E402
    Goals, RenderToolEnv, _actions, _descendants, _import_everything, _load, _make_rail_env, _median, _peak_rss_mb,
    _reset_peak_rss, _Timer,
)  # fmt: skip

EPISODES = 10
FPS = 10
MAX_SIDE = 800
RUN_ID = "bench"
KEEP_RAILS = {"regenerate_rail": False, "regenerate_schedule": False}
CASES = {
    # Flatland: steps None = whole episodes (the RailEnv's own cap)
    "small": dict(kind="flatland", agents=10, size=40, steps=None),
    "between": dict(kind="flatland", agents=20, size=50, steps=None),
    "medium": dict(kind="flatland", agents=30, size=60, steps=None),
    "large": dict(kind="flatland", agents=50, size=100, steps=None),
    "any800": dict(kind="shapes", size=800, field=640, steps=150),
}
MODES = {"flatland": ("env", "all", "worst1"), "shapes": ("env", "all", "worst1-live", "worst1-replay")}
ANCHOR_CASES = ("small",)
SELECT = {"all": "all", "worst1": "worst:1", "worst1-live": "worst:1", "worst1-replay": "worst:1"}
STEP_MS_GOAL = 0.2
ALL_RATIO_GOAL = 1.10
WORST_RATIO_GOAL = 1.03
MEMORY_GOAL_MB = 64.0
MEMORY_LIMIT_MB = 96.0


# ---- child: one mode, one round ---------------------------------------------------------


class _Helpers(recording._Helpers):
    """recording.py's sampler of helper processes, whose peak here is the most their high-water
    marks sum to among helpers alive together: the anchor starts one ffmpeg per episode, one
    after the other, which recording.py's sum over every helper seen would add up."""

    def __init__(self, poll: bool = True) -> None:
        super().__init__(poll)
        self._together = 0.0
        self.exclude: set[int] = set()  # processes that are not the eval runner's (the round's driver)

    @property
    def peak_mb(self) -> float:
        return self._together

    def _sample(self) -> None:
        super()._sample()
        for pid in list(self._peaks):
            if pid in self.exclude or b"\0--driver\0" in recording._command(pid):
                self._peaks.pop(pid, None)
        alive = set(_descendants(os.getpid()))
        self._together = max(self._together, sum(peak for pid, peak in self._peaks.items() if pid in alive))


class _Shim:
    """Adds up the time spent inside ``env``'s reset and step (instance attributes shadow
    the methods, so whoever holds ``env`` calls through the shim)."""

    def __init__(self, env, env_cap: int | None = None) -> None:
        self.seconds = 0.0
        self.env_cap = env_cap  # a RailEnv's own cap on an episode's steps (before the round's)
        for name in ("reset", "step"):
            setattr(env, name, self._timed(getattr(env, name)))

    def _timed(self, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


class _RoundTimer(_Timer):
    """A ``_Timer`` of the recording calls that also keeps, after each call, what it added
    beyond the env's own reset/step (``shim``'s seconds in it); ``episode_call()`` counts the
    last call's into ``per_episode_s``: the calls made once per episode (its reset, its last
    step, which finishes its record and video, and handing it over after it)."""

    def __init__(self, shim: _Shim) -> None:
        super().__init__()
        self._shim = shim
        self.last_s = self.per_episode_s = 0.0
        self.end_wait_s = 0.0  # of it, the last call: waiting at the round's end for the videos still being drawn

    def __enter__(self) -> None:
        self._inner = self._shim.seconds
        super().__enter__()

    def __exit__(self, *exc) -> None:
        before = self.seconds
        super().__exit__(*exc)
        self.last_s = self.seconds - before - (self._shim.seconds - self._inner)

    def episode_call(self) -> None:
        self.per_episode_s += self.last_s


def _make(case: dict, mode: str, seed: int, folder: Path):
    """(the env the round steps, the shim around the env it wraps, reset options, action rows
    per episode), all made outside the measurements."""
    from gymnasium.wrappers import RecordVideo, TimeLimit

    from eval_recorder.wrapper import record_episodes

    steps = case["steps"]
    if case["kind"] == "shapes":
        from shapes_env import ShapesEnv

        inner = TimeLimit(ShapesEnv(size=case["size"], field=case["field"]), max_episode_steps=steps)
        rows = [[int(a) for a in np.random.default_rng(seed + episode).integers(0, 5, size=steps)] for episode in range(EPISODES)]
        shim = _Shim(inner)
        recorded = mode in ("all", "worst1-live")
        return (record_episodes(inner, fps=FPS, max_side=MAX_SIDE, overlay=True) if recorded else inner), shim, None, rows
    from flatland.ml.ray.ray_multi_agent_rail_env import RayMultiAgentWrapper

    rail_env = _make_rail_env(case["agents"], case["size"], seed)
    rail_env.reset(random_seed=seed)  # the rails and timetable of every episode
    env_cap = rail_env._max_episode_steps  # the env's own cap on an episode's steps, reported
    if steps is None:
        steps = env_cap
    rail_env._max_episode_steps = min(rail_env._max_episode_steps, steps)  # kept by resets that keep the timetable
    key = int if mode == "anchor" else str  # RailEnv's train handles, RayMultiAgentWrapper's agent ids
    rows = [[{key(i): a for i, a in row.items()} for row in _actions(rail_env.get_num_agents(), steps, seed + episode)]
            for episode in range(EPISODES)]  # fmt: skip
    if mode == "anchor":
        shim = _Shim(rail_env, env_cap)
        recorder = RecordVideo(RenderToolEnv(rail_env), video_folder=str(folder), name_prefix="anchor",
                               episode_trigger=lambda episode: True, fps=FPS, disable_logger=True)  # fmt: skip
        return recorder, shim, None, rows
    inner = RayMultiAgentWrapper(rail_env)
    shim = _Shim(inner, env_cap)
    select = {"worst1": "worst:1"}.get(mode)  # the runner draws only the episodes worst:1 may choose
    return (inner if mode == "env" else record_episodes(inner, fps=FPS, max_side=MAX_SIDE, overlay=True,
                                                        select=select)), shim, KEEP_RAILS, rows


def _warm_up(env, seed: int, scratch: Path) -> None:
    """What an eval runner's probe does before its first round (``wrapper.probe``): the encoder
    helper has loaded PyAV and, for a source drawn beside the env, the drawing, and has encoded
    a frame. Flatland: one frame of the env as ``_make`` reset it, drawn by the helper (a probe
    would reset the env without the round's options); other envs: the probe itself."""
    from eval_recorder.encoding import StreamingEncoder

    source = env.frame_source
    if source.drawn_beside is None:
        if env.probe(seed=seed) is not None:
            raise RuntimeError(f"the env cannot record: {env.problem}")
        return
    width, height = source.frame_size()
    encoder = StreamingEncoder(scratch / "warm-up.mp4", width=width, height=height, fps=FPS,
                               drawing=(source.drawn_beside, source.scene()))
    encoder.add_state(source.state())
    encoder.close()
    (scratch / "warm-up.mp4").unlink()


def _done(terminated, truncated) -> bool:
    if isinstance(terminated, dict):
        return bool(terminated.get("__all__") or truncated.get("__all__"))
    return bool(terminated or truncated)


def _play(env, rows, seed: int, options, timer: _RoundTimer, recorded: bool, captures: list | None = None,
          deliver=None):
    """Play the round's episodes on ``env`` (its calls timed by ``timer``, which tells the calls
    made once per episode from the others); (env steps, the
    recorded episodes popped after each episode, each handed to ``deliver`` as it is popped,
    timed too, as an eval runner hands them to the driver). ``captures``: keep each episode's
    replay record (an EpisodeCapture's, its calls timed by ``timer`` too), return and steps in it."""
    from eval_recorder.episode_record import EpisodeCapture

    steps, finished = 0, []

    def popped(episodes: list) -> list:
        if deliver is not None:
            deliver(episodes)
        return episodes

    # A call's results are kept whole inside the timed block and taken apart after it, so the
    # previous step's (observations, infos ...: 50 trains' tree observations) are freed outside
    # it, as they are outside the timer in env-only: freed inside, they were ~40 us per step at
    # 50 trains counted as the recording's (until 2026-12-07).
    for episode, actions in enumerate(rows):
        with timer:
            result = env.reset(seed=seed + episode, options=options)
            capture = EpisodeCapture(seed=seed + episode) if captures is not None else None
        timer.episode_call()
        observations, _ = result
        episode_return, episode_steps = 0.0, 0
        for row in actions:
            action = {agent: row[agent] for agent in observations} if isinstance(row, dict) else row
            with timer:
                result = env.step(action)
            observations, reward, terminated, truncated, _ = result
            episode_steps += 1
            if capture is not None:
                episode_return += reward
                with timer:
                    capture.step(action, reward, terminated, truncated)
            if _done(terminated, truncated):
                if capture is None:
                    timer.episode_call()  # the step that finished the episode
                break
        steps += episode_steps
        if recorded:
            with timer:
                finished += popped(env.pop_finished(wait=False))  # as the eval runner hands them over
            timer.episode_call()
        if capture is not None:
            with timer:
                captures.append((capture.finish().to_bytes(), episode_return, episode_steps))
            timer.episode_call()
    if recorded:
        with timer:
            finished += popped(env.pop_finished())  # the end of the runner's sample(): videos still being drawn
        timer.episode_call()
        timer.end_wait_s = timer.last_s
    return steps, finished


def _replay_worst(env, captures: list, folder: Path) -> tuple[list, float]:
    """worst1-replay's runner part: the round's episodes as RecordedEpisodes (records, no
    video), the worst one's video made by replaying it from its record; and the replay's seconds."""
    from eval_recorder.encoding import StreamingEncoder
    from eval_recorder.episode_record import EpisodeRecord
    from eval_recorder.naming import env_label
    from eval_recorder.overlay import label_text
    from eval_recorder.recorder import RecordedEpisode
    from eval_recorder.selection import EpisodeFacts, choose

    start = time.perf_counter()
    episodes = []
    for index, (record, episode_return, steps) in enumerate(captures):
        episodes.append(RecordedEpisode(
            mp4=b"", env_label=env_label("ShapesEnv"), env_seed=EpisodeRecord.from_bytes(record).seed,
            episode_length=steps, episode_return=episode_return, frames=0, fps=FPS, width=0, height=0,
            runner_index=0, runner_host=socket.gethostname(), runner_pid=os.getpid(), runner_sequence=index,
            record=record, record_kind="episode",
        ))  # fmt: skip
    facts = [EpisodeFacts(index=i, episode_return=e.episode_return) for i, e in enumerate(episodes)]
    (worst,) = choose("worst:1", facts)
    record = EpisodeRecord.from_bytes(episodes[worst.index].record)
    env.reset(seed=record.seed, options=record.options)
    frame, episode_return = env.render(), 0.0
    height, width = frame.shape[:2]
    encoder = StreamingEncoder(folder / "replay.mp4", width=width, height=height, fps=FPS)
    encoder.add(frame, label=label_text(training_iteration=None, step=0, extra=f"return {episode_return:.1f}"))
    for step in range(1, record.steps + 1):
        episode_return += env.step(record.actions_at(step))[1]
        encoder.add(env.render(), label=label_text(training_iteration=None, step=step,
                                                   extra=f"return {episode_return:.1f}"))  # fmt: skip
    frames = encoder.close()
    episodes[worst.index] = dataclasses.replace(episodes[worst.index], mp4=encoder.path.read_bytes(), frames=frames,
                                                width=width, height=height)  # fmt: skip
    return episodes, time.perf_counter() - start


def run_driver(select: str, folder: Path) -> dict:
    """The driver's part, in a process of its own as in a real run: the episodes the runner
    hands over (pickled on stdin, each as it is handed over) are taken in by a reader thread,
    as RLlib's driver takes them from its inbox, and stored as the session stores them: with
    select=all each video (mp4, poster, record, sidecar, manifest line) as it arrives; else
    the record of an episode its runner drew no video of as it arrives, and when the round is
    in (stdin ends), the chosen episodes' videos (with why) and the other drawn ones' records."""
    import pickle
    import queue
    import threading

    from eval_recorder.naming import video_stem
    from eval_recorder.selection import EpisodeFacts, choose
    from eval_recorder.tags import TrainingTag
    from eval_recorder.video_store import VideoStore

    store, tag = VideoStore(folder, run_id=RUN_ID), TrainingTag(training_iteration=1, env_steps=0)
    _warm_up_driver()
    print("ready", flush=True)
    arrived: queue.Queue = queue.Queue()

    def read() -> None:
        stdin = sys.stdin.buffer
        while len(head := stdin.read(8)) == 8:
            arrived.put(pickle.loads(stdin.read(int.from_bytes(head, "little"))))
        arrived.put(None)

    threading.Thread(target=read, daemon=True).start()

    def where(index: int, episode) -> dict:
        return dict(episode=episode, tag=tag, evaluation_round=1, episode_index=index, checkpoint=None,
                    stem=video_stem(env=episode.env_label, training_iteration=1, evaluation_round=1,
                                    episode_index=index, run_id=RUN_ID))  # fmt: skip

    held, busy, videos = [], 0.0, 0
    while (episode := arrived.get()) is not None:
        start, index = time.perf_counter(), len(held)
        if select == "all":
            store.store(**where(index, episode), chosen=None)
            videos += 1
        elif not episode.mp4:
            store.store_record(**where(index, episode))
        held.append(episode)
        busy += time.perf_counter() - start
    start = time.perf_counter()
    if select != "all":
        facts = [EpisodeFacts(index=index, episode_return=episode.episode_return,
                              completion=episode.facts.get("completion"),
                              agents_arrived=episode.facts.get("agents_arrived"),
                              num_agents=episode.facts.get("num_agents")) for index, episode in enumerate(held)]  # fmt: skip
        chosen = {found.index: found.reason for found in choose(select, facts)}
        for index, episode in enumerate(held):
            if index in chosen and episode.mp4:
                store.store(**where(index, episode), chosen=chosen[index])
                videos += 1
            elif episode.mp4:
                store.store_record(**where(index, episode))
    busy += time.perf_counter() - start
    return dict(videos=videos, busy_s=busy, peak_mb=_peak_rss_mb())


def _warm_up_driver() -> None:
    """Import what storing an episode uses, as a real driver has long before its first round
    ends (the poster's decoder and JPEG encoder, the Flatland record's writer, and flatland's
    RailEnv, which a driver training on Flatland has imported to make its env)."""
    import av.video  # noqa: F401
    import flatland.envs.rail_env  # noqa: F401
    import PIL.Image  # noqa: F401

    import eval_recorder.flatland.frames  # noqa: F401
    import eval_recorder.flatland.trajectory  # noqa: F401
    import eval_recorder.poster  # noqa: F401


class _Driver:
    """The driver process of a round (``run_driver``), started and ready before the round."""

    def __init__(self, select: str, folder: Path) -> None:
        command = [sys.executable, __file__, "--driver", select, "--folder", str(folder)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def wait_ready(self) -> None:
        if self.process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the round's driver process did not start")

    def send(self, episodes: list) -> None:
        import pickle

        for episode in episodes:
            data = pickle.dumps(episode, protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.write(len(data).to_bytes(8, "little") + data)
        self.process.stdin.flush()

    def finish(self) -> dict:
        """The round is over: the driver's figures as soon as it says it stored everything
        (its line; a real driver goes on, so its interpreter's exit is not the round's)."""
        self.process.stdin.close()
        line = self.process.stdout.readline()
        if not line.strip():
            self.process.wait()
            raise RuntimeError("the round's driver process failed")
        return json.loads(line)

    def close(self) -> None:
        if self.process.wait() != 0:
            raise RuntimeError("the round's driver process failed")


def run_child(case_name: str, mode: str, seed: int) -> dict:
    """Play one round of ``mode`` in this process; its measurements as a dict."""
    _import_everything()
    import flatland.ml.ray.ray_multi_agent_rail_env  # noqa: F401

    import eval_recorder.video_store  # noqa: F401
    import eval_recorder.wrapper  # noqa: F401

    case = CASES[case_name]
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        folder, scratch = Path(tmp) / "videos", Path(tmp) / "scratch"
        folder.mkdir(), scratch.mkdir()
        gc.collect()
        peak_reset = _reset_peak_rss()
        # Polled only where helpers come and go (the anchor's ffmpeg per episode): a polling
        # thread here takes the stepping thread's GIL (see the module's docstring).
        with _Helpers(poll=mode == "anchor") as helpers:
            env, shim, options, rows = _make(case, mode, seed, scratch)
            if mode in SELECT and mode != "worst1-replay":
                _warm_up(env, seed, scratch)
            timer, captures = _RoundTimer(shim), ([] if mode == "worst1-replay" else None)
            driver = _Driver(SELECT[mode], folder) if mode in SELECT else None
            if driver is not None:
                helpers.exclude.add(driver.process.pid)  # the driver's memory is not the runner's (from its start)
                driver.wait_ready()
            start = time.perf_counter()
            steps, _ = _play(env, rows, seed, options, timer, mode in SELECT and captures is None, captures,
                             deliver=driver.send if driver is not None and captures is None else None)  # fmt: skip
            if mode == "anchor":
                with timer:
                    env.close()  # RecordVideo writes the last episode's video
                timer.episode_call()
            inner_s, played, replay_s = shim.seconds, time.perf_counter(), 0.0
            if captures is not None:
                finished, replay_s = _replay_worst(env, captures, scratch)
                driver.send(finished)
            stored = driver.finish() if driver is not None else dict(videos=0, busy_s=0.0, peak_mb=0.0)
            end = time.perf_counter()
            if driver is not None:
                driver.close()
        peak = _peak_rss_mb()
        videos = stored["videos"] + len(list(scratch.glob("anchor*.mp4")))
    return dict(mode=mode, wall_s=end - start, driver_s=end - played - replay_s, replay_s=replay_s, steps=steps,
                driver_busy_s=stored["busy_s"], driver_peak_mb=stored["peak_mb"],
                stepping_s=timer.seconds - inner_s, per_episode_s=timer.per_episode_s, episodes=len(rows),
                end_wait_s=timer.end_wait_s,
                env_cap=shim.env_cap,
                inner_s=inner_s, videos=videos,
                process_peak_mb=peak, helper_peak_mb=helpers.peak_mb, peak_rss_mb=peak + helpers.peak_mb,
                peak_reset=peak_reset)  # fmt: skip


# ---- parent: alternate modes in subprocesses, report -------------------------------------


def _spawn(case: str, mode: str, seed: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--case", case, "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"round {case} {mode} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _modes(case: str) -> tuple[str, ...]:
    return MODES[CASES[case]["kind"]] + (("anchor",) if case in ANCHOR_CASES else ())


def measure(case: str, repeats: int, seed: int = 1) -> dict[str, list[dict]]:
    """{mode: [result per repeat]}; repeat r plays the same round (seed+r) in every mode."""
    modes = _modes(case)
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode in modes[repeat % len(modes) :] + modes[: repeat % len(modes)]:
            result = _spawn(case, mode, seed + repeat)
            results[mode].append(result)
            print(f"  round {case}, repeat {repeat} {mode:13s} wall {result['wall_s']:6.2f} s, {result['steps']} "
                  f"steps, peak RSS {result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
    return results


def _cap(case: dict, env: list[dict]) -> str:
    """The round's cap on an episode's steps, as the report says it (whole episodes: each repeat's)."""
    if case["steps"] is not None:
        return str(case["steps"])
    return "/".join(str(r["env_cap"]) for r in env) + " (whole episodes: the env's own cap in each repeat)"


def report_case(name: str, results: dict[str, list[dict]], goals: Goals) -> None:
    case, env = CASES[name], results["env"]
    env_wall = _median(env, "wall_s")
    what = f"{case['agents']} trains, {case['size']}x{case['size']}" if case["kind"] == "flatland" else \
        f"generic rgb_array env, {case['size']}x{case['size']} frames"
    print(f"\n## round {name}: {what}, {EPISODES} episodes of at most {_cap(case, env)} steps, "
          f"{len(env)} repeats (medians; added = minus env-only on the same round)")  # fmt: skip
    print("| mode | steps | round wall s | ratio to env (range over the repeats) | of it the driver's tail s "
          "(its busy s) | stepping-thread ms per step (in the steps + ms per episode) | added MB (process + helpers) "
          "| videos |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    figures = {}
    for mode, rows in results.items():
        ratios = [r["wall_s"] / e["wall_s"] for r, e in zip(rows, env)]
        ratio = statistics.median(ratios)
        step_ms = statistics.median(r["stepping_s"] / r["steps"] * 1000 for r in rows)
        in_steps_ms = statistics.median((r["stepping_s"] - r["per_episode_s"]) / r["steps"] * 1000 for r in rows)
        episode_ms = statistics.median(r["per_episode_s"] / r["episodes"] * 1000 for r in rows)
        end_wait_s = statistics.median(r["end_wait_s"] for r in rows)
        # the recording's own share of the round (its stepping-thread time and the driver's tail)
        own = statistics.median((r["stepping_s"] + r["driver_s"]) / e["wall_s"] for r, e in zip(rows, env))
        added = [r["peak_rss_mb"] - e["peak_rss_mb"] for r, e in zip(rows, env)]
        process = statistics.median(r["process_peak_mb"] - e["process_peak_mb"] for r, e in zip(rows, env))
        figures[mode] = dict(ratio=ratio, step_ms=step_ms, in_steps_ms=in_steps_ms, episode_ms=episode_ms,
                             end_wait_s=end_wait_s, own=own,
                             env_ms=_median(rows, "inner_s") / _median(rows, "steps") * 1000,
                             added_mb=statistics.median(added), process_mb=process,
                             helper_mb=_median(rows, "helper_peak_mb"), wall=_median(rows, "wall_s"),
                             driver=_median(rows, "driver_s"), replay=_median(rows, "replay_s"),
                             busy=_median(rows, "driver_busy_s"))  # fmt: skip
        f = figures[mode]
        spread = f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ""
        cells = ("-", "-", "-") if mode == "env" else \
            (f"{ratio:.3f}{spread}", f"{step_ms:.3f} ({in_steps_ms:.3f} + {episode_ms:.1f})",
             f"{f['added_mb']:.0f} ({process:+.0f} + {f['helper_mb']:.0f})")
        driver = "-" if mode in ("env", "anchor") else f"{f['driver']:.2f} ({f['busy']:.2f})" + \
            (f" (+ replay {f['replay']:.2f})" if mode == "worst1-replay" else "")
        print(f"| {mode} | {int(_median(rows, 'steps'))} | {f['wall']:.2f} | {cells[0]} | {driver} | {cells[1]} "
              f"| {cells[2]} | {int(_median(rows, 'videos'))} |")  # fmt: skip
    env_ms = _median(env, "inner_s") / _median(env, "steps") * 1000
    print(f"env-only: {env_ms:.2f} ms per step inside the env's reset/step; {env_wall:.2f} s per round")
    if case["kind"] == "shapes":
        live, replay = figures["worst1-live"], figures["worst1-replay"]
        better = "live" if live["ratio"] < replay["ratio"] else "replay"
        print(f"INFO {name}: narrower select: live {live['ratio']:.3f} vs replay {replay['ratio']:.3f} (round wall "
              f"over env-only: {live['wall']:.2f} s vs {replay['wall']:.2f} s, env-only {env_wall:.2f} s; the "
              f"replay of the worst episode took {replay['replay']:.2f} s after the round; stepping thread "
              f"{live['step_ms']:.3f} vs {replay['step_ms']:.3f} ms per step), better: {better}")  # fmt: skip
        return
    size = f"[round {name}]"
    every, worst = figures["all"], figures["worst1"]
    goals.check(every["step_ms"] <= STEP_MS_GOAL,
                f"stepping thread {size}: all spends {every['step_ms']:.3f} ms per step inside the recording "
                f"wrapper beyond the env's own reset/step ({env_ms:.2f} ms per step); of it {every['in_steps_ms']:.3f} "
                f"ms per step in the steps and {every['episode_ms']:.1f} ms per episode in its reset, last step and "
                f"hand-over (of all these, {every['end_wait_s'] * 1000:.0f} ms waiting at the round's end for the "
                f"last video), spread over this round's episodes of at most {_cap(case, env)} steps "
                f"(goal <= {STEP_MS_GOAL} ms)")  # fmt: skip
    goals.check(every["ratio"] <= ALL_RATIO_GOAL,
                f"round wall {size}: all / env = {every['ratio']:.3f} ({every['wall']:.2f} s, of it the driver's tail "
                f"{every['driver']:.2f} s, vs {env_wall:.2f} s) (goal <= {ALL_RATIO_GOAL:.2f})")  # fmt: skip
    goals.check(worst["ratio"] <= WORST_RATIO_GOAL,
                f"round wall {size}: worst1 / env = {worst['ratio']:.3f} ({worst['wall']:.2f} s, of it the driver's tail "
                f"{worst['driver']:.2f} s, vs {env_wall:.2f} s) (goal <= {WORST_RATIO_GOAL:.2f})")  # fmt: skip
    print(f"INFO  round wall {size}: of env-only's round wall, the recording's own time (its stepping thread and "
          f"the driver's tail) is {every['own']:.1%} with all and {worst['own']:.1%} with worst1; the rest of "
          f"each ratio is the env's own reset/step, {every['env_ms']:.2f} and {worst['env_ms']:.2f} ms per step "
          f"against env-only's {env_ms:.2f} (the helper and the driver on the other core, and the machine's own "
          "drift between rounds)")  # fmt: skip
    most = max(("all", "worst1"), key=lambda mode: figures[mode]["added_mb"])
    top = figures[most]
    goals.check(top["added_mb"] <= MEMORY_LIMIT_MB,
                f"memory {size}: recording adds {top['added_mb']:.0f} MB per eval runner (process + helpers: "
                f"{top['process_mb']:+.0f} + {top['helper_mb']:.0f}, mode {most}; all {every['added_mb']:.0f}, "
                f"worst1 {worst['added_mb']:.0f}) (goal <= {MEMORY_GOAL_MB:.0f} MB; hard limit "
                f"{MEMORY_LIMIT_MB:.0f} MB)")  # fmt: skip


def run(cases, repeats: int, goals: Goals) -> None:
    """Measure and report ``cases`` (their checks go into ``goals``)."""
    for name in cases:
        print(f"running round {name} ...", file=sys.stderr, flush=True)
        report_case(name, measure(name, repeats), goals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES), help="round cases to run")
    parser.add_argument("--repeats", type=int, default=1, help="repeats per mode (medians are reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--driver", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        print(json.dumps(run_driver(args.driver, Path(args.folder))), flush=True)
        return 0
    if args.child:
        print(json.dumps(run_child(args.case, args.child, args.seed)))
        return 0
    print(f"# round-wall benchmark ({os.cpu_count()} CPUs, python {sys.version.split()[0]}, load average {_load()})")
    goals = Goals()
    run(args.cases, args.repeats, goals)
    return goals.summary()


if __name__ == "__main__":
    sys.exit(main())
