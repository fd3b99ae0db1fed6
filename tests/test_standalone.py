"""Standalone evaluation of real checkpoints written by a tiny real training run."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import av
import numpy as np
import pytest

from conftest import run_eval_command
from eval_recorder.video_index import read_manifest
from wandb_offline import history_rows, run_records

pytestmark = pytest.mark.slow  # real Ray / RLlib runs


def env_steps_of(checkpoint):
    with open(checkpoint / "algorithm_state.pkl", "rb") as handle:
        state = pickle.load(handle)
    return int(state["metrics_logger"]["stats"]["env_runners--num_env_steps_sampled_lifetime"]["lifetime_sum"])


def evaluate(tmp_path, checkpoint, *overrides, name="eval"):
    videos = tmp_path / name / "videos"
    proc = subprocess.run(
        run_eval_command(f"checkpoint={checkpoint}", "evaluation.episodes=2", f"recording.video_dir={videos}",
                         f"hydra.run.dir={tmp_path / name}", *overrides),
        capture_output=True, text=True, timeout=600,
    )
    return proc, videos


def decoded(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def single(trained_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    checkpoint = trained_run / "checkpoints" / "it000002"
    proc, videos = evaluate(tmp, checkpoint, "wandb.run_id=evalone")
    return tmp, checkpoint, proc, videos


def test_one_checkpoint_is_evaluated_and_tagged_with_its_own_state(single):
    tmp, checkpoint, proc, videos = single
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(videos)
    assert [m["file"] for m in manifest] == [
        "flatland-it000002-ev0001-ep000-evalone.mp4",
        "flatland-it000002-ev0001-ep001-evalone.mp4",
    ]
    for record in manifest:
        assert record["training_iteration"] == 2
        assert record["env_steps"] == env_steps_of(checkpoint) == 400
        assert record["checkpoint"] == str(checkpoint)
        assert json.loads((videos / record["file"]).with_suffix(".json").read_text()) == record
        assert len(decoded(videos / record["file"])) == record["frames"] == record["episode_length"] + 1


def test_final_table_lists_every_video_with_its_metrics(single):
    _, _, proc, videos = single
    lines = proc.stdout.splitlines()
    start = lines.index("iteration  env steps  episode     return  arrived  length  video")
    rows = lines[start + 1 : start + 3]
    for row, record in zip(rows, read_manifest(videos)):
        assert row.split() == [
            "2", "400", str(record["episode_index"]), f"{record['episode_return']:.2f}",
            f"{record['agents_arrived']}/{record['num_agents']}", str(record["episode_length"]),
            str(videos / record["file"]),
        ]
    assert lines[start + 3] == f"videos written: 2 in {videos}"
    assert lines[start + 4] == f"gallery: {videos / 'index.html'} (open it in a browser, no server needed)"
    assert "\r" not in proc.stdout  # stdout is a pipe: no progress bar (test_output.py: the bar on a terminal)


def test_wandb_run_is_an_eval_job_with_videos_at_the_checkpoint_iteration_and_a_table(single):
    tmp, *_ = single
    (run_dir,) = (tmp / "eval" / "wandb").glob("offline-run-*-evalone")
    (run_record,) = [r for r in run_records(run_dir) if r.WhichOneof("record_type") == "run"]
    assert run_record.run.job_type == "eval"
    rows = history_rows(run_dir)
    video_rows = [row for row in rows if "eval/video/episode_0/sha256" in row]
    assert [row["_step"] for row in video_rows] == [2]
    table_rows = [row for row in rows if "eval/episodes/_type" in row]
    assert [(row["_step"], row["eval/episodes/_type"], row["eval/episodes/nrows"]) for row in table_rows] == [
        (2, "table-file", 2)
    ]


def test_same_checkpoint_env_and_seed_give_the_same_episodes(single, tmp_path):
    _, checkpoint, _, first_videos = single
    proc, videos = evaluate(tmp_path, checkpoint, "wandb.mode=disabled")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = read_manifest(first_videos), read_manifest(videos)
    facts = ("env_seed", "episode_return", "episode_length", "agents_arrived", "frames")
    assert [[m[k] for k in facts] for m in second] == [[m[k] for k in facts] for m in first]
    for a, b in zip(first, second):
        frames_a, frames_b = decoded(first_videos / a["file"]), decoded(videos / b["file"])
        assert len(frames_a) == len(frames_b)
        assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b))


def test_a_run_folder_evaluates_every_checkpoint_in_training_order(trained_run, tmp_path):
    proc, videos = evaluate(tmp_path, trained_run, "wandb.mode=disabled", "wandb.run_id=history")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(videos)
    assert [(m["training_iteration"], m["env_steps"], m["checkpoint"]) for m in manifest] == [
        (1, 200, str(trained_run / "checkpoints" / "it000001")),
        (1, 200, str(trained_run / "checkpoints" / "it000001")),
        (2, 400, str(trained_run / "checkpoints" / "it000002")),
        (2, 400, str(trained_run / "checkpoints" / "it000002")),
    ]
    assert [m["file"] for m in manifest] == sorted(m["file"] for m in manifest)


def test_env_override_that_fits_the_policy_is_used(trained_run, tmp_path):
    proc, videos = evaluate(tmp_path, trained_run / "checkpoints" / "it000001", "env=medium",
                            "evaluation.episodes=1", "wandb.mode=disabled")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["num_agents"] for m in read_manifest(videos)] == [5]


def corrupt_copy(trained_run, tmp_path, change):
    copy = tmp_path / "ckpt"
    shutil.copytree(trained_run / "checkpoints" / "it000001", copy)
    change(copy)
    return copy


def rewrite_pickle(path, edit):
    with open(path, "rb") as handle:
        data = pickle.load(handle)
    edit(data)
    with open(path, "wb") as handle:
        pickle.dump(data, handle)


def not_an_algorithm(copy):
    rewrite_pickle(copy / "class_and_ctor_args.pkl", lambda d: d.__setitem__("class", dict))


def old_api_stack(copy):
    rewrite_pickle(copy / "class_and_ctor_args.pkl",
                   lambda d: d["ctor_args_and_kwargs"][0][0].__setitem__("enable_rl_module_and_learner", False))


def other_env(copy):
    rewrite_pickle(copy / "class_and_ctor_args.pkl",
                   lambda d: d["ctor_args_and_kwargs"][0][0].__setitem__("env", "CartPole-v1"))


def unknown_env(copy):
    rewrite_pickle(copy / "class_and_ctor_args.pkl",
                   lambda d: d["ctor_args_and_kwargs"][0][0].__setitem__("env", "nobody_registered_this"))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


MODULE_STATE = "learner_group/learner/rl_module/p0/module_state.pkl"
BAD = {
    "missing": (lambda run, tmp: tmp / "nope",
                "error: checkpoint {path} does not exist; pass an RLlib checkpoint folder or a run folder holding checkpoints."),
    "not_a_checkpoint": (lambda run, tmp: tmp,
                         "error: {path} is not an RLlib checkpoint and holds none (no rllib_checkpoint.json in it or below); "
                         "pass an RLlib checkpoint folder or a run folder holding checkpoints."),
    "module_state_missing": (lambda run, tmp: corrupt_copy(run, tmp, lambda c: (c / MODULE_STATE).unlink()),
                             f"error: checkpoint {{path}} is incomplete: {MODULE_STATE} is missing; "
                             "point checkpoint= at a complete RLlib checkpoint."),
    "module_state_truncated": (lambda run, tmp: corrupt_copy(run, tmp, lambda c: truncate(c / MODULE_STATE)),
                               f"error: checkpoint {{path}} is corrupt: {MODULE_STATE} cannot be read; "
                               "point checkpoint= at an intact RLlib checkpoint."),
    "learner_state_truncated": (lambda run, tmp: corrupt_copy(run, tmp, lambda c: truncate(
        c / "learner_group/learner/state.pkl")),
        "error: checkpoint {path} is corrupt: learner_group/learner/state.pkl cannot be read; "
        "point checkpoint= at an intact RLlib checkpoint."),
    "corrupt": (lambda run, tmp: corrupt_copy(run, tmp, lambda c: (c / "algorithm_state.pkl").write_bytes(b"\x80garbage")),
                "error: checkpoint {path} is corrupt: algorithm_state.pkl cannot be read; "
                "point checkpoint= at an intact RLlib checkpoint."),
    "not_an_algorithm": (lambda run, tmp: corrupt_copy(run, tmp, not_an_algorithm),
                         "error: checkpoint {path} was written by dict, not an RLlib Algorithm; point checkpoint= at one."),
    "old_api_stack": (lambda run, tmp: corrupt_copy(run, tmp, old_api_stack),
                      "error: checkpoint {path} was written by PPO on RLlib's old API stack; eval_recorder evaluates "
                      "checkpoints of the new API stack (RLModules and EnvRunners)."),
    "unknown_env": (lambda run, tmp: corrupt_copy(run, tmp, unknown_env),
                    "error: checkpoint {path} was trained on env 'nobody_registered_this', which is not known here; "
                    "register it with env.setup=module:function (called on the driver and on every Ray worker), or "
                    "give env.factory=module:function."),
    "other_env": (lambda run, tmp: corrupt_copy(run, tmp, other_env),
                  "error: env 'CartPole-v1' cannot be built and reset (TypeError: CartPoleEnv.__init__() got an "
                  "unexpected keyword argument 'n_agents' was raised from the environment creator for CartPole-v1 "
                  "with kwargs ({kwargs})); check the env settings."),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_exits_2_with_one_sentence_and_touches_nothing(case, trained_run, tmp_path):
    make, message = BAD[case]
    path = make(trained_run, _empty(tmp_path))
    proc, videos = evaluate(tmp_path, path)
    assert proc.returncode == 2
    kwargs = {"render_mode": "rgb_array", **_stored_env_config(path)}
    assert proc.stderr.strip().splitlines()[-1] == message.format(path=path, kwargs=kwargs)
    assert not videos.exists()
    assert not list(tmp_path.glob("**/offline-run-*"))  # no wandb run either


def _stored_env_config(path) -> dict:
    try:
        with open(path / "class_and_ctor_args.pkl", "rb") as handle:
            return pickle.load(handle)["ctor_args_and_kwargs"][0][0]["env_config"]
    except Exception:
        return {}


def _empty(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


def test_env_that_does_not_fit_the_policy_is_refused_naming_both_spaces(trained_run, tmp_path):
    checkpoint = trained_run / "checkpoints" / "it000001"
    proc, videos = evaluate(tmp_path, checkpoint, "env.tree_depth=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: the env does not fit the policy of checkpoint {checkpoint} for agent 0 (policy p0): the built-in "
        f"Flatland env (small) gives observations Box(0.0, 2.0, (60,), float64) and actions Discrete(5), the policy "
        f"takes Box(0.0, 2.0, (252,), float64) and Discrete(5); choose an env like the one it was trained on."
    )
    assert not videos.exists()
