"""A folder that cannot take a video: full (a real, small tmpfs), read-only, immutable, gone.

Whatever fails, ``VideoStore.store`` raises StoreFailed (one sentence: which folder, what
happened, how much is needed) and leaves the folder byte for byte as it was, except a
video that already had its final name: it stays, and its sidecar and manifest line
follow once the folder takes writes again. The faults are real where the machine allows
(root: mount, chattr); see tests/support/filesystems.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile

import pytest

from eval_recorder.errors import StoreFailed
from eval_recorder.tags import TrainingTag
from eval_recorder.video_index import MANIFEST, read_manifest, reconcile_index
from eval_recorder.video_store import VideoStore
from helpers import episode, snapshot
from support.filesystems import fill, immutable, read_only, small_tmpfs
from support.videos import tiny_mp4

FIRST = "flatland-it000001-ev0001-ep000-run1"
STEM = "flatland-it000002-ev0002-ep000-run1"
PAGE = 4096


def store_one(store, stem=STEM, **kw):
    args = dict(episode=episode(), stem=stem, tag=TrainingTag(2, 800), evaluation_round=2, episode_index=0,
                checkpoint=None)
    args.update(kw)
    return store.store(**args)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_line(metadata: dict) -> bytes:
    return json.dumps(metadata, separators=(",", ":")).encode() + b"\n"


@pytest.fixture
def disk(tmp_path):
    """A 1 MiB tmpfs holding an empty video folder ``videos/``."""
    with small_tmpfs(tmp_path / "disk", 1 << 20) as mount:
        (mount / "videos").mkdir()
        yield mount


def test_a_video_that_does_not_fit_leaves_nothing_and_is_stored_when_space_returns(disk):
    folder = disk / "videos"
    store = VideoStore(folder, run_id="run1")
    store_one(store, stem=FIRST)
    filler = fill(disk, leave_bytes=16 * PAGE)
    before = snapshot(folder)
    big = episode(mp4=os.urandom(200_000))
    with pytest.raises(StoreFailed) as failed:
        store_one(store, episode=big)
    error = failed.value
    assert snapshot(folder) == before  # no temporary file, no sidecar, no manifest line
    assert (error.reason, error.errno, error.folder, error.free_bytes, error.video, error.metadata) == (
        "full", errno.ENOSPC, folder, 16 * PAGE, None, None)
    assert not store.can_store(len(big.mp4))

    filler.unlink()
    assert store.can_store(len(big.mp4))
    path, metadata = store_one(store, episode=big)
    assert path.name == f"{STEM}.mp4" and path.read_bytes() == big.mp4
    sidecar_bytes = path.with_suffix(".json").stat().st_size
    assert error.needed_bytes == len(big.mp4) + sidecar_bytes + len(manifest_line(metadata))
    assert str(error) == (
        f"video folder {folder} is full: storing {STEM}.mp4 needs {error.needed_bytes / 1e3:.1f} kB, "
        f"65.5 kB are free; the video was not stored."
    )
    assert [r["file"] for r in read_manifest(folder)] == [f"{FIRST}.mp4", f"{STEM}.mp4"]


def test_a_sidecar_that_does_not_fit_keeps_the_video_and_the_next_store_indexes_it(disk):
    folder = disk / "videos"
    store = VideoStore(folder, run_id="run1")
    store_one(store, stem=FIRST)
    mp4 = tiny_mp4()
    filler = fill(disk, leave_bytes=PAGE)  # the video fits, its sidecar does not
    before = snapshot(folder)
    with pytest.raises(StoreFailed) as failed:
        store_one(store, episode=episode(mp4=mp4))
    error = failed.value
    video = folder / f"{STEM}.mp4"
    assert snapshot(folder) == {**before, video.name: sha(mp4)}  # the video, under its final name, and nothing else
    assert (error.reason, error.video, error.metadata["sha256"], error.free_bytes) == ("full", video, sha(mp4), 0)
    assert store.unindexed == [video]
    assert str(error) == (
        f"video folder {folder} is full: the sidecar and manifest line of {video.name} need "
        f"{error.needed_bytes / 1e3:.1f} kB, 0 bytes are free; the video is stored; its sidecar and manifest "
        f"line follow when the folder takes writes again."
    )
    with pytest.raises(StoreFailed) as still_full:  # another episode while the disk is still full
        store_one(store, stem="flatland-it000002-ev0002-ep001-run1", episode_index=1)
    assert still_full.value.video is None and "the video was not stored." in str(still_full.value)
    assert snapshot(folder) == {**before, video.name: sha(mp4)}

    filler.unlink()
    later, _ = store_one(store, stem="flatland-it000002-ev0002-ep001-run1", episode_index=1)
    assert store.unindexed == []
    assert json.loads(video.with_suffix(".json").read_text()) == error.metadata  # the full record, not a recovered one
    assert [r["file"] for r in read_manifest(folder)] == [f"{FIRST}.mp4", video.name, later.name]
    assert reconcile_index(folder, run_id="run1") == []


def test_a_manifest_line_that_does_not_fit_is_added_by_reconcile_after_a_restart(disk):
    folder = disk / "videos"
    store = VideoStore(folder, run_id="run1")
    mp4 = tiny_mp4()
    filler = fill(disk, leave_bytes=2 * PAGE)  # the video and its sidecar fit; a new manifest does not
    with pytest.raises(StoreFailed) as failed:
        store_one(store, episode=episode(mp4=mp4))
    video = folder / f"{STEM}.mp4"
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert failed.value.video == video and sidecar == failed.value.metadata
    assert (folder / MANIFEST).read_bytes() == b""  # created, but no (part of a) line in it
    filler.unlink()
    # The process died: a new one reconciles the folder.
    assert reconcile_index(folder, run_id="run1") == [sidecar]
    assert read_manifest(folder) == [sidecar]


@pytest.mark.parametrize("fault", ["read-only mount", "immutable folder"])
def test_an_unwritable_folder_leaves_nothing_and_storing_works_again_after(tmp_path, fault):
    folder = tmp_path / "videos"
    folder.mkdir()
    store = VideoStore(folder, run_id="run1")
    store_one(store, stem=FIRST)
    before = snapshot(folder)
    make_unwritable, code = {"read-only mount": (read_only, errno.EROFS), "immutable folder": (immutable, errno.EPERM)}[fault]
    with make_unwritable(folder):
        with pytest.raises(StoreFailed) as failed:
            store_one(store)
    assert snapshot(folder) == before
    assert (failed.value.reason, failed.value.errno, failed.value.video) == ("unwritable", code, None)
    assert str(failed.value) == (
        f"video folder {folder} cannot be written ({os.strerror(code)}); the video was not stored."
    )
    path, _ = store_one(store)
    assert path.name == f"{STEM}.mp4"


def test_a_folder_without_write_permission_is_unwritable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions; the read-only mount and the immutable folder cover EROFS/EPERM")
    folder = tmp_path / "videos"
    folder.mkdir()
    before = snapshot(folder)
    folder.chmod(0o500)
    try:
        with pytest.raises(StoreFailed) as failed:
            store_one(VideoStore(folder, run_id="run1"))
    finally:
        folder.chmod(0o755)
    assert snapshot(folder) == before
    assert str(failed.value) == f"video folder {folder} cannot be written (Permission denied); the video was not stored."


def test_a_deleted_folder_is_not_recreated(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    store = VideoStore(folder, run_id="run1")
    folder.rmdir()
    with pytest.raises(StoreFailed) as failed:
        store_one(store)
    assert (failed.value.reason, failed.value.errno) == ("unwritable", errno.ENOENT)
    assert str(failed.value) == f"video folder {folder} no longer exists; the video was not stored."
    assert os.listdir(tmp_path) == []
    assert not store.can_store(10)


def test_a_full_disk_reported_only_at_fsync_leaves_nothing(tmp_path, monkeypatch):
    """Simulated, and runs everywhere: filesystems with delayed allocation (ext4, XFS) and
    NFS may accept the writes and report ENOSPC only when the data is flushed."""
    store = VideoStore(tmp_path, run_id="run1")
    store_one(store, stem=FIRST)
    before = snapshot(tmp_path)
    real_fsync = os.fsync

    def fsync(fd):
        if f"{STEM}.mp4." in os.readlink(f"/proc/self/fd/{fd}"):  # the video's temporary file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    big = episode(mp4=b"\0" * 5000)
    with pytest.raises(StoreFailed) as failed:
        store_one(store, episode=big)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    assert (failed.value.reason, failed.value.video) == ("full", None)
    assert str(failed.value).startswith(f"video folder {tmp_path} is full: storing {STEM}.mp4 needs 6.")


def test_a_torn_append_is_taken_back(tmp_path, monkeypatch):
    """Simulated: the disk fills up in the middle of the manifest line (a short write)."""
    store = VideoStore(tmp_path, run_id="run1")
    store_one(store, stem=FIRST)
    manifest = (tmp_path / MANIFEST).read_bytes()
    real_write = os.write
    calls = []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(MANIFEST):
            calls.append(len(data))
            if len(calls) == 1:
                return real_write(fd, bytes(data[:40]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(StoreFailed) as failed:
        store_one(store)
    monkeypatch.undo()
    assert (tmp_path / MANIFEST).read_bytes() == manifest
    assert failed.value.video == tmp_path / f"{STEM}.mp4"
    assert reconcile_index(tmp_path, run_id="run1") == [failed.value.metadata]


@pytest.mark.parametrize("code, reason, problem", [
    (errno.EDQUOT, "full", "is over its disk quota: storing {stem}.mp4 needs 2.3 kB"),
    (errno.EACCES, "unwritable", "cannot be written (Permission denied)"),
    (errno.EIO, "failed", "could not be written (Input/output error)"),
])
def test_every_os_error_is_one_store_failed(tmp_path, monkeypatch, code, reason, problem):
    """Simulated at the creation of the temporary file (no quota or broken disk here)."""
    def mkstemp(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(StoreFailed) as failed:
        store_one(VideoStore(tmp_path, run_id="run1"), episode=episode(mp4=b"\0" * 1000))
    assert (failed.value.reason, failed.value.errno) == (reason, code)
    assert str(failed.value) == f"video folder {tmp_path} {problem.format(stem=STEM)}; the video was not stored."
    assert os.listdir(tmp_path) == []
