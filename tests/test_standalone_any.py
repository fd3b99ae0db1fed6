"""Standalone evaluation of checkpoints trained elsewhere: a user's own RLlib script (no
recording in its config; two policies, its own mapping; its env registered through
env.setup), an APPO checkpoint of the main job, and the user mistakes that must end in
one sentence, exit code 2 and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import pytest

from conftest import ROOT, TINY, run_eval_command
from eval_recorder.video_index import read_manifest

pytestmark = pytest.mark.slow

SETUP = "env.setup=support.user_envs:register"


def with_tests_on_path() -> dict:
    """The user's package (tests/support) importable by the driver and every Ray worker."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "tests")}


def plain_checkpoint(folder, env: str):
    out = folder / env
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "plain_training.py"), str(out), env],
                          capture_output=True, text=True, timeout=600, env=with_tests_on_path(), cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Checkpoints written by a user's plain RLlib script: flatland-rl's env with two
    policies, and the gymnasium Blocks env."""
    folder = tmp_path_factory.mktemp("plain")
    return {env: plain_checkpoint(folder, env) for env in ("flatland", "blocks")}


def evaluate(tmp_path, checkpoint, *overrides):
    videos = tmp_path / "videos"
    proc = subprocess.run(
        run_eval_command(f"checkpoint={checkpoint}", "evaluation.episodes=2", "wandb.mode=disabled",
                         f"recording.video_dir={videos}", f"hydra.run.dir={tmp_path / 'run'}", *overrides),
        capture_output=True, text=True, timeout=900, env=with_tests_on_path(),
    )
    return proc, videos


def test_a_plain_rllib_checkpoint_with_two_policies_and_its_env_registered_through_setup(plain, tmp_path):
    proc, videos = evaluate(tmp_path, plain["flatland"], SETUP, "wandb.run_id=plain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(videos)
    assert [m["file"] for m in manifest] == ["flatland-it000001-ev0001-ep000-plain.mp4",
                                             "flatland-it000001-ev0001-ep001-plain.mp4"]
    for record in manifest:
        assert (record["training_iteration"], record["env_steps"]) == (1, 100)
        assert record["checkpoint"] == str(plain["flatland"])
        assert set(record["agent_returns"]) == {"0", "1"} and record["num_agents"] == 2
        with av.open(str(videos / record["file"])) as container:
            assert sum(1 for _ in container.decode(video=0)) == record["frames"] == record["episode_length"] + 1


def test_an_appo_checkpoint_of_the_main_job(tmp_path):
    run = tmp_path / "train"
    proc = subprocess.run(
        run_eval_command(*TINY, "algorithm=appo", "algorithm.train_batch_size=100", "training.iterations=1",
                         "evaluation.render=null", "wandb.mode=disabled", f"hydra.run.dir={run}"),
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, videos = evaluate(tmp_path, run / "checkpoints" / "it000001", "wandb.run_id=appo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(videos)
    assert [(m["file"], m["training_iteration"]) for m in manifest] == [
        ("flatland-it000001-ev0001-ep000-appo.mp4", 1), ("flatland-it000001-ev0001-ep001-appo.mp4", 1)]


BAD = {
    "env_not_registered": (
        "flatland", (),
        "error: checkpoint {checkpoint} was trained on env 'user_flatland', which is not known here; register it "
        "with env.setup=module:function (called on the driver and on every Ray worker), or give "
        "env.factory=module:function."),
    "unknown_setup_function": (
        "flatland", ("env.setup=support.user_envs:nope",),
        "error: env.setup=support.user_envs:nope: module support.user_envs has no function nope; "
        "name an existing function."),
    "setup_module_missing": (
        "flatland", ("env.setup=no_such_package.envs:register",),
        "error: env.setup=no_such_package.envs:register: module no_such_package.envs cannot be imported "
        "(ModuleNotFoundError: No module named 'no_such_package'); make it importable (e.g. on PYTHONPATH) on the "
        "driver and on every Ray worker."),
    "env_renders_no_frames": (
        "blocks", ("env.factory=support.user_envs:make_blind",),
        "error: the env Blocks returned NoneType from render(), not an rgb_array frame; make the evaluation env "
        "with render_mode='rgb_array' so that its frames can be recorded."),
    "spaces_do_not_fit": (
        "flatland", ("env=small",),
        "error: the env does not fit the policy of checkpoint {checkpoint} for agent 0 (policy p0): the built-in "
        "Flatland env (small) gives observations Box(0.0, 2.0, (252,), float64) and actions Discrete(5), the policy "
        "takes Box(-inf, inf, (20700,), float64) and Discrete(5); choose an env like the one it was trained on."),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_user_mistakes_exit_2_with_one_sentence_and_nothing_written(case, plain, tmp_path):
    env, overrides, message = BAD[case]
    proc, videos = evaluate(tmp_path, plain[env], *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == message.format(checkpoint=plain[env])
    assert not videos.exists()
