"""The folder guard with real OS locks held by real processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from eval_recorder.folder_guard import LOCK_FILE, OWNER_FILE, FolderRefused, claim_folder
from helpers import snapshot

HOST = socket.gethostname()


@pytest.fixture
def holder():
    """Start a process that claims a folder for a run id and keeps it until killed."""
    started = []

    def start(folder, run_id):
        code = textwrap.dedent(f"""
            import sys, time
            from eval_recorder.folder_guard import claim_folder
            claim_folder({str(folder)!r}, run_id={run_id!r}, resume=True)
            print("claimed", flush=True)
            time.sleep(600)
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "claimed"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_first_claim_writes_owner_and_lock(tmp_path):
    folder = tmp_path / "videos"
    claim = claim_folder(folder, run_id="run1", resume=False)
    owner = json.loads((folder / OWNER_FILE).read_text())
    assert {k: owner[k] for k in ("run_id", "host", "pid")} == {"run_id": "run1", "host": HOST, "pid": os.getpid()}
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    claim.release()


def test_live_holder_is_refused_and_named(tmp_path, holder):
    folder = tmp_path / "videos"
    proc = holder(folder, "run1")
    before = snapshot(folder)
    with pytest.raises(FolderRefused) as refused:
        claim_folder(folder, run_id="run1", resume=True)
    assert str(refused.value) == (
        f"video folder {folder} is in use by run run1 (host {HOST}, pid {proc.pid}); choose another "
        f"recording.video_dir, or wait for that run to end and resume it with recording.resume=true."
    )
    assert snapshot(folder) == before


def test_folder_of_another_run_is_refused_before_anything_is_written(tmp_path, holder):
    folder = tmp_path / "videos"
    proc = holder(folder, "other7")
    (folder / "flatland-it000001-ev0001-ep000-other7.mp4").write_bytes(b"their video")
    before = snapshot(folder)
    with pytest.raises(FolderRefused) as refused:
        claim_folder(folder, run_id="mine", resume=False)
    assert str(refused.value) == (
        f"video folder {folder} belongs to run other7 (host {HOST}, pid {proc.pid}); choose another "
        f"recording.video_dir, or resume that run with recording.resume=true wandb.run_id=other7."
    )
    assert snapshot(folder) == before


def test_lock_of_a_killed_process_is_free_and_its_run_can_resume(tmp_path, holder):
    folder = tmp_path / "videos"
    proc = holder(folder, "run1")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    claim = claim_folder(folder, run_id="run1", resume=True)
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert json.loads((folder / OWNER_FILE).read_text())["pid"] == proc.pid  # the owner record stays
    claim.release()


def test_same_run_without_resume_is_refused(tmp_path):
    folder = tmp_path / "videos"
    claim_folder(folder, run_id="run1", resume=False).release()
    with pytest.raises(FolderRefused) as refused:
        claim_folder(folder, run_id="run1", resume=False)
    assert str(refused.value) == (
        f"video folder {folder} already holds videos of run run1; to continue that run set "
        f"recording.resume=true, or choose another recording.video_dir."
    )


def test_a_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my notes")
    with pytest.raises(FolderRefused) as refused:
        claim_folder(path, run_id="run1", resume=False)
    assert str(refused.value) == f"recording.video_dir {path} is a file, not a folder; choose another recording.video_dir."
    assert path.read_bytes() == b"my notes"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_folder_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "videos"
    with pytest.raises(FolderRefused) as refused:
        claim_folder(target, run_id="run1", resume=False)
    assert str(refused.value) == (
        f"cannot create or open video folder {target} (Not a directory); choose a writable recording.video_dir."
    )


def test_a_symlink_into_another_runs_folder_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    claim_folder(theirs, run_id="other7", resume=False).release()
    link = tmp_path / "mine"
    link.symlink_to(theirs)
    before = snapshot(theirs)
    with pytest.raises(FolderRefused) as refused:
        claim_folder(link, run_id="mine", resume=False)
    assert str(refused.value).startswith(f"video folder {theirs} belongs to run other7 (host {HOST}, pid ")
    assert snapshot(theirs) == before
