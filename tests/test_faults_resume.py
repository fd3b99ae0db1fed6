"""A run killed (SIGKILL) at the moment it publishes a video, then resumed, for real; and
the folder's own records damaged under or after a run (lock file deleted, owner record cut
short, a torn manifest line).

After the resume the index is complete (every video of the run has its sidecar and exactly
one manifest line, a torn line swallows nothing) and wandb has every video exactly once
over the killed run and the resumed one: the resumed run reads what the killed run's wandb
transaction log holds and logs the rest."""

from __future__ import annotations

import collections
import json
import signal
import socket

import pytest

from eval_recorder.folder_guard import LOCK_FILE, OWNER_FILE
from eval_recorder.video_index import MANIFEST, read_manifest
from support.jobs import (
    check_folder_is_consistent,
    jobs,  # noqa: F401  (a fixture)
    wait_for,
    wandb_exit_codes,
    wandb_runs,
)
from eval_recorder.wandb_history import logged_videos, run_logs

pytestmark = pytest.mark.slow

HOST = socket.gethostname()
TORN = b'{"file":"flatland-it000009-ev0009-ep000-resume1.mp4","training_itera'


@pytest.mark.parametrize("moment", ["after-link", "after-wandb"])
def test_killed_at_the_publish_moment_then_resumed(tmp_path, jobs, moment):
    videos, run_id = tmp_path / "videos", "resume1"
    common = (f"recording.video_dir={videos}", f"wandb.run_id={run_id}", "training.checkpoint_every=1")
    # Killed as it publishes video 3: the first of round 2 (iteration 2).
    first = jobs(tmp_path, "first", "training.iterations=50", *common, wrapper=("kill_at_publish.py", moment, "3"))
    assert first.wait(timeout=600) == -signal.SIGKILL, first.stderr[-3000:]
    first.cleanup()  # after a kill -9 of the driver Ray's agents outlive it for a while
    killed_video = sorted(videos.glob("flatland-it000002-*.mp4"))
    assert [path.name for path in killed_video] == [f"flatland-it000002-ev0002-ep000-{run_id}.mp4"]
    if moment == "after-link":  # it has no index entries yet
        assert not killed_video[0].with_suffix(".json").exists()
        assert killed_video[0].name not in {r["file"] for r in read_manifest(videos)}
    else:  # a crash in the middle of appending a manifest line leaves a torn last line
        with open(videos / MANIFEST, "ab") as manifest:
            manifest.write(TORN)
    (killed_wandb,) = wandb_runs(first.run_dir, run_id)
    assert wandb_exit_codes(killed_wandb, wait_s=1) == []  # never finished

    resumed = jobs(tmp_path, "resumed", "training.iterations=2", *common, "recording.resume=true")
    assert resumed.wait(timeout=600) == 0, resumed.stderr[-3000:]
    assert f"resuming run {run_id} from {tmp_path / 'first' / 'checkpoints' / 'it000001'}" in resumed.stdout

    manifest = check_folder_is_consistent(videos)
    # The index is complete: every mp4 of the run has its sidecar and one manifest line.
    files = sorted(path.name for path in videos.glob("*.mp4"))
    assert sorted(r["file"] for r in manifest) == files
    assert all(path.with_suffix(".json").is_file() for path in videos.glob("*.mp4"))
    assert [(r["training_iteration"], r["evaluation_round"], r["episode_index"]) for r in manifest] == [
        (1, 1, 0), (1, 1, 1), (2, 2, 0), (2, 3, 0), (2, 3, 1)]
    killed_record = manifest[2]
    assert killed_record["file"] == killed_video[0].name
    assert killed_record.get("recovered") is (True if moment == "after-link" else None)
    if moment == "after-wandb":  # the torn line stayed a line of its own, the next record after it
        data = (videos / MANIFEST).read_bytes()
        assert TORN + b"\n" + b'{"file":"flatland-it000002-ev0003-ep000-' in data
    # wandb: each video once over both runs; the resumed run logged what the killed one had not.
    # The resumed run writes next to the killed one (one `wandb sync` uploads both).
    assert not (resumed.run_dir / "wandb").exists()
    assert wandb_runs(first.run_dir, run_id)[0] == killed_wandb
    (resumed_wandb,) = wandb_runs(first.run_dir, run_id)[1:]
    assert wandb_exit_codes(resumed_wandb) == [0]
    killed_log, resumed_log = run_logs(first.run_dir, run_id)
    in_killed = logged_videos([killed_log])
    in_resumed = logged_videos([resumed_log])
    assert in_killed + in_resumed == collections.Counter(r["sha256"] for r in manifest)
    if moment == "after-link":
        # wandb writes a step's row when the next step begins: iteration 1's row was still
        # waiting in the killed process, so its log holds no video; the resumed run logged them.
        assert in_killed == collections.Counter()
    print(f"\nkilled {moment}: its wandb log held {sum(in_killed.values())} of the 3 videos it stored; "
          f"the resumed run logged {sum(in_resumed.values()) - 2} of them")


def test_a_deleted_lock_file_lets_no_second_run_in_and_a_damaged_owner_record_is_refused(tmp_path, jobs):
    videos = tmp_path / "videos"
    live = jobs(tmp_path, "live", "training.iterations=50", f"recording.video_dir={videos}", "wandb.run_id=ownerA")
    wait_for(lambda: len(read_manifest(videos)) >= 2 or not live.running(), 300, "round 1")
    assert live.running(), live.stderr[-3000:]
    (videos / LOCK_FILE).unlink()

    second = jobs(tmp_path, "second", f"recording.video_dir={videos}", "wandb.run_id=ownerA", "recording.resume=true")
    assert second.wait(timeout=120) == 2
    assert second.last_error_line == (
        f"error: video folder {videos} is in use by another live process (pid {live.pid}, host {HOST}) whose lock "
        f"file {LOCK_FILE} is missing or damaged; choose another recording.video_dir, or wait for that process to "
        f"end.")
    assert "starting Ray" not in second.stdout
    assert len(read_manifest(videos)) >= 2 and live.running()  # the live run went on

    live.signal(signal.SIGTERM)
    assert live.wait(timeout=120) == 143
    before = {path.name: path.read_bytes() for path in videos.iterdir() if path.is_file()}
    owner = videos / OWNER_FILE
    owner.write_bytes(before[OWNER_FILE][: len(before[OWNER_FILE]) // 2])  # cut short
    third = jobs(tmp_path, "third", f"recording.video_dir={videos}", "wandb.run_id=ownerA", "recording.resume=true")
    assert third.wait(timeout=120) == 2
    assert third.last_error_line == (
        f"error: the owner record {owner} is damaged (not valid JSON); restore it from a backup, or delete it if no "
        f"other run uses video folder {videos} (each video's name carries its run id), or choose another "
        f"recording.video_dir.")
    after = {path.name: path.read_bytes() for path in videos.iterdir() if path.is_file()}
    assert after == {**before, OWNER_FILE: before[OWNER_FILE][: len(before[OWNER_FILE]) // 2]}  # nothing touched
    assert json.loads(before[OWNER_FILE])["run_id"] == "ownerA"
