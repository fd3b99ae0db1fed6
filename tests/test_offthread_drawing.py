"""Flatland frames are drawn beside the env, not on its stepping thread: the stepping thread
packs each recorded step's train state (``flatland.scene.state_of``), the encoder helper
process draws it with the renderer the stepping thread used before and encodes it. The
videos are the same mp4 bytes as drawing on the stepping thread (which tests/test_rendering.py
pins to flatland's RenderTool pixel for pixel), with malfunctions, trains of several speeds,
trains that arrive and leave the map, the label, ``frame_every`` and scaled-down frames.
A drawing that fails in the helper costs that episode's video only, with its cause.
Real envs, real helper processes, real mp4 files (no Ray)."""

from __future__ import annotations

import subprocess
import sys
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from flatland.envs.step_utils.states import TrainState

from eval_recorder import encoding, record_episodes
from eval_recorder.encoding import encoder_process_ids
from eval_recorder.flatland.envs import make_env
from eval_recorder.flatland.frames import FlatlandFrames
from eval_recorder.flatland.rendering import FrameRenderer
from eval_recorder.flatland.scene import SceneDrawing, TrainRows, scene_of, state_of, train_major
from eval_recorder.flatland.trajectory import FlatlandEpisode
from eval_recorder.runner_round import this_process

BROKEN_DOWN = {"n_agents": 5, "x_dim": 30, "y_dim": 30, "n_cities": 2, "max_rail_pairs_in_city": 2,
               "max_rails_between_cities": 2, "malfunction_interval": 6, "seed": 4}


DRAWN_BESIDE = FlatlandFrames.drawn_beside  # the drawing's "module:Class" (recorded() may set it to None)


def play(env, seed: int, steps: int | None = None) -> int:
    """One episode of the multi-agent ``env`` from ``seed``, seeded random actions; its steps."""
    observations, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    count = 0
    while steps is None or count < steps:
        observations, _, terminated, truncated, _ = env.step({agent: int(rng.integers(5)) for agent in observations})
        count += 1
        if terminated.get("__all__") or truncated.get("__all__"):
            break
    return count


def recorded(monkeypatch, *, beside: bool, seed: int, **options):
    """The RecordedEpisode of one episode from ``seed``, drawn beside the env or on its stepping thread."""
    monkeypatch.setattr(FlatlandFrames, "drawn_beside", DRAWN_BESIDE if beside else None)
    this_process().start(None)
    env = record_episodes(make_env(BROKEN_DOWN), **options)
    play(env, seed)
    (episode,) = env.pop_finished()
    assert env.pop_dropped() == []
    return episode, env.frame_source


@pytest.mark.parametrize("options", [dict(), dict(frame_every=3, overlay=False), dict(max_side=120)],
                         ids=["label-every-step", "every-3rd-no-label", "scaled-down"])
def test_videos_drawn_beside_the_env_are_the_bytes_drawn_on_its_stepping_thread(monkeypatch, options):
    beside, source = recorded(monkeypatch, beside=True, seed=11, **options)
    assert source._renderer is None  # nothing was drawn in this process
    assert beside.facts["num_agents"] == 5
    inline, _ = recorded(monkeypatch, beside=False, seed=11, **options)
    assert (beside.frames, beside.width, beside.height) == (inline.frames, inline.width, inline.height)
    assert beside.mp4 == inline.mp4


def test_states_go_to_the_helper_a_message_of_them_at_a_time_or_fewer_when_a_message_is_full(monkeypatch):
    """The stepping thread sends the helper STATES_PER_MESSAGE states a message (each send
    wakes the helper), fewer when the next state would not fit in a message (many trains):
    the same mp4 bytes either way, and every state reaches the helper."""
    inline, _ = recorded(monkeypatch, beside=False, seed=11)
    sent: list[int] = []
    send = encoding.StreamingEncoder._send_states

    def counted(self) -> None:
        sent.append(len(self._queued))
        send(self)

    monkeypatch.setattr(encoding.StreamingEncoder, "_send_states", counted)
    episode, _ = recorded(monkeypatch, beside=True, seed=11)
    frames = episode.episode_length + 1
    assert episode.mp4 == inline.mp4
    full, rest = divmod(frames, encoding.STATES_PER_MESSAGE)
    assert sent == [encoding.STATES_PER_MESSAGE] * full + ([rest] if rest else [])
    # 5 trains: a state of 100 bytes, about 140 with its label and sizes; the helper's
    # replies are a few bytes, which a smaller buffer takes in as well
    sent.clear()
    monkeypatch.setattr(encoding, "MESSAGE_BYTES", 400)
    episode, _ = recorded(monkeypatch, beside=True, seed=11)
    assert episode.mp4 == inline.mp4
    assert sum(sent) == frames and max(sent) == 2 and len(sent) >= frames // 2


