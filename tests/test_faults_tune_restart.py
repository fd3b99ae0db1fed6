"""A Ray Tune trial's eval runner killed (SIGKILL) in the middle of a round, for real: the
runner Ray restarts finds its trial's inbox (named after the trial, so that concurrent
trials never share one) and delivers there; the round's episodes that finished are kept,
nothing is said lost, and the trial ends well with every video stored and logged once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eval_recorder.eval_runner import inbox_name
from eval_recorder.folder_guard import claim_folder
from eval_recorder.video_index import read_manifest
from support.jobs import SUPPORT, check_folder_is_consistent, kill_session, wait_for, wandb_exit_codes, \
    wandb_video_logs

LOST = "no driver inbox is known on this eval runner"


def test_a_session_without_token_has_an_inbox_only_inside_a_placement_group():
    """Outside Ray or a placement group (no Tune trial) there is nothing to name it after."""
    assert inbox_name("abc") == "eval_recorder_inbox_abc"
    assert inbox_name(None) is None


@pytest.mark.slow
def test_a_trials_driver_and_the_actors_it_starts_name_one_inbox_and_other_trials_another(ray_local):
    """As Tune places a trial: its driver in a placement group of its own that captures
    what it starts (its env runners)."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=0)
    def named() -> str | None:
        return inbox_name(None)

    @ray.remote(num_cpus=0.1)
    class Driver:
        def names(self) -> tuple[str | None, str | None]:
            return inbox_name(None), ray.get(named.remote())  # the trial's own, and its runner's

    groups = [ray.util.placement_group([{"CPU": 0.1}]) for _ in range(2)]
    try:
        ray.get([group.ready() for group in groups], timeout=60)
        names = [ray.get(Driver.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True)).remote().names.remote(), timeout=60)
                 for group in groups]
    finally:
        for group in groups:
            ray.util.remove_placement_group(group)
    assert names == [(f"eval_recorder_inbox_trial_{group.id.hex()}",) * 2 for group in groups]


@pytest.mark.slow
def test_a_tune_trials_eval_runner_killed_mid_round_keeps_that_rounds_other_episodes(tmp_path):
    out = open(tmp_path / "tune.out", "w")
    proc = subprocess.Popen([sys.executable, str(SUPPORT / "tune_trial.py"), str(tmp_path / "results"), "3", "0",
                             "1", "3"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def trial_videos() -> Path | None:
        found = list((tmp_path / "results" / "exp").glob("PPO_*/videos"))
        return found[0] if found else None

    try:
        wait_for(lambda: (v := trial_videos()) is not None and len(read_manifest(v)) >= 4 or proc.poll() is not None,
                 400, "round 2's first episode")
        assert proc.poll() is None, (tmp_path / "tune.out").read_text()[-3000:]
        videos = trial_videos()
        first_of_round_2 = read_manifest(videos)[3]
        runner = first_of_round_2["runner"]["pid"]
        os.kill(runner, signal.SIGKILL)
        assert proc.wait(timeout=600) == 0
    finally:
        kill_session(proc)
    output = (tmp_path / "tune.out").read_text()
    assert "trial errors: 0" in output, output[-3000:]
    assert LOST not in output
    manifest = check_folder_is_consistent(videos)
    run_id = manifest[0]["run_id"]
    claim_folder(videos, run_id=run_id, resume=True).release()  # released
    (wandb_run,) = (videos.parent / "wandb").glob(f"offline-run-*-{run_id}")
    assert wandb_exit_codes(wandb_run) == [0]
    assert wandb_video_logs([wandb_run]) == {record["sha256"]: 1 for record in manifest}
    rounds = [(r["training_iteration"], r["evaluation_round"], r["episode_index"]) for r in manifest]
    print("\n", rounds, {r["runner"]["pid"] for r in manifest})
    assert manifest[3] == first_of_round_2  # kept as it was stored when it ended
    assert rounds[:3] == [(1, 1, 0), (1, 1, 1), (1, 1, 2)] and rounds[-3:] == [(3, 3, 0), (3, 3, 1), (3, 3, 2)]
    round_2 = [r for r in manifest if r["evaluation_round"] == 2]
    # Round 2: its first episode, and those the restarted runner played in it (none lost on the way).
    assert [r["episode_index"] for r in round_2] == list(range(len(round_2)))
    assert {r["training_iteration"] for r in round_2} == {2}
    restarted = {r["runner"]["pid"] for r in manifest} - {runner}
    assert len(restarted) == 1
