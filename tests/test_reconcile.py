"""Reconciling the index (sidecars + manifest) with the videos a run has in its folder.

The kill -9 tests kill a real process that stores videos at the exact moment named (a
SIGKILL it sends itself from inside os.link / os.write, see tests/support/storing_child.py)
or at random moments; then ``reconcile_index`` must index every complete video of the run
exactly once.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval_recorder.tags import TrainingTag
from eval_recorder.video_index import MANIFEST, read_manifest, reconcile_index
from eval_recorder.video_store import VideoStore
from helpers import episode, snapshot
from support.videos import decoded_frames, tiny_mp4

CHILD = Path(__file__).parent / "support" / "storing_child.py"
MTIME = 1_790_000_000.25  # 2026-09-21T14:13:20.250+00:00


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recovered(name: str, data: bytes, *, env="flatland", iteration=2, round_=2, episode_index=0, run_id="run1",
              frames=6, width=32, height=24, created="2026-09-21T14:13:20.250+00:00") -> dict:
    """The record reconcile_index makes of a video without sidecar (as the file tells)."""
    return {
        "file": name, "env": env, "training_iteration": iteration, "env_steps": None, "evaluation_round": round_,
        "episode_index": episode_index, "env_seed": None, "episode_length": None, "episode_return": None,
        "agent_returns": None, "frames": frames, "frame_every": None, "fps": 10, "width": width, "height": height,
        "run_id": run_id, "checkpoint": None, "created": created, "bytes": len(data), "sha256": sha(data),
        "weights_seq_no": None, "runner": None, "recovered": True,
    }


def put_video(folder: Path, name: str, data: bytes) -> Path:
    """A final-named video as a crash leaves it: no sidecar, no manifest line."""
    path = folder / name
    path.write_bytes(data)
    os.utime(path, (MTIME, MTIME))
    return path


def assert_index_complete(folder: Path, run_id: str) -> list[dict]:
    """Every final-named mp4 of ``run_id``: decodes, has its sidecar and exactly one
    manifest line, and the sha256 recorded matches the file."""
    manifest = read_manifest(folder)
    videos = sorted(path.name for path in folder.glob(f"*-{run_id}*.mp4") if not path.name.startswith("."))
    assert sorted(record["file"] for record in manifest) == videos  # once each
    for record in manifest:
        data = (folder / record["file"]).read_bytes()
        assert record["sha256"] == sha(data) and decoded_frames(data) == 6
        assert json.loads((folder / record["file"]).with_suffix(".json").read_text()) == record
    return manifest


# ----------------------------------------------------------------------------------------
# What a crash can leave, built by hand


def test_a_video_without_sidecar_is_recovered_marked_and_indexed_once(tmp_path):
    data = tiny_mp4()
    put_video(tmp_path, "flatland-it000002-ev0002-ep000-run1.mp4", data)
    expected = recovered("flatland-it000002-ev0002-ep000-run1.mp4", data)
    assert reconcile_index(tmp_path, run_id="run1") == [expected]
    assert json.loads((tmp_path / "flatland-it000002-ev0002-ep000-run1.json").read_text()) == expected
    assert read_manifest(tmp_path) == [expected]
    before = snapshot(tmp_path)
    assert reconcile_index(tmp_path, run_id="run1") == []  # idempotent
    assert snapshot(tmp_path) == before


def test_names_are_read_whole(tmp_path):
    """Env labels with dashes, a 7-digit iteration, a -2 variant; name order."""
    first, second, third = tiny_mp4(shade=1), tiny_mp4(shade=2), tiny_mp4(shade=3, width=16, height=16, frames=6)
    put_video(tmp_path, "cartpole-v1-it000012-ev0003-ep001-run1.mp4", first)
    put_video(tmp_path, "cartpole-v1-it000012-ev0003-ep001-run1-2.mp4", second)
    put_video(tmp_path, "my_env-it1000000-ev0100-ep010-run1.mp4", third)
    assert reconcile_index(tmp_path, run_id="run1") == [
        recovered("cartpole-v1-it000012-ev0003-ep001-run1-2.mp4", second, env="cartpole-v1", iteration=12,
                  round_=3, episode_index=1),
        recovered("cartpole-v1-it000012-ev0003-ep001-run1.mp4", first, env="cartpole-v1", iteration=12, round_=3,
                  episode_index=1),
        recovered("my_env-it1000000-ev0100-ep010-run1.mp4", third, env="my_env", iteration=1_000_000, round_=100,
                  episode_index=10, width=16, height=16),
    ]


def test_a_sidecar_without_manifest_line_is_appended(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    path, metadata = store.store(episode=episode(mp4=tiny_mp4()), stem="flatland-it000002-ev0002-ep000-run1",
                                 tag=TrainingTag(2, 800), evaluation_round=2, episode_index=0, checkpoint=None)
    (tmp_path / MANIFEST).write_bytes(b"")
    assert reconcile_index(tmp_path, run_id="run1") == [metadata]  # the full record, not a recovered one
    assert read_manifest(tmp_path) == [metadata]
    assert reconcile_index(tmp_path, run_id="run1") == []


def test_a_manifest_line_without_sidecar_gets_its_sidecar_back(tmp_path):
    store = VideoStore(tmp_path, run_id="run1")
    path, metadata = store.store(episode=episode(mp4=tiny_mp4()), stem="flatland-it000002-ev0002-ep000-run1",
                                 tag=TrainingTag(2, 800), evaluation_round=2, episode_index=0, checkpoint=None)
    sidecar = path.with_suffix(".json")
    text = sidecar.read_text()
    sidecar.unlink()
    manifest = (tmp_path / MANIFEST).read_bytes()
    assert reconcile_index(tmp_path, run_id="run1") == []  # nothing new in the manifest
    assert sidecar.read_text() == text
    assert (tmp_path / MANIFEST).read_bytes() == manifest


def test_a_video_that_does_not_decode_fully_is_left_alone_and_logged(tmp_path, caplog):
    data = tiny_mp4()
    cut = put_video(tmp_path, "flatland-it000002-ev0002-ep000-run1.mp4", data[: len(data) * 2 // 3])
    empty = put_video(tmp_path, "flatland-it000003-ev0003-ep000-run1.mp4", b"")
    before = snapshot(tmp_path)
    with caplog.at_level(logging.WARNING, logger="eval_recorder.video_index"):
        assert reconcile_index(tmp_path, run_id="run1") == []
    assert snapshot(tmp_path) == before
    assert [record.getMessage() for record in caplog.records] == [
        f"video {cut} does not decode ([Errno 1094995529] Invalid data found when processing input: "
        f"'avcodec_send_packet()'); left as it is, not indexed",
        f"video {empty} does not decode ([Errno 1094995529] Invalid data found when processing input: "
        f"'{empty}'); left as it is, not indexed",
    ]


def test_other_runs_files_hidden_files_and_non_files_are_never_touched(tmp_path):
    data = tiny_mp4()
    put_video(tmp_path, "flatland-it000001-ev0001-ep000-other7.mp4", data)
    put_video(tmp_path, "flatland-it000001-ev0001-ep000-xrun1.mp4", data)
    put_video(tmp_path, ".flatland-it000001-ev0001-ep000-run1.mp4.k2j3h4.tmp", data)
    put_video(tmp_path, "flatland-it000001-ev0001-ep000-run1.mp4.part", data)
    (tmp_path / "flatland-it000002-ev0002-ep000-run1.mp4").mkdir()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.mp4"
    elsewhere.write_bytes(data)
    (tmp_path / "flatland-it000003-ev0003-ep000-run1.mp4").symlink_to(elsewhere)
    other_sidecar = {"file": "flatland-it000004-ev0004-ep000-run1.mp4", "run_id": "run1-x"}
    put_video(tmp_path, "flatland-it000004-ev0004-ep000-run1.mp4", data)
    (tmp_path / "flatland-it000004-ev0004-ep000-run1.json").write_text(json.dumps(other_sidecar))
    before, names = snapshot(tmp_path), sorted(os.listdir(tmp_path))
    assert reconcile_index(tmp_path, run_id="run1") == []
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == names


# ----------------------------------------------------------------------------------------
# kill -9 of a real process that stores videos


@pytest.fixture
def mp4_files(tmp_path):
    files = []
    for shade in range(3):
        path = tmp_path / f"source-{shade}.mp4"
        path.write_bytes(tiny_mp4(shade=shade))
        files.append(str(path))
    return files


def run_child(folder: Path, mode: str, kill_at: int, first: int, count: int, mp4_files, run_id: str = "run1"):
    return subprocess.run([sys.executable, str(CHILD), str(folder), run_id, mode, str(kill_at), str(first), str(count),
                           *mp4_files], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_killed_right_after_the_video_got_its_name(tmp_path, mp4_files):
    folder = tmp_path / "videos"
    folder.mkdir()
    child = run_child(folder, "after-link", 2, 1, 3, mp4_files)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split() == ["stored", "flatland-it000001-ev0001-ep000-run1.mp4"]
    name = "flatland-it000002-ev0002-ep000-run1.mp4"
    video = folder / name
    assert not video.with_suffix(".json").exists()
    data = video.read_bytes()
    hidden = {path: value for path, value in snapshot(folder).items() if path.startswith(".")}
    created = datetime.datetime.fromtimestamp(video.stat().st_mtime, datetime.timezone.utc)

    added = reconcile_index(folder, run_id="run1")
    assert added == [recovered(name, data, created=created.isoformat(timespec="milliseconds"))]
    manifest = assert_index_complete(folder, "run1")
    assert [record.get("recovered", False) for record in manifest] == [False, True]
    assert {path: value for path, value in snapshot(folder).items() if path.startswith(".")} == hidden
    assert reconcile_index(folder, run_id="run1") == []

    # The resumed run goes on storing; the name taken by the recovered video stays its.
    resumed = run_child(folder, "never", 0, 2, 2, mp4_files)
    assert resumed.stdout.split()[1::2] == ["flatland-it000002-ev0002-ep000-run1-2.mp4",
                                            "flatland-it000003-ev0003-ep000-run1.mp4"]
    assert len(assert_index_complete(folder, "run1")) == 4


def test_killed_after_the_sidecar_before_the_manifest_line(tmp_path, mp4_files):
    folder = tmp_path / "videos"
    folder.mkdir()
    assert run_child(folder, "after-sidecar", 2, 1, 3, mp4_files).returncode == -signal.SIGKILL
    sidecar = json.loads((folder / "flatland-it000002-ev0002-ep000-run1.json").read_text())
    assert reconcile_index(folder, run_id="run1") == [sidecar]
    assert "recovered" not in sidecar
    assert len(assert_index_complete(folder, "run1")) == 2


def test_killed_half_way_through_a_manifest_line(tmp_path, mp4_files):
    folder = tmp_path / "videos"
    folder.mkdir()
    assert run_child(folder, "mid-line", 2, 1, 3, mp4_files).returncode == -signal.SIGKILL
    torn = (folder / MANIFEST).read_bytes()
    assert not torn.endswith(b"\n")
    sidecar = json.loads((folder / "flatland-it000002-ev0002-ep000-run1.json").read_text())
    assert reconcile_index(folder, run_id="run1") == [sidecar]
    assert (folder / MANIFEST).read_bytes() == torn + b"\n" + json.dumps(sidecar, separators=(",", ":")).encode() + b"\n"
    assert len(assert_index_complete(folder, "run1")) == 2


@pytest.mark.slow
def test_killed_at_random_moments_every_video_is_indexed_once(tmp_path, mp4_files):
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = random.Random(11)
    for kill in range(5):
        child = subprocess.Popen([sys.executable, str(CHILD), str(folder), "run1", "never", "0",
                                  str(1000 * (kill + 1)), "999", *mp4_files], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().startswith("stored ")
        time.sleep(rng.uniform(0.0, 0.2))
        child.send_signal(signal.SIGKILL)
        child.wait()
        reconcile_index(folder, run_id="run1")
        assert_index_complete(folder, "run1")
    assert reconcile_index(folder, run_id="run1") == []
