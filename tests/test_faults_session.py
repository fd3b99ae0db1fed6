"""The driver's RecordingSession under faults, without Ray: a full folder and the memory
budget for the videos waiting for it, a closed session, and the wandb catch-up at resume."""

from __future__ import annotations

import logging
import time

from eval_recorder.options import RecordingOptions
from eval_recorder.session import RecordingSession
from eval_recorder.tags import TrainingTag
from eval_recorder.video_index import read_manifest
from eval_recorder.video_store import VideoStore
from eval_recorder.wandb_history import logged_videos, run_logs
from helpers import episode
from support.filesystems import fill, small_tmpfs
from wandb_offline import run_records


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "eval_recorder.session"]


def test_videos_waiting_for_a_full_folder_stay_within_their_memory_budget(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with small_tmpfs(tmp_path / "fs", 4 * 1024 * 1024) as filesystem:
        videos = filesystem / "videos"
        session = RecordingSession(RecordingOptions(video_dir=str(videos), run_id="budget1", wandb_mode="disabled",
                                                    unstored_budget_mb=1)).open()
        filler = fill(filesystem, 64 * 1024)
        session.begin_round()
        for number in range(3):  # 600 kB each: the 1 MB budget holds one
            assert session.publish(episode(mp4=bytes([number]) * 600_000), TrainingTag(1, 100)) is None
        assert (len(session.unstored), session.dropped) == (1, 2)
        filler.unlink()
        stored = session.publish(episode(mp4=b"\x03" * 600_000), TrainingTag(1, 100))
        assert stored is not None
        assert [(r["episode_index"], r["bytes"]) for r in read_manifest(videos)] == [(2, 600_000), (3, 600_000)]
        session.close()
    said = _messages(caplog)
    assert said[0].startswith(f"video folder {videos} is full: storing flatland-it000001-ev0001-ep000-budget1.mp4 "
                              f"needs 601.")
    assert said[1:] == [
        f"the 1 MB kept in memory for videos the video folder {videos} cannot take are used up: the oldest waiting "
        f"videos are dropped (lost) until the folder takes writes again",
        f"video folder {videos} takes videos again",
        f"2 videos could not be stored in {videos} (the folder is full or unwritable) and are lost with this process",
    ]


def test_a_closed_session_writes_nothing(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    videos = tmp_path / "videos"
    session = RecordingSession(RecordingOptions(video_dir=str(videos), run_id="closed1", wandb_mode="disabled")).open()
    session.begin_round()
    session.close(exit_code=143)
    before = sorted(path.name for path in videos.iterdir())
    assert session.closed and session.publish(episode(), TrainingTag(1, 100)) is None
    assert session.end_round() == []
    session.log_training({"train/return_mean": 1.0}, step=1)
    assert sorted(path.name for path in videos.iterdir()) == before
    assert _messages(caplog) == ["an episode of 41 steps arrived after the recording session closed; it is not stored"]


def test_a_resumed_session_logs_to_wandb_the_videos_an_earlier_process_stored_but_never_logged(tmp_path):
    videos, wandb_dir = tmp_path / "videos", tmp_path / "wandb_home"
    options = dict(video_dir=str(videos), run_id="catch1", wandb_mode="offline", wandb_dir=str(wandb_dir))
    first = RecordingSession(RecordingOptions(**options)).open()
    first.begin_round()
    for number in range(2):
        first.publish(episode(mp4=bytes([number]) * 1000), TrainingTag(1, 100))
    first.end_round()
    first.close()
    # A third video reached the folder (with its index), then the process died before wandb got it.
    VideoStore(videos, run_id="catch1").store(
        episode=episode(mp4=b"\x07" * 1000), stem="flatland-it000002-ev0002-ep000-catch1", tag=TrainingTag(2, 200),
        evaluation_round=2, episode_index=0, checkpoint=None)
    (first_log,) = run_logs(wandb_dir, "catch1")
    list(run_records(first_log.parent))  # wait until wandb wrote the first run's log
    time.sleep(1.1)  # wandb names a run's folder after the second it started in

    resumed = RecordingSession(RecordingOptions(**options, resume=True)).open()
    assert [r["file"] for r in resumed.caught_up] == ["flatland-it000002-ev0002-ep000-catch1.mp4"]
    resumed.close()
    time.sleep(1.1)
    again = RecordingSession(RecordingOptions(**options, resume=True)).open()  # nothing left to catch up
    assert again.caught_up == []
    again.close()
    logs = run_logs(wandb_dir, "catch1")
    assert len(logs) == 3
    for log in logs:
        list(run_records(log.parent))
    manifest = read_manifest(videos)
    assert logged_videos(logs) == {r["sha256"]: 1 for r in manifest} and len(manifest) == 3
