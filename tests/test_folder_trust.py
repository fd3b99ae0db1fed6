"""Trusting nothing outside the video folder, finding videos altered after they were stored,
and one run id per run: real symlinks, fifos, real sessions and real runs of run_eval.py."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, run_eval_command
from eval_recorder import RecordingOptions
from eval_recorder.atomic_files import open_regular
from eval_recorder.errors import FolderRefused
from eval_recorder.folder_guard import LOCK_FILE, OWNER_FILE, claim_folder, folder_owner
from eval_recorder.gallery import GALLERY
from eval_recorder.session import RecordingSession
from eval_recorder.tags import TrainingTag
from eval_recorder.training_record import TRAINING
from eval_recorder.video_index import MANIFEST, append_record, read_manifest, read_marks
from helpers import episode, snapshot
from support.videos import tiny_mp4

FIRST = "flatland-it000001-ev0001-ep000-run1"
SECOND = "flatland-it000001-ev0001-ep001-run1"
ROLES = {LOCK_FILE: "lock file", OWNER_FILE: "owner record", MANIFEST: "manifest", GALLERY: "gallery",
         TRAINING: "training record", f"{FIRST}.json": "sidecar", f"{SECOND}.jpg": "poster"}


def untrusted(folder: Path, name: str, kind: str) -> str:
    """The refusal of ``folder`` whose control file ``name`` is ``kind``."""
    return (f"the {ROLES[name]} {folder / name} is {kind}, not a regular file, and nothing outside a video folder is "
            f"ever written or trusted, so video folder {folder} is refused; put the regular file in its place or "
            f"remove it, or choose another recording.video_dir.")


def listing(folder: Path) -> dict[str, object]:
    """{name: bytes of a regular file, or ("link", target), or the kind} of ``folder``'s
    entries, nothing followed."""
    found = {}
    for entry in os.scandir(folder):
        if entry.is_symlink():
            found[entry.name] = ("link", os.readlink(entry.path))
        elif entry.is_file(follow_symlinks=False):
            found[entry.name] = Path(entry.path).read_bytes()
        else:
            found[entry.name] = "not a file"
    return found


def options(videos: Path, **more) -> RecordingOptions:
    return RecordingOptions(video_dir=str(videos), run_id="run1", wandb_mode="disabled", **more)


def record_two_videos(videos: Path) -> dict[str, bytes]:
    """A finished run run1 in ``videos``: two real videos with sidecars, posters, manifest,
    gallery, training record, owner record and lock file; the videos' bytes by name."""
    with RecordingSession(options(videos)).open() as session:
        session.begin_round()
        for shade in (0, 1):
            session.publish(episode(mp4=tiny_mp4(shade=shade)), TrainingTag(1, 400))
        session.end_round()
        session.log_training({"train/return_mean": -3.0, "env_steps": 400}, step=1)
    names = [f"{FIRST}.mp4", f"{SECOND}.mp4"]
    assert {name for name in ROLES} | set(names) | {f"{FIRST}.jpg", f"{SECOND}.json"} == set(os.listdir(videos))
    return {name: (videos / name).read_bytes() for name in names}


# ----------------------------------------------------------------------------------------
# 4. Nothing outside the folder is ever written or trusted


@pytest.mark.parametrize("name", list(ROLES))
def test_a_control_file_symlinked_outside_refuses_the_folder_and_the_outside_file_keeps_its_bytes(tmp_path, name):
    videos = tmp_path / "videos"
    record_two_videos(videos)
    outside = tmp_path / f"outside-{name}"
    outside.write_bytes((videos / name).read_bytes())  # what a link to a copy would look like: trusted nowhere
    original = outside.read_bytes()
    (videos / name).unlink()
    (videos / name).symlink_to(outside)
    before = listing(videos)
    for resume in (True, False):
        with pytest.raises(FolderRefused) as refused:
            RecordingSession(options(videos, resume=resume)).open()
        assert str(refused.value) == untrusted(videos, name, f"a symlink to {outside}")
    assert outside.read_bytes() == original
    assert listing(videos) == before


