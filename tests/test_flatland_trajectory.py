"""Flatland episodes kept as flatland trajectories (eval_recorder.flatland.trajectory): real
RailEnvs (malfunctions, several speeds, flatland-rl's RLlib wrapper, a saved scenario) stepped
with random actions, written in flatland's layout and replayed by flatland's own
TrajectoryEvaluator and its `flatland-trajectory-evaluate` command; an altered record refused
naming its step and train; frames drawn from the record equal the frames drawn live."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from eval_recorder.errors import ReplayDiverged
from eval_recorder.flatland.trajectory import (
    FlatlandEpisode, TrajectoryCapture, check_replay, pose, publish_trajectory, rail_env_at,
)

LAYOUT = [
    "event_logs",
    "event_logs/ActionEvents.discrete_action.tsv",
    "event_logs/TrainMovementEvents.trains_arrived.tsv",
    "event_logs/TrainMovementEvents.trains_positions.tsv",
    "event_logs/TrainMovementEvents.trains_rewards_dones_infos.tsv",
    "serialised_state",
]


def malfunctioning_env(seed: int = 7):
    """5 trains at speeds 1, 1/2 and 1/4 on 30x30 that break down often."""
    from flatland.env_generation.env_generator import env_generator

    env, _, _ = env_generator(n_agents=5, x_dim=30, y_dim=30, n_cities=2, max_rail_pairs_in_city=2,
                              max_rails_between_cities=2, malfunction_interval=20, malfunction_duration_min=2,
                              malfunction_duration_max=6, speed_ratios={1.0: 0.5, 0.5: 0.25, 0.25: 0.25}, seed=seed)
    env.reset(random_seed=seed)
    return env


def run_rail_env(env, *, seed: int = 1, frames: list | None = None) -> FlatlandEpisode:
    """An episode to its end with random actions (none for train 2: DO_NOTHING), captured."""
    from eval_recorder.flatland.rendering import FrameRenderer

    renderer = None
    if frames is not None:
        renderer = FrameRenderer(env)
        frames.append(renderer.render())
    capture = TrajectoryCapture(env)
    rng = np.random.default_rng(seed)
    while True:
        actions = {handle: int(rng.integers(0, 5)) for handle in range(env.get_num_agents()) if handle != 2}
        _, _, dones, _ = env.step(actions)
        capture.step(actions)
        if renderer is not None:
            frames.append(renderer.render())
        if dones["__all__"]:
            return capture.finish()


def run_wrapped(env, *, seed: int = 1) -> FlatlandEpisode:
    """As RLlib steps flatland-rl's RayMultiAgentWrapper: string keys, no action for trains done."""
    capture = TrajectoryCapture(env.wrap())
    rng = np.random.default_rng(seed)
    acting = set(env.get_agent_ids())
    while True:
        actions = {agent: int(rng.integers(0, 5)) for agent in sorted(acting)}
        _, _, terminateds, _, _ = env.step(actions)
        capture.step(actions)
        acting -= {agent for agent, done in terminateds.items() if done}
        if terminateds["__all__"]:
            return capture.finish()


def evaluate(path: Path, ep_id: str):
    from flatland.evaluators.trajectory_evaluator import TrajectoryEvaluator
    from flatland.trajectories.trajectories import Trajectory

    return TrajectoryEvaluator(Trajectory.load_existing(path, ep_id)).evaluate(tqdm_kwargs={"disable": True})


def files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture(scope="module")
def malfunctions():
    """One episode of the malfunctioning env, and its env at the end."""
    env = malfunctioning_env()
    episode = run_rail_env(env)
    return env, episode


