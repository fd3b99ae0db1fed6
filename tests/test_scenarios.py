"""Flatland's fixed scenarios: env.scenarios=DIR plays each saved scenario once per evaluation,
one video each, named in sidecar, manifest, gallery and wandb (periodic and standalone)."""

from __future__ import annotations

import json
import subprocess

import av
import numpy as np
import pytest

from conftest import TINY, run_eval_command
from helpers import evaluate_trajectory
from eval_recorder.video_index import read_manifest
from wandb_offline import history_rows

pytestmark = pytest.mark.slow

NAMES = ["Test_0.pkl", "Test_1.pkl", "Test_2.pkl"]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """3 saved scenarios (flatland's RailEnvPersister), the last with 3 trains, and the
    first frame flatland draws of each (its rails and stations)."""
    from flatland.envs.persistence import RailEnvPersister

    from eval_recorder.flatland.envs import make_env
    from eval_recorder.flatland.rendering import FrameRenderer

    folder = tmp_path_factory.mktemp("scenarios")
    firsts = {}
    for index, name in enumerate(NAMES):
        env = make_env({"n_agents": 3 if index == 2 else 2, "x_dim": 30, "y_dim": 30, "seed": 11 + index})
        env.reset(seed=11 + index)
        RailEnvPersister.save(env.wrap(), str(folder / name))
        firsts[name] = FrameRenderer(env.wrap()).render()
    (folder / "notes.txt").write_text("not a scenario\n")
    return folder, firsts


def first_frame(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def closest(frame, firsts) -> str:
    """The scenario whose first frame the video's first frame shows (same rails and stations)."""
    distance = {name: np.abs(frame.astype(int) - first.astype(int)).mean() for name, first in firsts.items()
                if first.shape == frame.shape}
    return min(distance, key=distance.get)


def test_each_evaluation_plays_each_scenario_once_one_video_each(scenarios, tmp_path):
    folder, firsts = scenarios
    run = tmp_path / "run"
    proc = subprocess.run(
        run_eval_command(*TINY, "training.iterations=2", f"env.scenarios={folder}", "recording.overlay=false",
                         "wandb.run_id=scen", f"hydra.run.dir={run}"),
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = run / "videos"
    manifest = read_manifest(videos)
    assert [(m["training_iteration"], m["episode_index"], m["scenario"]) for m in manifest] == [
        (1, 0, "Test_0.pkl"), (1, 1, "Test_1.pkl"), (1, 2, "Test_2.pkl"),
        (2, 0, "Test_0.pkl"), (2, 1, "Test_1.pkl"), (2, 2, "Test_2.pkl"),
    ]
    for record in manifest:
        assert json.loads((videos / record["file"]).with_suffix(".json").read_text())["scenario"] == record["scenario"]
        assert closest(first_frame(videos / record["file"]), firsts) == record["scenario"]  # it shows that world
        assert record["num_agents"] == (3 if record["scenario"] == "Test_2.pkl" else 2)
    gallery = (videos / "index.html").read_text()
    for record in manifest:
        assert (f"iteration {record['training_iteration']} · {record['env_steps']} env steps · episode "
                f"{record['episode_index']} · scenario {record['scenario']} · ") in gallery
    (wandb_run,) = (run / "wandb").glob("offline-run-*-scen")
    captions = [row[f"eval/video/episode_{i}/caption"] for row in history_rows(wandb_run) for i in range(3)
                if f"eval/video/episode_{i}/caption" in row]
    assert [caption.split(" · ")[3] for caption in captions] == [f"scenario {name}" for name in NAMES] * 2


def test_standalone_evaluation_plays_the_scenarios_too(scenarios, trained_run, tmp_path):
    folder, firsts = scenarios
    videos = tmp_path / "videos"
    proc = subprocess.run(
        run_eval_command(f"checkpoint={trained_run / 'checkpoints' / 'it000002'}", f"env.scenarios={folder}",
                         "recording.overlay=false", "wandb.mode=disabled", f"recording.video_dir={videos}",
                         f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(videos)
    assert [(m["training_iteration"], m["scenario"]) for m in manifest] == [(2, name) for name in NAMES]
    for record in manifest:
        assert closest(first_frame(videos / record["file"]), firsts) == record["scenario"]
        # its trajectory starts in the saved scenario, and flatland's own evaluator replays it
        assert (videos / record["record"] / "serialised_state" / f"{record['record']}.pkl").is_file()
        env, _ = evaluate_trajectory(videos, record)
        assert (env.width, env.height, env.get_num_agents()) == (30, 30, record["num_agents"])
        assert sum(agent.state == 6 for agent in env.agents) == record["agents_arrived"]  # TrainState.DONE


def test_scenarios_need_a_flatland_env(scenarios, tmp_path):
    folder, _ = scenarios
    proc = subprocess.run(
        run_eval_command(f"env.scenarios={folder}", "env.id=CartPole-v1", f"recording.video_dir={tmp_path / 'videos'}",
                         f"hydra.run.dir={tmp_path / 'run'}"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: env.scenarios holds saved Flatland scenarios, but env 'CartPole-v1' is not a Flatland env; "
        "drop env.scenarios or use a Flatland env."
    )
    assert not (tmp_path / "videos").exists()


def test_the_eval_env_starts_in_the_scenario_with_the_most_trains(scenarios):
    """RLlib fixes an eval runner's agent ids when it makes the env: starting in the scenario
    of most trains (Test_2.pkl, 3 trains; the others 2) lets every scenario's trains act."""
    from eval_recorder.flatland.frames import FlatlandFrames
    from eval_recorder.frames import most_agents

    folder, _ = scenarios
    saved = [(name, (folder / name).read_bytes()) for name in NAMES]
    assert [FlatlandFrames.scenario_agents(*scenario) for scenario in saved] == [2, 2, 3]
    assert most_agents(saved)[0] == "Test_2.pkl"
    assert most_agents(list(reversed(saved)))[0] == "Test_2.pkl"