def test_the_measured_cases_outside_files_stay_byte_identical(tmp_path):
    """The three cases measured in issue 22: a manifest linked to an outside file (lines
    were appended to it), a lock file linked outside (it was truncated), an owner record
    linked from outside (it was read and accepted)."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"the user's own notes\n" * 3)
    original = outside.read_bytes()
    for name in (MANIFEST, LOCK_FILE, OWNER_FILE):
        videos = tmp_path / f"videos-{name}"
        record_two_videos(videos)
        (videos / name).unlink()
        (videos / name).symlink_to(outside)
        with pytest.raises(FolderRefused) as refused:
            claim_folder(videos, run_id="run1", resume=True)
        assert str(refused.value) == untrusted(videos, name, f"a symlink to {outside}")
        assert outside.read_bytes() == original
    # An owner record linked from outside is not read either (resume_argv reads it so).
    with pytest.raises(FolderRefused) as refused:
        folder_owner(tmp_path / f"videos-{OWNER_FILE}")
    assert str(refused.value) == untrusted(tmp_path / f"videos-{OWNER_FILE}", OWNER_FILE, f"a symlink to {outside}")


@pytest.mark.parametrize("name, make, kind", [
    (MANIFEST, os.mkdir, "a folder"),
    (MANIFEST, os.mkfifo, "a named pipe (fifo)"),
    (LOCK_FILE, os.mkfifo, "a named pipe (fifo)"),
    (OWNER_FILE, os.mkfifo, "a named pipe (fifo)"),
    (f"{FIRST}.json", os.mkdir, "a folder"),
])
def test_a_control_file_that_is_no_regular_file_refuses_the_folder(tmp_path, name, make, kind):
    videos = tmp_path / "videos"
    record_two_videos(videos)
    (videos / name).unlink()
    make(videos / name)
    before = listing(videos)
    started = time.monotonic()
    with pytest.raises(FolderRefused) as refused:
        RecordingSession(options(videos, resume=True)).open()
    assert str(refused.value) == untrusted(videos, name, kind)
    assert time.monotonic() - started < 5  # a fifo is never waited on
    assert listing(videos) == before


def test_a_new_folder_with_a_planted_manifest_link_is_refused_before_anything_is_written(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b'{"file": "x.mp4"}\n')
    (videos / MANIFEST).symlink_to(outside)
    with pytest.raises(FolderRefused) as refused:
        claim_folder(videos, run_id="run1", resume=False)
    assert str(refused.value) == untrusted(videos, MANIFEST, f"a symlink to {outside}")
    assert os.listdir(videos) == [MANIFEST] and outside.read_bytes() == b'{"file": "x.mp4"}\n'


def test_control_files_planted_after_the_claim_are_neither_written_nor_read(tmp_path):
    """A link planted while the run is live (after the claim's check): every write and read
    of a control file opens it without following, so it fails instead."""
    videos = tmp_path / "videos"
    record_two_videos(videos)
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b'{"file": "planted.mp4", "training_iteration": 1}\n')
    (videos / MANIFEST).unlink()
    (videos / MANIFEST).symlink_to(outside)
    with pytest.raises(OSError) as error:
        append_record(videos / MANIFEST, {"file": "y.mp4"})
    assert error.value.errno == 40  # ELOOP
    with pytest.raises(OSError):
        read_manifest(videos)
    (videos / MANIFEST).unlink()
    os.mkfifo(videos / MANIFEST)
    with pytest.raises(OSError) as error:
        append_record(videos / MANIFEST, {"file": "y.mp4"})
    assert error.value.strerror == "not a regular file"
    with pytest.raises(OSError) as error:
        open_regular(videos / MANIFEST)
    assert error.value.strerror == "not a regular file"
    assert outside.read_bytes() == b'{"file": "planted.mp4", "training_iteration": 1}\n'


EMPTY = ("recording.video_dir is empty, which would put the videos into the working directory {cwd}; give the "
         "videos a folder of their own (e.g. recording.video_dir=videos), or leave recording.video_dir out for the "
         "default inside the run's folder.")
HERE = ("recording.video_dir={given} is the working directory {cwd} or a folder above it, not a folder of its own; "
        "give the videos a folder of their own (e.g. recording.video_dir=videos), or leave recording.video_dir out "
        "for the default inside the run's folder.")


def test_an_empty_or_working_directory_video_dir_is_refused_with_nothing_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for given, message in (("", EMPTY), ("  ", EMPTY), (".", HERE), ("./", HERE), ("..", HERE)):
        for make in (lambda: RecordingOptions(video_dir=given),
                     lambda: claim_folder(given, run_id="run1", resume=False)):
            with pytest.raises(FolderRefused) as refused:
                make()
            assert str(refused.value) == message.format(cwd=tmp_path, given=given)
    assert os.listdir(tmp_path) == []
    RecordingOptions(video_dir="videos")  # a folder of its own, relative to the working directory
    RecordingOptions(video_dir="../videos")


@pytest.mark.parametrize("given, message", [("", EMPTY), (".", HERE)])
def test_the_cli_refuses_an_empty_video_dir_with_exit_2_and_writes_nothing(tmp_path, given, message):
    proc = subprocess.run(run_eval_command(f"recording.video_dir={given}"), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == "error: " + message.format(cwd=tmp_path, given=given)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------
# 5. Tampered videos found at resume


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "eval_recorder.session" and r.levelno >= logging.WARNING]


def test_a_video_cut_short_under_its_final_name_is_named_marked_and_kept(tmp_path, caplog):
    videos = tmp_path / "videos"
    stored = record_two_videos(videos)
    first = f"{FIRST}.mp4"
    cut = stored[first][: len(stored[first]) // 2]
    with open(videos / first, "r+b") as handle:  # a third party truncates it in place
        handle.truncate(len(cut))
    manifest_before = (videos / MANIFEST).read_bytes()
    records_before = read_manifest(videos)

    caplog.set_level(logging.WARNING)
    with RecordingSession(options(videos, resume=True)).open():
        pass
    assert _warnings(caplog) == [
        f"1 video in {videos} changed after it was stored (its size or sha256 no longer match its manifest record): "
        f"{first} ({len(cut)} bytes, {len(stored[first])} when stored); it is kept as it is and marked altered in "
        f"the manifest and the gallery."]
    assert (videos / first).read_bytes() == cut and (videos / f"{SECOND}.mp4").read_bytes() == stored[f"{SECOND}.mp4"]
    manifest = (videos / MANIFEST).read_bytes()
    assert manifest.startswith(manifest_before)  # append-only
    (mark_line,) = manifest[len(manifest_before):].splitlines()
    mark = json.loads(mark_line)
    assert {k: v for k, v in mark.items() if k != "found"} == {
        "altered": first, "run_id": "run1", "why": f"{len(cut)} bytes, {len(stored[first])} when stored",
        "found_bytes": len(cut), "found_sha256": __import__("hashlib").sha256(cut).hexdigest(),
        "bytes": len(stored[first]), "sha256": records_before[0]["sha256"]}
    assert read_manifest(videos) == records_before  # a mark is no video record
    page = (videos / GALLERY).read_text()
    assert page.count('<figure class="altered">') == 1
    assert (f'<span class="altered">altered after it was stored: {len(cut)} bytes, {len(stored[first])} when '
            f'stored</span><a class="file" href="{first}">') in page

    # Resumed again: said once (it is marked already), nothing appended.
    caplog.clear()
    with RecordingSession(options(videos, resume=True)).open():
        pass
    assert _warnings(caplog) == [] and (videos / MANIFEST).read_bytes() == manifest

    # Put back as it was: marked restored, the gallery's mark goes.
    (videos / first).write_bytes(stored[first])
    with RecordingSession(options(videos, resume=True)).open():
        pass
    assert _warnings(caplog) == []
    assert read_marks(videos)[first]["restored"] is True
    assert 'class="altered"' not in (videos / GALLERY).read_text()


def test_videos_replaced_or_linked_away_are_named_in_one_warning(tmp_path, caplog):
    videos = tmp_path / "videos"
    stored = record_two_videos(videos)
    first, second = f"{FIRST}.mp4", f"{SECOND}.mp4"
    other = bytearray(stored[first])
    other[-1] ^= 0xFF
    (videos / first).write_bytes(bytes(other))  # same size, other bytes
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(stored[second])
    (videos / second).unlink()
    (videos / second).symlink_to(elsewhere)  # the very bytes, but outside the folder: never followed
    caplog.set_level(logging.WARNING)
    with RecordingSession(options(videos, resume=True)).open():
        pass
    assert _warnings(caplog) == [
        f"2 videos in {videos} changed after they were stored (their sizes or sha256s no longer match their manifest "
        f"records): {first} (same size, other bytes (its sha256 differs)), {second} (no longer a regular file); "
        f"they are kept as they are and marked altered in the manifest and the gallery."]
    assert sorted(read_marks(videos)) == [first, second]
    assert (videos / first).read_bytes() == bytes(other) and os.readlink(videos / second) == str(elsewhere)
    page = (videos / GALLERY).read_text()
    assert page.count('<figure class="altered">') == 1  # the link is not shown: it leads outside
    assert f'href="{second}"' not in page


# ----------------------------------------------------------------------------------------
# 6. One run id, one run

ADVICE = "or choose another wandb.run_id (or leave it out for a new one)."


def test_a_new_session_with_the_id_of_a_wandb_run_beside_it_is_refused_with_nothing_written(tmp_path):
    wandb_home = tmp_path / "wandb_home"
    first = dict(video_dir=str(tmp_path / "videos"), run_id="taken1", wandb_mode="offline", wandb_dir=str(wandb_home))
    RecordingSession(RecordingOptions(**first)).open().close()
    (run,) = (wandb_home / "wandb").glob("offline-run-*-taken1")

    def files():  # wandb's service (still up in this process) goes on writing its own debug logs
        return {name: digest for name, digest in snapshot(tmp_path).items()
                if not (name.startswith("wandb_home/") and name.endswith(".log"))}

    before = files()
    again = {**first, "video_dir": str(tmp_path / "videos-again")}
    with pytest.raises(FolderRefused) as refused:
        RecordingSession(RecordingOptions(**again)).open()
    assert str(refused.value) == (f"run id taken1 already belongs to wandb run {run}; continue that run with "
                                  f"recording.resume=true wandb.run_id=taken1, {ADVICE}")
    assert files() == before and not (tmp_path / "videos-again").exists()
    # An id that only ends like it (run ids may hold '-') is another run's.
    RecordingSession(RecordingOptions(**{**again, "run_id": "1"})).open().close()


def _fake_run_folder(root: Path, run_id: str) -> Path:
    """A run folder as a finished main job leaves it under outputs/: videos/ owned by
    ``run_id`` (with checkpoint_dir) and Hydra's .hydra/."""
    folder = root / "outputs" / "2026-12-01" / "11-00-00"
    claim_folder(folder / "videos", run_id=run_id, resume=False,
                 owner_details={"checkpoint_dir": str(folder / "checkpoints")}).release()
    (folder / ".hydra").mkdir()
    return folder


def test_a_new_run_with_the_id_of_a_finished_run_folder_is_refused_with_exit_2(tmp_path):
    folder = _fake_run_folder(tmp_path, "taken2")
    before = snapshot(tmp_path)
    proc = subprocess.run(run_eval_command("wandb.run_id=taken2"), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        f"error: run id taken2 already belongs to the run in {Path('outputs/2026-12-01/11-00-00')}; continue that "
        f"run with recording.resume=true wandb.run_id=taken2, {ADVICE}")
    assert snapshot(tmp_path) == before
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["2026-12-01"]
    assert folder.exists()


def test_a_new_run_with_the_id_of_a_live_run_is_refused_naming_it(tmp_path):
    folder = tmp_path / "outputs" / "2026-12-01" / "11-00-00"
    code = (f"import time; from eval_recorder.folder_guard import claim_folder; "
            f"claim_folder({str(folder / 'videos')!r}, run_id='live2', resume=False); print('claimed', flush=True); "
            f"time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        before = snapshot(tmp_path)
        proc = subprocess.run(run_eval_command("wandb.run_id=live2", f"recording.video_dir={tmp_path / 'mine'}"),
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.splitlines()[-1] == (
            f"error: run id live2 already belongs to a live run in {Path('outputs/2026-12-01/11-00-00')} (pid "
            f"{holder.pid}, host {socket.gethostname()}); wait for it to end and continue it with "
            f"recording.resume=true wandb.run_id=live2, {ADVICE}")
        assert snapshot(tmp_path) == before and not (tmp_path / "mine").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_cli_refuses_to_resume_into_a_folder_whose_manifest_links_outside(tmp_path):
    folder = _fake_run_folder(tmp_path, "linked1")
    outside = tmp_path / "notes.txt"
    outside.write_bytes(b"the user's own notes\n")
    (folder / "videos" / MANIFEST).symlink_to(outside)
    before = snapshot(tmp_path)
    proc = subprocess.run(run_eval_command("recording.resume=true", "wandb.run_id=linked1"), capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    videos = (folder / "videos").resolve()
    assert proc.stderr.splitlines()[-1] == "error: " + untrusted(videos, MANIFEST, f"a symlink to {outside}")
    assert outside.read_bytes() == b"the user's own notes\n"
    # Only the run's own log file, which a resume writes in its run folder from the start.
    assert snapshot(tmp_path) == {**before, "outputs/2026-12-01/11-00-00/run_eval.log": snapshot(folder)["run_eval.log"]}


@pytest.mark.slow
def test_a_real_run_keeps_its_id_and_its_resume_names_a_video_cut_short(tmp_path):
    """A real run under outputs/. A new run with its id is refused (exit 2, nothing
    written). A video cut short under its final name is named at resume, marked in the
    manifest and the gallery, and kept. With its video folder moved away, its offline
    wandb runs still hold the id."""
    first = subprocess.run(run_eval_command(*TINY, "training.iterations=1", "wandb.run_id=real1"),
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_folder,) = [p.relative_to(tmp_path) for p in (tmp_path / "outputs").glob("*/*")]
    videos = tmp_path / run_folder / "videos"
    assert len(read_manifest(videos)) == 2

    def new_run_refused(sentence: str) -> None:  # a new run with the id: refused, nothing written
        before = snapshot(tmp_path)
        again = subprocess.run(run_eval_command(*TINY, "training.iterations=1", "wandb.run_id=real1"),
                               capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert again.returncode == 2, again.stderr[-3000:]
        assert again.stderr.splitlines()[-1] == f"error: run id real1 already belongs to {sentence}"
        assert snapshot(tmp_path) == before and len(list((tmp_path / "outputs").glob("*/*"))) == 1

    new_run_refused(f"the run in {run_folder}; continue that run with recording.resume=true wandb.run_id=real1, "
                    f"{ADVICE}")

    first_video = read_manifest(videos)[0]["file"]
    whole = (videos / first_video).read_bytes()
    cut = whole[: len(whole) // 3]
    with open(videos / first_video, "r+b") as handle:
        handle.truncate(len(cut))
    resumed = subprocess.run(run_eval_command(*TINY, "training.iterations=2", "recording.resume=true",
                                              "wandb.run_id=real1"),
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"warning: 1 video in {videos.resolve()} changed after it was stored (its size or sha256 no longer "
            f"match its manifest record): {first_video} ({len(cut)} bytes, {len(whole)} when stored); it is kept as "
            f"it is and marked altered in the manifest and the gallery.") in resumed.stderr.splitlines()
    assert (videos / first_video).read_bytes() == cut
    assert read_marks(videos)[first_video]["why"] == f"{len(cut)} bytes, {len(whole)} when stored"
    assert len(read_manifest(videos)) == 4  # the resumed round's two videos beside the first two
    page = (videos / GALLERY).read_text()
    assert f'altered after it was stored: {len(cut)} bytes, {len(whole)} when stored' in page
    assert page.count('<figure class="altered">') == 1

    wandb_runs = sorted((tmp_path / run_folder / "wandb").glob("offline-run-*-real1"))
    assert len(wandb_runs) == 2  # one per process, one run id
    videos.rename(tmp_path / "moved-videos")
    new_run_refused(f"wandb run {wandb_runs[0].relative_to(tmp_path)}; continue that run with recording.resume=true "
                    f"wandb.run_id=real1, {ADVICE}")