def test_an_episode_with_malfunctions_and_speeds_passes_flatlands_trajectory_evaluator(malfunctions, tmp_path):
    env, episode = malfunctions
    arrays = episode.arrays
    # the episode is one worth checking: trains broke down, at three speeds, some arrived
    assert (arrays["malfunction"] > 0).sum() > 20
    assert {Fraction(*pair) for pair in arrays["speed"].reshape(-1, 2).tolist()} >= {Fraction(1, 2), Fraction(1, 4)}
    assert episode.ended and episode.steps == env._elapsed_steps
    assert episode.success_rate == sum(agent.state == 6 for agent in env.agents) / 5

    path = publish_trajectory(FlatlandEpisode.from_bytes(episode.to_bytes()), tmp_path, "flatland-it000003-ep01")

    assert path == tmp_path / "flatland-it000003-ep01"
    assert files(tmp_path) == ["flatland-it000003-ep01", *(f"flatland-it000003-ep01/{name}" for name in LAYOUT),
                               "flatland-it000003-ep01/serialised_state/flatland-it000003-ep01.pkl"]
    replayed = evaluate(path, "flatland-it000003-ep01")
    assert [agent.current_configuration for agent in replayed.agents] == [agent.current_configuration for agent in env.agents]
    assert [agent.state for agent in replayed.agents] == [agent.state for agent in env.agents]


