"""A video folder that fills up (a real, small tmpfs) or turns unwritable (immutable) in the
middle of a real run: training goes on, the run says so once, the videos wait in memory and
are stored as soon as the folder takes writes again; the run and its wandb run end with 0."""

from __future__ import annotations

import re
import subprocess

import pytest

from eval_recorder.gallery import GALLERY
from eval_recorder.video_index import read_manifest
from support.filesystems import fill, small_tmpfs
from support.jobs import (
    check_folder_is_consistent,
    jobs,  # noqa: F401  (a fixture)
    wait_for,
    wandb_exit_codes,
    wandb_runs,
    wandb_video_logs,
)
from wandb_offline import history_rows

pytestmark = pytest.mark.slow

ITERATIONS = 6
FREE = 64 * 1024  # left on the full filesystem: no video (120-160 kB) fits
WAITING = ("; training goes on and videos that cannot be stored wait in memory (up to 256 MB) until the folder "
           "takes writes again.")


def _warnings(stderr: str) -> list[str]:
    """What the run said to the user (our warnings and errors: ``warning: ...`` lines on stderr)."""
    return re.findall(r"^(?:warning|error): (.*)$", stderr, re.MULTILINE)


def _iterations(stdout: str) -> dict[int, int]:
    """{iteration: videos written} from the per-iteration lines."""
    return {int(m[1]): int(m[2]) for m in re.finditer(r"^iteration (\d+)/\d+ \|.*videos written (\d+)$", stdout,
                                                      re.MULTILINE)}


def _chattr(flag: str, path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot change the immutable attribute ({done.stderr.strip()})")


@pytest.mark.parametrize("fault", ["full", "unwritable"])
def test_a_folder_that_cannot_take_videos_costs_no_training(tmp_path, jobs, fault):
    with small_tmpfs(tmp_path / "fs", 16 * 1024 * 1024) as filesystem:
        videos, run_id = filesystem / "videos", "disk1"
        job = jobs(tmp_path, "run", f"training.iterations={ITERATIONS}", f"recording.video_dir={videos}",
                   f"wandb.run_id={run_id}")
        wait_for(lambda: len(read_manifest(videos)) >= 2 or not job.running(), 300, "round 1")
        assert job.running(), job.stderr[-3000:]
        if fault == "full":
            filler = fill(filesystem, FREE)
        else:
            _chattr("+i", videos)  # no name can be added to the folder, even by root
        # Rounds 2 and 3 cannot be stored; the folder takes writes again during iteration 4.
        wait_for(lambda: 3 in _iterations(job.stdout) or not job.running(), 300, "iteration 3")
        if fault == "full":
            filler.unlink()
        else:
            _chattr("-i", videos)
        assert job.wait(timeout=600) == 0, job.stderr[-3000:]

        manifest = check_folder_is_consistent(videos)
        gallery = (videos / GALLERY).read_text()
    said = _warnings(job.stderr)
    # The round that ended as the folder filled may have failed to rewrite its gallery.
    gallery_said = [line for line in said if line.startswith(f"could not write the gallery in {videos}: ")]
    assert len(gallery_said) <= 1
    said = [line for line in said if line not in gallery_said]
    # Every video is in the folder in the end, in training order.
    assert sorted((r["training_iteration"], r["episode_index"]) for r in manifest) == [
        (iteration, episode) for iteration in range(1, ITERATIONS + 1) for episode in (0, 1)]
    printed = _iterations(job.stdout)
    assert sorted(printed) == list(range(1, ITERATIONS + 1)) and printed[2] == printed[3] == 0
    # Said once, in one sentence: which folder, what the video needs; and when it is over.
    assert len(said) == 2, said
    if fault == "full":
        match = re.fullmatch(rf"video folder {re.escape(str(videos))} is full: storing (\S+) needs ([\d.]+) kB, "
                             rf"([\d.]+) kB are free; the video was not stored{re.escape(WAITING)}", said[0])
        assert match, said[0]
        name, needs, free = match[1], float(match[2]), float(match[3])
        (record,) = [r for r in manifest if r["file"] == name]
        assert record["training_iteration"] == 2 and record["bytes"] / 1000 < needs < record["bytes"] / 1000 + 4
        assert free <= FREE / 1000 < needs  # measured after the failure
    else:
        assert said[0] == (f"video folder {videos} cannot be written (Operation not permitted); the video was not "
                           f"stored{WAITING}")
    assert said[1] == f"video folder {videos} takes videos again"
    # The gallery shows them all; wandb got each once (those stored late at a later step,
    # under keys of their own); the run ended well.
    assert all(r["file"] in gallery for r in manifest)
    (wandb_run,) = wandb_runs(job.run_dir, run_id)
    assert wandb_exit_codes(wandb_run) == [0]
    assert wandb_video_logs([wandb_run]) == {r["sha256"]: 1 for r in manifest}
    rows = {row["_step"]: row for row in history_rows(wandb_run)}
    late = sorted(key.split("/")[3] for row in rows.values() for key in row
                  if key.startswith("eval/video/late/") and key.endswith("/sha256"))
    # Stored during iteration 4: round 3's at step 3, still open, in their slots; round 2's
    # at step 3 too, under keys of their own.
    assert late == sorted(r["file"].removesuffix(".mp4") for r in manifest if r["training_iteration"] == 2)
    for record in manifest:
        if record["training_iteration"] != 2:
            row = rows[record["training_iteration"]]
            assert row[f"eval/video/episode_{record['episode_index']}/sha256"] == record["sha256"]
