"""The folder guard with real OS locks held by real processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from eval_recorder.errors import FolderRefused
from eval_recorder.folder_guard import LOCK_FILE, OWNER_FILE, claim_folder
from helpers import in_use_message, snapshot

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
    assert str(refused.value) == in_use_message(folder, "run1", proc.pid)
    assert snapshot(folder) == before


def test_folder_of_another_live_run_is_named_as_live_before_anything_is_written(tmp_path, holder):
    """While run other7 lives, resuming it would be refused too: the advice is to choose
    another folder or wait for it."""
    folder = tmp_path / "videos"
    proc = holder(folder, "other7")
    (folder / "flatland-it000001-ev0001-ep000-other7.mp4").write_bytes(b"their video")
    before = snapshot(folder)
    for resume in (False, True):
        with pytest.raises(FolderRefused) as refused:
            claim_folder(folder, run_id="mine", resume=resume)
        assert str(refused.value) == in_use_message(folder, "other7", proc.pid)
    assert snapshot(folder) == before


def test_folder_of_another_ended_run_is_refused_before_anything_is_written(tmp_path, holder):
    folder = tmp_path / "videos"
    proc = holder(folder, "other7")
    proc.kill()
    proc.wait()
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


CLAIM_IN_A_SECOND_PROCESS = textwrap.dedent("""
    import sys
    from eval_recorder.errors import FolderRefused
    from eval_recorder.folder_guard import claim_folder
    try:
        claim_folder(sys.argv[1], run_id=sys.argv[2], resume=True)
    except FolderRefused as refused:
        print(refused)
    else:
        print("claimed")