def test_flatlands_command_replays_a_written_record(malfunctions, tmp_path):
    env, episode = malfunctions
    path = publish_trajectory(episode, tmp_path, "ep")
    command = Path(sys.executable).parent / "flatland-trajectory-evaluate"

    done = subprocess.run([str(command), "--data-dir", str(path), "--ep-id", "ep"], capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    percent = episode.success_rate * 100
    assert done.stdout == f"{percent}% trains arrived. Expected {percent}%. {episode.steps - 1} elapsed steps.\n"


def test_an_episode_of_the_builtin_env_stepped_as_rllib_steps_it_passes(tmp_path):
    from eval_recorder.flatland.envs import make_env

    env = make_env({"n_agents": 3, "x_dim": 30, "y_dim": 30, "seed": 5})
    env.reset(seed=5)
    episode = run_wrapped(env)

    evaluate(publish_trajectory(episode, tmp_path, "builtin"), "builtin")
    # trains done get no action from RLlib: the record says DO_NOTHING, as the RailEnv did
    assert episode.arrays["actions"].dtype == np.int8


def test_an_episode_of_a_saved_scenario_passes(tmp_path):
    from flatland.envs.persistence import RailEnvPersister

    from eval_recorder.flatland.envs import make_env
    from eval_recorder.flatland.frames import FlatlandFrames

    saved = malfunctioning_env(seed=21)
    RailEnvPersister.save(saved, str(tmp_path / "Test_0.pkl"))
    env = make_env({"n_agents": 2, "x_dim": 30, "y_dim": 30, "seed": 1})  # another world, as the scenario path meets it
    options = FlatlandFrames(env, env.wrap(), max_side=0).load_scenario("Test_0.pkl", (tmp_path / "Test_0.pkl").read_bytes())
    env.reset(seed=3, options=options)
    assert env.wrap().get_num_agents() == 5 and env.wrap().width == 30

    episode = run_wrapped(env)

    evaluate(publish_trajectory(episode, tmp_path, "scenario"), "scenario")


def test_a_record_is_never_written_over_and_leaves_no_temporary_folder(malfunctions, tmp_path):
    _, episode = malfunctions
    path = publish_trajectory(episode, tmp_path, "ep")
    before = {name: (path / name).read_bytes() for name in files(path) if (path / name).is_file()}
    other = malfunctioning_env(seed=8)

    assert publish_trajectory(run_rail_env(other), tmp_path, "ep") is None

    assert {name: (path / name).read_bytes() for name in files(path) if (path / name).is_file()} == before
    assert os.listdir(tmp_path) == ["ep"]


def test_an_altered_record_is_refused_naming_the_step_and_the_train(malfunctions, tmp_path):
    _, episode = malfunctions
    check_replay(episode)  # the record as captured replays
    altered = FlatlandEpisode.from_bytes(episode.to_bytes())
    recorded = float(altered.arrays["rewards"][16, 3])
    altered.arrays["rewards"][16, 3] = recorded - 0.5

    with pytest.raises(ReplayDiverged) as refused:
        check_replay(altered)

    assert str(refused.value) == (
        f"step 17: train 3's reward is {recorded!r} in the replay, {recorded - 0.5!r} in the record; the RailEnv does "
        "not repeat this episode from its initial state and the recorded actions, so it cannot be replayed or rendered "
        "from this record.")
    assert (refused.value.step, refused.value.agent, refused.value.field) == (17, 3, "reward")
    with pytest.raises(AssertionError):  # flatland's evaluator refuses it too
        evaluate(publish_trajectory(altered, tmp_path, "altered"), "altered")


def test_a_moved_train_is_refused_naming_its_position(malfunctions):
    _, episode = malfunctions
    altered = FlatlandEpisode.from_bytes(episode.to_bytes())
    step = int(np.argmax((altered.arrays["positions"][:, 0, 0] >= 0))) + 1  # train 0's first step on the map
    (row, col, direction) = altered.arrays["positions"][step - 1, 0].tolist()
    altered.arrays["positions"][step - 1, 0] = (row, col + 1, direction)

    with pytest.raises(ReplayDiverged, match=rf"^step {step}: train 0's position is \({row}, {col}\) heading "
                                             rf"{direction} in the replay, \({row}, {col + 1}\) heading {direction} "
                                             "in the record; "):
        check_replay(altered)


def test_the_frames_drawn_from_the_record_equal_the_frames_drawn_live():
    from eval_recorder.flatland.rendering import FrameRenderer

    live: list = []
    episode = FlatlandEpisode.from_bytes(run_rail_env(malfunctioning_env(seed=9), seed=2, frames=live).to_bytes())
    env = rail_env_at(episode)  # never stepped
    renderer = FrameRenderer(env)

    drawn = []
    for step in range(episode.steps + 1):
        pose(env, episode, step)
        drawn.append(renderer.render())

    assert len(drawn) == len(live) == episode.steps + 1
    assert (episode.arrays["malfunction"] > 0).any()
    for step, (ours, theirs) in enumerate(zip(drawn, live)):
        assert np.array_equal(ours, theirs), f"frame of step {step} differs"


def test_the_record_round_trips_through_bytes(malfunctions):
    _, episode = malfunctions
    again = FlatlandEpisode.from_bytes(episode.to_bytes())

    assert (again.n_agents, again.steps, again.ended, again.success_rate, again.normalized_reward) == (
        episode.n_agents, episode.steps, episode.ended, episode.success_rate, episode.normalized_reward)
    assert again.initial_state == episode.initial_state
    assert pickle.loads(again.initial_state)["elapsed_steps"] == 0
    assert again.arrays.keys() == episode.arrays.keys()
    for name, array in episode.arrays.items():
        assert np.array_equal(again.arrays[name], array) and again.arrays[name].dtype == array.dtype, name
    with pytest.raises(ValueError, match=r"^these 5 bytes are not a Flatland episode record "):
        FlatlandEpisode.from_bytes(b"hello")


# ---- the layout written directly equals flatland's own writer's, byte for byte ------------------


def _flatland_writes(episode: FlatlandEpisode, data_dir: Path, ep_id: str) -> None:
    """The reference: the layout as flatland's own Trajectory writes it (what _write_layout did
    before it wrote the files itself): Trajectory.load_existing, its collects per step and train,
    persist() (pandas' to_csv), and the empty outputs/ folder load_existing made removed."""
    import functools

    from flatland.envs.rail_env_action import RailEnvActions
    from flatland.envs.step_utils.states import TrainState
    from flatland.trajectories.trajectories import SERIALISED_STATE_SUBDIR, Trajectory

    states_dir = data_dir / SERIALISED_STATE_SUBDIR
    states_dir.mkdir()
    (states_dir / f"{ep_id}.pkl").write_bytes(episode.initial_state)
    trajectory = Trajectory.load_existing(data_dir=data_dir, ep_id=ep_id)
    arrays = episode.arrays
    actions, rewards, dones = arrays["actions"].tolist(), arrays["rewards"].tolist(), arrays["dones"].tolist()
    required, states, malfunction = arrays["action_required"].tolist(), arrays["states"].tolist(), arrays["malfunction"].tolist()
    speed, positions = arrays["speed"].tolist(), arrays["positions"].tolist()
    action_of = functools.cache(RailEnvActions.from_value)
    state_of, speed_of = functools.cache(TrainState), functools.cache(lambda pair: Fraction(*pair))
    configuration_of = functools.cache(lambda rcd: None if rcd[0] < 0 else ((rcd[0], rcd[1]), rcd[2]))
    for step in range(1, episode.steps + 1):
        row = step - 1
        for handle in range(episode.n_agents):
            trajectory.action_collect(env_time=row, agent_id=handle, action=action_of(actions[row][handle]))
            trajectory.position_collect(env_time=step, agent_id=handle,
                                        position=configuration_of(tuple(positions[row][handle])))
            info = {"action_required": required[row][handle], "malfunction": malfunction[row][handle],
                    "speed": speed_of(tuple(speed[row][handle])), "state": state_of(states[row][handle])}
            trajectory.rewards_dones_infos_collect(env_time=step, agent_id=handle, reward=rewards[row][handle],
                                                   info=info, done=dones[row][handle])
    if episode.ended:
        trajectory.arrived_collect(episode.steps - 1, episode.success_rate, episode.normalized_reward)
    trajectory.persist()
    trajectory.outputs_dir.rmdir()


def tree(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every file and folder under ``folder``: its permission bits and, for a file, its bytes."""
    return {str(path.relative_to(folder)): (path.stat().st_mode & 0o7777, path.read_bytes() if path.is_file() else None)
            for path in folder.rglob("*")}


def assert_written_as_flatland_writes(episode: FlatlandEpisode, tmp_path: Path, ep_id: str) -> dict:
    """publish_trajectory's folder holds the very files and folders flatland's writer makes."""
    reference = tmp_path / "flatland" / ep_id
    reference.mkdir(parents=True)
    _flatland_writes(episode, reference, ep_id)
    (tmp_path / "ours").mkdir()

    published = publish_trajectory(episode, tmp_path / "ours", ep_id)

    ours, theirs = tree(published), tree(reference)
    assert sorted(ours) == sorted(theirs) == sorted([*LAYOUT, f"serialised_state/{ep_id}.pkl"])
    for name in sorted(theirs):
        assert ours[name][0] == theirs[name][0], f"{name}: mode {ours[name][0]:o}, flatland's {theirs[name][0]:o}"
        if ours[name][1] != theirs[name][1]:
            mine, flatlands = ours[name][1].splitlines(True), theirs[name][1].splitlines(True)
            first = next((i for i, (a, b) in enumerate(zip(mine, flatlands)) if a != b), min(len(mine), len(flatlands)))
            raise AssertionError(f"{name} differs at line {first + 1}: {mine[first:first + 1]} written, flatland "
                                 f"writes {flatlands[first:first + 1]}")
    return {name: data.decode() for name, (_, data) in theirs.items() if data is not None and name.endswith(".tsv")}


def more_speeds_env(seed: int = 11):
    """6 trains at speeds 1, 1/3 and 1/5 (and 0 once stopped), breaking down often."""
    from flatland.env_generation.env_generator import env_generator

    env, _, _ = env_generator(n_agents=6, x_dim=30, y_dim=30, n_cities=2, max_rail_pairs_in_city=2,
                              max_rails_between_cities=2, malfunction_interval=15, malfunction_duration_min=1,
                              malfunction_duration_max=4, speed_ratios={1 / 3: 0.5, 0.2: 0.25, 1.0: 0.25}, seed=seed)
    env.reset(random_seed=seed)
    return env


def test_the_file_names_written_are_flatlands_and_writing_loads_no_pandas(malfunctions, tmp_path):
    """The writer spells flatland's file names itself (importing flatland.trajectories would
    load pandas into the driver for its first record): they are flatland's, and a fresh
    interpreter that writes a record has not imported pandas or flatland.trajectories."""
    from flatland.trajectories import trajectories

    from eval_recorder.flatland import trajectory

    assert (trajectory.STATES_SUBDIR, trajectory.ACTIONS_FILE, trajectory.POSITIONS_FILE,
            trajectory.REWARDS_DONES_INFOS_FILE, trajectory.ARRIVED_FILE) == (
        trajectories.SERIALISED_STATE_SUBDIR, trajectories.DISCRETE_ACTION_FNAME, trajectories.TRAINS_POSITIONS_FNAME,
        trajectories.TRAINS_REWARDS_DONES_INFOS_FNAME, trajectories.TRAINS_ARRIVED_FNAME)  # fmt: skip
    assert trajectory.LOGS_SUBDIR == os.path.dirname(trajectories.DISCRETE_ACTION_FNAME)
    _, episode = malfunctions
    (tmp_path / "record.npz").write_bytes(episode.to_bytes())
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from eval_recorder.flatland.trajectory import FlatlandEpisode, publish_trajectory\n"
            "folder = Path(sys.argv[1])\n"
            "publish_trajectory(FlatlandEpisode.from_bytes((folder / 'record.npz').read_bytes()), folder, 'ep')\n"
            "print(sorted(name for name in ('pandas', 'flatland.trajectories') if name in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert sorted(str(path.relative_to(tmp_path / "ep")) for path in (tmp_path / "ep").rglob("*")) == [
        "event_logs", trajectory.ACTIONS_FILE, trajectory.ARRIVED_FILE, trajectory.POSITIONS_FILE,
        trajectory.REWARDS_DONES_INFOS_FILE, "serialised_state", "serialised_state/ep.pkl"]


def test_an_episode_with_malfunctions_and_speeds_is_written_as_flatland_writes_it(malfunctions, tmp_path):
    _, episode = malfunctions
    assert episode.ended and episode.normalized_reward is not None

    written = assert_written_as_flatland_writes(FlatlandEpisode.from_bytes(episode.to_bytes()), tmp_path,
                                                "flatland-it000003-ev0003-ep001-5c01542a")

    # what the comparison covered: every step and train, off and on the map, broken down, at 3 speeds
    infos = written["event_logs/TrainMovementEvents.trains_rewards_dones_infos.tsv"]
    assert len(infos.splitlines()) == 1 + episode.steps * 5
    for seen in ["'speed': Fraction(1, 1)", "'speed': Fraction(1, 2)", "'speed': Fraction(1, 4)",
                 "'state': <TrainState.MALFUNCTION: 5>", "'action_required': True", "}\tTrue\n", "}\tFalse\n"]:
        assert seen in infos
    positions = written["event_logs/TrainMovementEvents.trains_positions.tsv"].splitlines()
    assert any(line.endswith("\t") for line in positions) and any(line.endswith(")") for line in positions)
    arrived = written["event_logs/TrainMovementEvents.trains_arrived.tsv"].splitlines()
    assert arrived[1] == (f"flatland-it000003-ev0003-ep001-5c01542a\t{episode.steps - 1}\t{episode.success_rate!r}\t"
                          f"{episode.normalized_reward!r}")


def test_more_speeds_and_an_episode_cut_short_are_written_as_flatland_writes_them(tmp_path):
    env = more_speeds_env()
    episode = run_rail_env(env, seed=4)
    assert {tuple(pair) for pair in episode.arrays["speed"].reshape(-1, 2).tolist()} >= {(1, 1), (1, 3), (1, 5)}
    assert_written_as_flatland_writes(episode, tmp_path / "ended", "ended")

    env = more_speeds_env(seed=12)
    capture = TrajectoryCapture(env)
    rng = np.random.default_rng(3)
    for _ in range(23):
        actions = {handle: int(rng.integers(0, 5)) for handle in range(env.get_num_agents())}
        env.step(actions)
        capture.step(actions)
    cut_short = capture.finish()
    assert not cut_short.ended and cut_short.steps == 23

    written = assert_written_as_flatland_writes(cut_short, tmp_path / "cut", "cut")

    assert written["event_logs/TrainMovementEvents.trains_arrived.tsv"] == (
        "episode_id\tenv_time\tsuccess_rate\tnormalized_reward\n")  # the header only


def test_an_episode_whose_rewards_have_no_normalized_reward_is_written_as_flatland_writes_it(tmp_path):
    from flatland.envs.rewards import DefaultRewards, Rewards

    class NotNormalized(DefaultRewards):
        normalize = Rewards.normalize  # flatland's base: None

    env = malfunctioning_env(seed=5)
    env.rewards = NotNormalized()
    episode = run_rail_env(env, seed=6)
    assert episode.ended and episode.normalized_reward is None

    written = assert_written_as_flatland_writes(episode, tmp_path, "ep")

    assert written["event_logs/TrainMovementEvents.trains_arrived.tsv"].splitlines()[1] == (
        f"ep\t{episode.steps - 1}\t{episode.success_rate!r}\t")  # None: NaN in pandas' float column, an empty field


def test_the_builtin_env_stepped_as_rllib_steps_it_is_written_as_flatland_writes_it(tmp_path):
    from eval_recorder.flatland.envs import make_env

    env = make_env({"n_agents": 3, "x_dim": 30, "y_dim": 30, "seed": 5})
    env.reset(seed=5)

    assert_written_as_flatland_writes(run_wrapped(env, seed=2), tmp_path, "builtin")


def odd(episode: FlatlandEpisode, **changes) -> FlatlandEpisode:
    again = FlatlandEpisode.from_bytes(episode.to_bytes())
    for name, value in changes.items():
        setattr(again, name, value)
    return again


@pytest.mark.parametrize("case", ["floats", "no steps", "no trains", "ids and values", "integer rates"])
def test_values_flatlands_writer_formats_its_own_way_are_written_as_it_writes_them(malfunctions, tmp_path, case):
    """Records no RailEnv makes, for pandas' formatting: rewards of every float kind (-0.0,
    1e-05, 1e+16, inf, NaN), no steps, no trains, an episode id with a tab, a quote, a newline
    and non-ASCII, actions that are no RailEnvActions (DO_NOTHING), big counters and
    coordinates, a success rate that is an int."""
    _, episode = malfunctions
    ep_id = "ep"
    if case == "floats":
        episode = odd(episode, success_rate=-0.0, normalized_reward=1e-05)
        rewards = episode.arrays["rewards"]
        rewards.reshape(-1)[:12] = [-0.0, 0.0, 1e-05, 1e+16, 123456789.123456789, -1 / 3, np.inf, -np.inf, np.nan, 5e-324,
                                    1.7976931348623157e308, 0.1 + 0.2]
    elif case == "no steps":
        env = malfunctioning_env(seed=3)
        episode = TrajectoryCapture(env).finish()
        assert episode.steps == 0 and not episode.ended
        # ended: an arrival at env_time -1, as flatland's writer logs it
        episode = odd(episode, ended=True, success_rate=0.0, normalized_reward=1.0)
    elif case == "no trains":
        episode = odd(episode)
        episode.arrays = {name: array[:, :0] for name, array in episode.arrays.items()}
        episode.n_agents = 0
    elif case == "ids and values":
        ep_id = 'ep\t"quoted"\nnext line – ü'
        episode = odd(episode)
        arrays = episode.arrays
        arrays["actions"][:3, 0] = [5, -1, 127]
        arrays["malfunction"][0, :2] = [2**31 - 1, -7]
        arrays["positions"][0, 1] = (32767, -32768, 3)
        arrays["speed"][1, 1] = (6, 8)
        arrays["dones"][1] = ~arrays["dones"][1]  # a done and an action_required no RailEnv gives with the rest
        arrays["action_required"][2] = ~arrays["action_required"][2]
    elif case == "integer rates":
        episode = odd(episode, success_rate=1, normalized_reward=float("nan"))

    written = assert_written_as_flatland_writes(episode, tmp_path, ep_id)

    if case == "floats":
        rows = written["event_logs/TrainMovementEvents.trains_rewards_dones_infos.tsv"].splitlines()[1:13]
        assert [row.split("\t")[3] for row in rows] == ["-0.0", "0.0", "1e-05", "1e+16", "123456789.12345679",
                                                       "-0.3333333333333333", "inf", "-inf", "", "5e-324",
                                                       "1.7976931348623157e+308", "0.30000000000000004"]
    if case == "ids and values":
        assert written["event_logs/ActionEvents.discrete_action.tsv"].startswith(
            'episode_id\tenv_time\tagent_id\taction\n"ep\t""quoted""\nnext line – ü"\t0\t0\t0\n')