def test_the_drawing_helper_loads_numpy_without_openssl(monkeypatch):
    """The helper is paid for on every eval runner: drawing loads numpy, and numpy hashlib,
    whose OpenSSL backend (libcrypto, 3.4 MB of the helper's RSS) it does not need."""
    episode, _ = recorded(monkeypatch, beside=True, seed=11)
    assert episode.frames == episode.episode_length + 1
    (helper,) = encoder_process_ids()
    with open(f"/proc/{helper}/maps") as maps:
        libraries = {line.split()[-1].rsplit("/", 1)[-1].split(".")[0] for line in maps if ".so" in line}
    assert "_multiarray_umath" in libraries  # numpy drew the frames
    assert [name for name in libraries if name.startswith(("libcrypto", "libssl", "_hashlib"))] == []


def test_the_drawing_helper_draws_without_importing_flatland(tmp_path):
    """flatland's package ``__init__`` reads its installed metadata (importlib.metadata, email:
    1.7 MB of the helper's RSS and 58 modules): the helper's drawing imports the renderer only,
    which finds flatland's tile images and turns its rails without it."""
    env = make_env(BROKEN_DOWN)
    env.reset(seed=5)
    rail_env = env.wrap()
    (tmp_path / "scene").write_bytes(scene_of(rail_env, max_side=800))
    (tmp_path / "state").write_bytes(state_of(rail_env))
    program = (
        "import importlib, sys, pathlib, zlib\n"
        "folder = pathlib.Path(sys.argv[1])\n"
        # as encoder_process._drawing makes the helper's drawing
        "drawing = importlib.import_module('eval_recorder.flatland.scene').SceneDrawing((folder / 'scene').read_bytes())\n"
        "frame = drawing.frame((folder / 'state').read_bytes())\n"
        "print(zlib.crc32(frame), sorted(m for m in sys.modules if m.split('.')[0] in ('flatland', 'email')"
        " or m.startswith('importlib.metadata')))\n"
    )
    done = subprocess.run([sys.executable, "-P", "-c", program, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=True)
    renderer = FrameRenderer(rail_env)
    renderer.new_episode()
    assert done.stdout.strip() == f"{zlib.crc32(renderer.render_yuv420p())} []"  # the renderer's frame, without them


def test_the_renderer_turns_rails_and_names_the_diamond_crossing_as_flatland_does():
    from flatland.envs.grid.rail_env_grid import RailEnvTransitions, RailEnvTransitionsEnum
    import importlib_resources

    from eval_recorder.flatland.rendering import _DIAMOND_CROSSING, _flatland_images, _rotated

    transitions = RailEnvTransitions()
    differ = [(value, rotation) for value in range(1 << 16) for rotation in (0, 90, 180, 270)
              if _rotated(value, rotation) != transitions.rotate_transition(value, rotation)]
    assert differ == []
    assert _DIAMOND_CROSSING == RailEnvTransitionsEnum.diamond_crossing
    assert str(_flatland_images()) == str(importlib_resources.files("flatland.png"))


def test_the_episode_had_what_the_drawing_must_carry_over():
    """The episode above breaks trains down, runs several speeds and takes trains on and off
    the map; each state the stepping thread packs poses a scene whose frame is the renderer's."""
    env = make_env(BROKEN_DOWN)
    env.reset(seed=11)
    rail_env = env.wrap()
    drawing = SceneDrawing(scene_of(rail_env, max_side=800))
    renderer = FrameRenderer(rail_env)
    renderer.new_episode()
    rng = np.random.default_rng(11)
    broken, speeds, on_map = 0, set(), set()
    for _ in range(200):
        _, _, terminated, _, _ = env.step({agent: int(rng.integers(5)) for agent in env.get_agent_ids()})
        agents = rail_env.agents
        broken += sum(agent.malfunction_handler.malfunction_down_counter > 0 for agent in agents)
        speeds |= {agent.speed_counter.speed for agent in agents}
        on_map.add(sum((agent.current_configuration or (None,))[0] is not None for agent in agents))
        assert np.array_equal(drawing.frame(state_of(rail_env)), renderer.render_yuv420p())
        if terminated["__all__"]:
            break
    assert broken > 0 and len(speeds) > 1 and len(on_map) > 2


def _public_row(agent, fractions: list) -> list:
    """A train's row (scene._FIELDS' order) as flatland's public properties give it, its speed
    and distance as the Fractions ``fractions`` holds at the row's indices."""
    if agent is None:
        return [-1] * 10
    current, old = agent.current_configuration, agent.old_configuration
    if current is None or current[0] is None:
        cells = [-1] * 6
    else:
        old_cell = [-1] * 3 if old is None or old[0] is None else \
            [*old[0], -1 if old[1] is None else old[1]]
        cells = [*current[0], current[1], *old_cell]
    return [*cells, agent.malfunction_handler.malfunction_down_counter, int(agent.state),
            agent.speed_counter.speed, agent.speed_counter.distance]


def test_a_step_s_train_rows_say_of_each_train_what_flatland_s_properties_say():
    """TrainRows reads each field of every train in one pass (attribute getters mapped over the
    trains) and packs them field by field; train_major puts them train by train: the rows are
    what flatland's public properties say of each train, step after step, with malfunctions,
    several speeds, trains on and off the map and a train of None (all -1)."""
    env = make_env(BROKEN_DOWN)
    env.reset(seed=11)
    rail_env = env.wrap()
    agents = [*rail_env.agents, None]
    rows = TrainRows(SimpleNamespace(agents=agents))
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(200):
        _, _, terminated, _, _ = env.step({agent: int(rng.integers(5)) for agent in env.get_agent_ids()})
        row = train_major(np.frombuffer(rows.row(), dtype="<i2"), len(agents)).tolist()
        packed = [[*fields[:8], *(rows.fractions[index] if index >= 0 else -1 for index in fields[8:])]
                  for fields in row]
        assert packed == [_public_row(agent, rows.fractions) for agent in agents]
        assert rows.arrived == sum(agent.state == TrainState.DONE for agent in rail_env.agents)
        seen |= {("broken", fields[6] > 0) for fields in row} | {("speed", fields[8]) for fields in packed[:-1]}
        seen |= {("on the map", fields[0] >= 0) for fields in row[:-1]} | {("arrived", rows.arrived > 0)}
        if terminated["__all__"]:
            break
    assert {("broken", True), ("on the map", True), ("on the map", False)} <= seen
    assert len({value for kind, value in seen if kind == "speed"}) > 1


def test_train_major_puts_a_row_s_fields_train_by_train_and_a_train_off_the_map_has_no_previous_cell():
    field_major = [-1, -1, -1, 1, 2, 3,  4, 5, 0, 6, 7, 1,  0, 2,  6, 2,  0, 1,  1, 0]  # fmt: skip
    rows = train_major(np.array([field_major, field_major], dtype="<i2"), 2)
    assert rows.dtype == np.int16 and rows.shape == (2, 2, 10)
    assert rows[1].tolist() == [[-1, -1, -1, -1, -1, -1, 0, 6, 0, 1], [1, 2, 3, 6, 7, 1, 2, 2, 1, 0]]


def test_a_drawing_that_fails_in_the_helper_costs_that_episode_s_video_only(monkeypatch):
    this_process().start(None)
    env = record_episodes(make_env(BROKEN_DOWN))
    state = FlatlandFrames.state
    monkeypatch.setattr(FlatlandFrames, "state", lambda self: state(self)[:20])  # one train of five (10 int16 each)
    play(env, 3)
    (dropped,) = env.pop_dropped()  # said by the helper, seen with a later frame or at the end
    assert dropped.cause == "its video could not be encoded: ValueError: a state of 1 trains for a scene of 5."
    (unrecorded,) = env.pop_finished()  # without its video, with its trajectory
    assert (unrecorded.mp4, unrecorded.frames, unrecorded.record_kind) == (b"", 0, "flatland")
    assert FlatlandEpisode.from_bytes(unrecorded.record).steps == unrecorded.episode_length
    monkeypatch.setattr(FlatlandFrames, "state", state)
    steps = play(env, 4)
    (episode,) = env.pop_finished()  # the next episode records again
    assert episode.episode_length == steps and episode.frames == steps + 1


def test_a_probe_says_why_the_helper_cannot_draw(monkeypatch):
    monkeypatch.setattr(FlatlandFrames, "drawn_beside", "eval_recorder.flatland.no_such_module:Drawing")
    this_process().start(None)
    env = record_episodes(make_env(BROKEN_DOWN))
    problem = env.probe(seed=1)
    assert problem == ("its video could not be encoded: ModuleNotFoundError: "
                       "No module named 'eval_recorder.flatland.no_such_module'.")


def test_with_a_narrower_select_only_the_episodes_it_may_choose_are_drawn_the_same_bytes(monkeypatch):
    """select=worst:1: the stepping thread only keeps each episode's states; when an episode
    ends, the helper draws it only if it is worse than every earlier one of the round (ties
    drawn too). Those videos are the bytes select=all records; the others carry no video,
    and the order of the episodes is kept."""
    seeds = (11, 12, 13, 14)
    this_process().start(None)
    every = record_episodes(make_env(BROKEN_DOWN))
    for seed in seeds:
        play(every, seed)
    recorded_all = every.pop_finished()
    this_process().start(None)
    env = record_episodes(make_env(BROKEN_DOWN), select="worst:1")
    for seed in seeds:
        play(env, seed)
    assert env.frame_source._renderer is None  # nothing was drawn in this process
    later = env.pop_finished()
    assert env.pop_dropped() == []
    assert [episode.env_seed for episode in later] == list(seeds)
    returns = [episode.episode_return for episode in recorded_all]
    assert returns == [-416.0, -404.0, -352.0, -541.0]  # completion 0 in all four: by return
    assert [bool(episode.mp4) for episode in later] == [True, False, False, True]
    assert [episode.frames for episode in later] == [recorded_all[0].frames, 0, 0, recorded_all[3].frames]
    assert later[0].mp4 == recorded_all[0].mp4 and later[3].mp4 == recorded_all[3].mp4
    assert [episode.record == kept.record for episode, kept in zip(later, recorded_all)] == [True] * 4


def test_a_video_drawn_after_its_episode_that_fails_is_dropped_with_its_cause(monkeypatch):
    """The helper fails to draw a kept episode: the wait says why (one sentence), that episode
    (with its record, without a video) and the ones after it are handed over in order, and the
    next episode that may be chosen is drawn again."""
    this_process().start(None)
    env = record_episodes(make_env(BROKEN_DOWN), select="worst:1")
    state = FlatlandFrames.state
    monkeypatch.setattr(FlatlandFrames, "state", lambda self: state(self)[:20])  # one train of five (10 int16 each)
    first = play(env, 11)
    monkeypatch.setattr(FlatlandFrames, "state", state)
    play(env, 12)  # better than 11: not drawn
    steps = play(env, 14)  # worse than both: drawn
    assert env.pop_dropped() == []  # nothing is waited for before pop_finished
    handed = env.pop_finished()
    (dropped,) = env.pop_dropped()
    assert dropped.cause == "its video could not be encoded: ValueError: a state of 1 trains for a scene of 5."
    assert (dropped.env_seed, dropped.step) == (11, first)
    assert [(episode.env_seed, bool(episode.mp4), episode.frames) for episode in handed] == [
        (11, False, 0), (12, False, 0), (14, True, steps + 1)]  # 11 without the video it failed to draw
    assert all(FlatlandEpisode.from_bytes(episode.record).steps == episode.episode_length for episode in handed)


def test_the_env_does_not_wait_for_a_video_drawn_beside_it_which_is_handed_over_once_stamped_and_done():
    """select=all: the episode's end only asks the helper to finish the mp4; the episode waits
    (``waiting``) and is handed over, not before it is stamped (an eval runner stamps it at
    the episode's end), once its video is done."""
    import time

    this_process().start(None)
    env = record_episodes(make_env(BROKEN_DOWN))
    steps = play(env, 21, steps=8)
    play(env, 21)  # (the first, cut off by this reset, is not kept)
    assert env.waiting
    assert env.pop_finished(wait=False, stamped=True) == []  # not stamped yet, however far the helper is
    env.stamp(weights_seq_no=3, evaluation_round=1)
    deadline = time.monotonic() + 20
    while not (handed := env.pop_finished(wait=False, stamped=True)) and time.monotonic() < deadline:
        time.sleep(0.01)
    (episode,) = handed
    assert not env.waiting
    assert (episode.weights_seq_no, episode.evaluation_round, episode.env_seed) == (3, 1, 21)
    assert episode.frames == episode.episode_length + 1 and episode.episode_length > steps
    assert episode.mp4[4:8] == b"ftyp" and len(episode.mp4) > 1000
    env.close()