""")


def test_deleting_the_lock_file_under_a_live_run_keeps_every_other_process_out(tmp_path, holder):
    folder = tmp_path / "videos"
    proc = holder(folder, "run1")
    (folder / LOCK_FILE).unlink()
    before = snapshot(folder)
    second = subprocess.run([sys.executable, "-c", CLAIM_IN_A_SECOND_PROCESS, str(folder), "run1"],
                            capture_output=True, text=True, timeout=60)
    assert second.stdout.strip() == (
        f"video folder {folder} is in use by another live process (pid {proc.pid}, host {HOST}) whose lock file "
        f".eval_recorder.lock is missing or damaged; choose another recording.video_dir, or wait for that process "
        f"to end."
    ), second.stderr
    with pytest.raises(FolderRefused):  # nor this process
        claim_folder(folder, run_id="run1", resume=True)
    assert snapshot(folder) == before  # the lock file is not made again by a refused claim
    assert not (folder / LOCK_FILE).exists()

    proc.kill()
    proc.wait()
    claim = claim_folder(folder, run_id="run1", resume=True)  # the holder is gone: the folder is free
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    claim.release()


def test_a_second_process_is_refused_with_the_lock_file_in_place(tmp_path, holder):
    folder = tmp_path / "videos"
    proc = holder(folder, "run1")
    second = subprocess.run([sys.executable, "-c", CLAIM_IN_A_SECOND_PROCESS, str(folder), "run1"],
                            capture_output=True, text=True, timeout=60)
    assert second.stdout.strip() == in_use_message(folder, "run1", proc.pid), second.stderr


def test_release_frees_the_folder_for_the_next_claim(tmp_path):
    folder = tmp_path / "videos"
    claim = claim_folder(folder, run_id="run1", resume=False)
    claim.release()
    claim.release()  # safe twice
    claim_folder(folder, run_id="run1", resume=True).release()


@pytest.mark.parametrize("content, why", [
    (b"", "empty"),
    (b'{\n  "run_id": "run1",\n  "ho', "not valid JSON"),
    (b"\x00\x9f\xff garbage", "not valid JSON"),
    (b'["run1"]', "not a JSON object"),
    (b'{"host": "gpu3", "pid": 4}', "no run_id in it"),
    (b'{"run_id": ""}', "no run_id in it"),
])
@pytest.mark.parametrize("run_id, resume", [("run1", True), ("other7", False)])
def test_a_damaged_owner_record_is_refused_and_nothing_is_written(tmp_path, content, why, run_id, resume):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / OWNER_FILE).write_bytes(content)
    (folder / "flatland-it000001-ev0001-ep000-run1.mp4").write_bytes(b"a video")
    before = snapshot(folder)
    with pytest.raises(FolderRefused) as refused:
        claim_folder(folder, run_id=run_id, resume=resume)
    assert str(refused.value) == (
        f"the owner record {folder / OWNER_FILE} is damaged ({why}); restore it from a backup, or delete it if no "
        f"other run uses video folder {folder} (each video's name carries its run id), or choose another "
        f"recording.video_dir."
    )
    assert snapshot(folder) == before
    assert sorted(os.listdir(folder)) == [OWNER_FILE, "flatland-it000001-ev0001-ep000-run1.mp4"]  # no lock file


def test_an_unreadable_owner_record_is_refused(tmp_path):
    folder = tmp_path / "videos"
    (folder / OWNER_FILE).mkdir(parents=True)
    with pytest.raises(FolderRefused) as refused:
        claim_folder(folder, run_id="run1", resume=True)
    assert str(refused.value) == (
        f"the owner record {folder / OWNER_FILE} is a folder, not a regular file, and nothing outside a video folder "
        f"is ever written or trusted, so video folder {folder} is refused; put the regular file in its place or "
        f"remove it, or choose another recording.video_dir.")
    assert os.listdir(folder) == [OWNER_FILE]
    (folder / OWNER_FILE).rmdir()
    (folder / OWNER_FILE).write_bytes(b'{"run_id": "run1"}')
    (folder / OWNER_FILE).chmod(0o000)
    if os.access(folder / OWNER_FILE, os.R_OK):
        return  # root reads it anyway
    with pytest.raises(FolderRefused) as refused:
        claim_folder(folder, run_id="run1", resume=True)
    assert str(refused.value).startswith(
        f"the owner record {folder / OWNER_FILE} is damaged (cannot be read: Permission denied); restore it from")


@pytest.mark.parametrize("below", ["", "videos"])
def test_a_symlink_loop_is_refused_in_one_sentence(tmp_path, below):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    target = tmp_path / "a" / below if below else tmp_path / "a"
    with pytest.raises(FolderRefused) as refused:
        claim_folder(target, run_id="run1", resume=False)
    assert str(refused.value) == (
        f"recording.video_dir {target} cannot be resolved to a folder (a symlink loop); "
        f"choose another recording.video_dir."
    )
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_where_a_folder_cannot_be_locked_the_lock_file_still_guards(tmp_path, holder, monkeypatch, caplog):
    """Simulated: NFS emulates flock with byte-range locks, which refuse a folder's descriptor (EBADF)."""
    import errno
    import fcntl
    import stat

    real_flock = fcntl.flock

    def flock(fd, operation):
        if stat.S_ISDIR(os.fstat(fd).st_mode) and operation & fcntl.LOCK_EX:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    folder = tmp_path / "videos"
    claim = claim_folder(folder, run_id="run1", resume=False)
    assert [r.getMessage() for r in caplog.records] == [
        f"the filesystem of {folder} cannot lock a folder (Bad file descriptor); only .eval_recorder.lock guards "
        f"it, so do not delete that file while the run is live"
    ]
    with pytest.raises(FolderRefused) as refused:
        claim_folder(folder, run_id="run1", resume=True)
    assert str(refused.value) == in_use_message(folder, "run1", os.getpid())
    claim.release()


def test_a_full_disk_refuses_a_first_claim_in_one_sentence_and_lets_its_run_resume(tmp_path):
    from support.filesystems import fill, small_tmpfs

    with small_tmpfs(tmp_path / "disk", 256 * 1024) as disk:
        ours = disk / "ours"
        claim_folder(ours, run_id="run1", resume=False).release()
        filler = fill(disk, leave_bytes=0)
        claim_folder(ours, run_id="run1", resume=True).release()  # resuming needs no new space

        theirs = disk / "theirs"
        with pytest.raises(FolderRefused) as refused:
            claim_folder(theirs, run_id="run2", resume=False)
        assert str(refused.value) == (
            f"cannot create or open video folder {theirs} (No space left on device); "
            f"choose a writable recording.video_dir."
        )
        assert os.listdir(theirs) == [LOCK_FILE]  # no owner record, not even a part of one
        filler.unlink()
        claim_folder(theirs, run_id="run2", resume=False).release()
