"""The index of every run under outputs/ (eval_recorder/app/runs_index.py): what a row says,
read from real run folders; the lock that keeps concurrent rebuilds from losing rows; the
rebuild command; and real runs and a sweep's jobs listing themselves as they go."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from conftest import TINY, run_eval_command
from eval_recorder.app.runs_index import (
    INDEX, LOCK, RunRow, render_runs_index, run_folders, run_row, runs_root, write_runs_index,
)
from eval_recorder.folder_guard import OWNER_FILE, claim_folder
from eval_recorder.gallery import write_gallery
from eval_recorder.tags import TrainingTag
from eval_recorder.video_index import read_manifest
from eval_recorder.video_store import VideoStore
from helpers import episode
from support.html_tree import parse
from support.videos import tiny_mp4

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "eval_recorder.app.runs_index"]


def make_run(root: Path, folder: str, run_id: str, *, algorithm="PPO", env="small", iterations=4,
             rounds=((2, (1.0, 0.5)), (4, (0.5, 0.0))), trained=(1, 2, 3), checkpoint=None) -> Path:
    """A run folder as run_eval.py leaves it: Hydra's .hydra/, a claimed video folder with real
    videos (each round: its iteration and its episodes' completions), posters, the training
    record and the gallery."""
    run = root / folder
    (run / ".hydra").mkdir(parents=True)
    config = {"algorithm": {"name": algorithm}, "env": {"name": env}, "training": {"iterations": iterations},
              "recording": {"video_dir": "${hydra:runtime.output_dir}/videos"}, "wandb": {"run_id": None},
              "checkpoint": checkpoint}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    claim = claim_folder(run / "videos", run_id=run_id, resume=False,
                         owner_details={"checkpoint_dir": str(run / "checkpoints")})
    try:
        store = VideoStore(claim.path, run_id=run_id)
        for number, (iteration, completions) in enumerate(rounds, start=1):
            for index, completion in enumerate(completions):
                store.store(episode=episode(mp4=tiny_mp4(shade=40 * index), facts={"completion": completion}),
                            stem=f"flatland-it{iteration:06d}-ev{number:04d}-ep{index:03d}-{run_id}",
                            tag=TrainingTag(iteration, 100 * iteration), evaluation_round=number,
                            episode_index=index, checkpoint=checkpoint and f"{checkpoint}/it{iteration:06d}")
        for iteration in trained:
            store.record_training(iteration, env_steps=100 * iteration, return_mean=-1.0)
        write_gallery(claim.path)
    finally:
        claim.release()
    return run


def rows_of(page: str) -> list[dict]:
    """Each table row of the index: its id, cell texts, and the links and image it holds."""
    tree = parse(page)
    rows = []
    for tr in tree.find("tbody").find_all("tr"):
        cells = [" ".join(td.text().split()) for td in tr.find_all("td")]
        rows.append({"id": tr.attrs["id"], "cells": cells,
                     "links": [a.attrs["href"] for a in tr.find_all("a")],
                     "images": [img.attrs["src"] for img in tr.find_all("img")]})
    return rows


def test_runs_root_is_outputs_of_the_working_directory_and_nothing_elsewhere(tmp_path):
    outputs = tmp_path / "outputs"
    assert runs_root(outputs / "2026-12-02" / "10-00-00", cwd=tmp_path) == outputs
    assert runs_root(outputs / "2026-12-02" / "10-00-00-multirun" / "1", cwd=tmp_path) == outputs
    assert runs_root(tmp_path / "elsewhere" / "run", cwd=tmp_path) is None  # a hydra.run.dir the user chose
    assert runs_root(outputs, cwd=tmp_path) is None


def test_a_row_says_what_the_run_folder_holds_and_links_its_gallery_and_latest_poster(tmp_path):
    run = make_run(tmp_path, "2026-12-02/10-00-00", "aaaa1111")
    (row,) = [run_row(folder, tmp_path) for folder in run_folders(tmp_path)]
    started = yaml.safe_load((run / "videos" / OWNER_FILE).read_text())["started"]
    assert row == RunRow(
        folder="2026-12-02/10-00-00", run_id="aaaa1111", started=started, kind="training", algorithm="PPO",
        env="small", checkpoint=None, iterations=4, target_iterations=4, videos=4,
        last_outcome="completion 0.25",  # the newest round (iteration 4): (0.5 + 0.0) / 2
        poster="2026-12-02/10-00-00/videos/flatland-it000004-ev0002-ep001-aaaa1111.jpg",
        gallery="2026-12-02/10-00-00/videos/index.html", running=False,
    )


def test_the_page_lists_runs_and_sweep_jobs_newest_first_with_working_links(tmp_path):
    make_run(tmp_path, "2026-12-01/09-00-00", "old00000", trained=(1, 2, 3, 4))
    make_run(tmp_path, "2026-12-02/11-00-00-multirun/0", "job00000", env="medium", iterations=2,
             rounds=((2, (0.2,)),), trained=(1, 2))
    make_run(tmp_path, "2026-12-02/11-00-00-multirun/1", "job11111", algorithm="APPO", iterations=2,
             rounds=(), trained=(1,))
    make_run(tmp_path, "2026-12-02/12-00-00", "eval0000", rounds=((3, (1.0,)),), trained=(),
             checkpoint=str(tmp_path / "2026-12-01/09-00-00/checkpoints"))
    (tmp_path / "2026-12-02" / "11-00-00-multirun" / "multirun.yaml").write_text("{}\n")  # the sweep's own folder

    path, count = write_runs_index(tmp_path)
    assert (path, count) == (tmp_path / INDEX, 4)
    rows = rows_of(path.read_text())
    assert [(row["id"], row["cells"][1:]) for row in rows] == [
        ("2026-12-02/12-00-00", ["eval0000", rows[0]["cells"][2], "evaluates 2026-12-01/09-00-00/checkpoints/it000003",
                                 "flatland", "evaluated 3", "1", "completion 1.00", "2026-12-02/12-00-00"]),
        ("2026-12-02/11-00-00-multirun/1", ["job11111", rows[1]["cells"][2], "APPO", "small", "1 of 2", "0", "–",
                                            "2026-12-02/11-00-00-multirun/1"]),
        ("2026-12-02/11-00-00-multirun/0", ["job00000", rows[2]["cells"][2], "PPO", "medium", "2 of 2", "1",
                                            "completion 0.20", "2026-12-02/11-00-00-multirun/0"]),
        ("2026-12-01/09-00-00", ["old00000", rows[3]["cells"][2], "PPO", "small", "4 of 4", "4", "completion 0.25",
                                 "2026-12-01/09-00-00"]),
    ]
    assert [row["cells"][0] for row in rows] == ["", "no video", "", ""]
    assert all(row["cells"][2].endswith(" UTC") for row in rows)
    for row in rows:  # the still and the run id both open the run's gallery; the still is its latest poster
        assert row["links"] == [f"{row['id']}/videos/index.html"] * 2
        for target in row["links"] + row["images"]:
            assert (tmp_path / unquote(target)).is_file(), target
    assert rows[0]["images"] == ["2026-12-02/12-00-00/videos/flatland-it000003-ev0001-ep000-eval0000.jpg"]
    assert rows[1]["images"] == []


def test_episodes_kept_without_a_video_count_in_the_last_evaluation_but_not_as_videos(tmp_path):
    """With recording.select, some episodes of a round keep only their replay record and
    a manifest line without a video: the round's completion is over all of them."""
    from eval_recorder.episode_record import EpisodeCapture

    run = make_run(tmp_path, "2026-12-02/10-00-00", "sel00000", rounds=((2, (0.0,)),), trained=(1, 2))
    capture = EpisodeCapture(seed=5)
    capture.step(0, 1.0, True, False)
    claim = claim_folder(run / "videos", run_id="sel00000", resume=True)
    try:
        VideoStore(claim.path, run_id="sel00000").store_record(
            episode=episode(record=capture.finish().to_bytes(), record_kind="episode", facts={"completion": 1.0}),
            stem="flatland-it000002-ev0001-ep001-sel00000", tag=TrainingTag(2, 200), evaluation_round=1,
            episode_index=1, checkpoint=None)
    finally:
        claim.release()
    lines = read_manifest(run / "videos")
    assert [("file" in r, r.get("record"), r["completion"]) for r in lines] == [
        (True, None, 0.0), (False, "flatland-it000002-ev0001-ep001-sel00000.episode.npz", 1.0)]
    row = run_row(run, tmp_path)
    assert (row.videos, row.last_outcome) == (1, "completion 0.50")
    assert row.poster == "2026-12-02/10-00-00/videos/flatland-it000002-ev0001-ep000-sel00000.jpg"


def test_a_live_run_is_marked_running(tmp_path):
    run = make_run(tmp_path, "2026-12-02/10-00-00", "live0000")
    claim = claim_folder(run / "videos", run_id="live0000", resume=True)
    try:
        (row,) = rows_of(write_runs_index(tmp_path)[0].read_text())
        assert row["cells"][1] == "live0000 running"
    finally:
        claim.release()
    (row,) = rows_of(write_runs_index(tmp_path)[0].read_text())
    assert row["cells"][1] == "live0000"


def test_text_from_run_folders_is_escaped(tmp_path):
    page = render_runs_index([RunRow(
        folder="2026/<b>", run_id="<script>", started=None, kind="training", algorithm="P&O", env='"e"',
        checkpoint=None, iterations=None, target_iterations=None, videos=0, last_outcome=None, poster=None,
        gallery=None, running=False,
    )])
    assert "<script>" not in page.split("<tbody>")[1] and "<b>" not in page.split("<tbody>")[1]
    (row,) = rows_of(page)
    assert row["cells"][1:5] == ["<script>", "–", "P&O", '"e"']


def rebuilder(root: Path, *, make: int = 0, prefix: str = "") -> subprocess.Popen:
    """A process that says "ready", waits for a line, then (``make`` times: makes a run
    folder and) rebuilds the index of ``root``; prints "done"."""
    script = f"""
import sys
from pathlib import Path
from eval_recorder.app.runs_index import write_runs_index
root = Path({str(root)!r})
print("ready", flush=True)
sys.stdin.readline()
for n in range({make}) or [None]:
    if n is not None:
        (root / "2026-12-02" / f"{prefix}{{n:02d}}" / ".hydra").mkdir(parents=True)
    write_runs_index(root)
print("done", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_rebuild_waits_for_the_lock_and_then_sees_the_folder_made_while_it_waited(tmp_path):
    make_run(tmp_path, "2026-12-02/10-00-00", "first000")
    fd = os.open(tmp_path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another rebuild in progress
    proc = rebuilder(tmp_path)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    time.sleep(1.0)
    assert proc.poll() is None  # it waits for the lock
    assert not (tmp_path / INDEX).exists()
    make_run(tmp_path, "2026-12-02/10-00-05", "second00")  # the other rebuild's own run
    os.close(fd)
    assert proc.communicate(timeout=60)[0] == "done\n" and proc.returncode == 0
    assert [row["cells"][1] for row in rows_of((tmp_path / INDEX).read_text())] == ["second00", "first000"]


def test_two_processes_rebuilding_at_once_lose_no_row_and_the_page_is_never_half_written(tmp_path):
    procs = [rebuilder(tmp_path, make=15, prefix=prefix) for prefix in ("a", "b")]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    pages = set()
    while any(proc.poll() is None for proc in procs):
        if (tmp_path / INDEX).exists():
            pages.add((tmp_path / INDEX).read_text())
    assert [proc.communicate(timeout=60)[0] for proc in procs] == ["done\n", "done\n"]
    assert all(proc.returncode == 0 for proc in procs)
    for page in pages:  # every version a reader saw is a whole page
        parse(page)
    rows = rows_of((tmp_path / INDEX).read_text())
    assert sorted(row["id"] for row in rows) == [f"2026-12-02/{p}{n:02d}" for p in "ab" for n in range(15)]


def test_the_rebuild_command_of_the_docs_writes_the_index_and_says_where(tmp_path):
    """The command as docs/outputs.md shows it, run from the folder run_eval.py ran in."""
    (documented,) = [line for line in (ROOT / "docs" / "outputs.md").read_text().splitlines()
                     if "eval_recorder.app.runs_index" in line and line.startswith(".venv/bin/python")]
    words = shlex.split(documented)
    assert words[:3] == [".venv/bin/python", "-m", "eval_recorder.app.runs_index"]
    make_run(tmp_path / "outputs", "2026-12-02/10-00-00", "cmd00000")
    proc = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == "runs index: outputs/index.html (1 run; open it in a browser, no server needed)\n"
    assert [row["cells"][1] for row in rows_of((tmp_path / "outputs" / INDEX).read_text())] == ["cmd00000"]


@pytest.mark.parametrize("name, prepare, message", [
    ("missing", lambda folder: None,
     "error: {folder} is not a folder: give the folder your runs are in (default outputs, in the folder you ran "
     "run_eval.py from).\n"),
    ("no-runs", lambda folder: (folder / "2026-12-02" / "10-00-00").mkdir(parents=True),
     "error: {folder} holds no run folder (none with a .hydra/ folder at <date>/<time>/ or "
     "<date>/<time>-multirun/<job>/): give the folder your runs are in.\n"),
])
def test_the_rebuild_command_refuses_a_folder_without_runs_and_writes_nothing(tmp_path, name, prepare, message):
    folder = tmp_path / name
    prepare(folder)
    before = sorted(tmp_path.rglob("*"))
    proc = subprocess.run([*COMMAND, str(folder)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", message.format(folder=folder))
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("planted", [LOCK, INDEX])
def test_a_planted_symlink_is_not_followed_and_the_file_outside_is_kept(tmp_path, planted):
    root = tmp_path / "outputs"
    make_run(root, "2026-12-02/10-00-00", "link0000")
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"the user's own file\n")
    (root / planted).symlink_to(outside)
    proc = subprocess.run(COMMAND, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == {
        LOCK: f"error: cannot open the runs index lock outputs/{LOCK} (Too many levels of symbolic links); remove it "
              f"if it is not a regular file, and run again.\n",
        INDEX: f"error: outputs/{INDEX} is not a regular file; remove it and run again.\n",
    }[planted]
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == hashlib.sha256(b"the user's own file\n").hexdigest()
    assert (root / planted).is_symlink()


FAST = (*TINY, "training.iterations=1", "evaluation.episodes=1", "evaluation.num_env_runners=0", "wandb.mode=disabled")


@pytest.mark.slow
def test_runs_and_a_sweep_started_at_once_are_all_listed_with_their_galleries(tmp_path):
    """Two runs and a two-job sweep, started at the same moment in one working directory
    (the default folders: outputs/<date>/<time>/ and outputs/<date>/<time>-multirun/<job>/):
    each run lists itself as it starts, and at the end the index has every one, linked."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    commands = [run_eval_command(*FAST, "training.seed=1"), run_eval_command(*FAST, "training.seed=2", "env=medium"),
                run_eval_command("-m", *FAST, "env=small,medium")]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for command in commands]
    index, seen_running = tmp_path / "outputs" / INDEX, False
    while any(proc.poll() is None for proc in procs):
        if not seen_running and index.exists():
            seen_running = 'class="running"' in index.read_text()
        time.sleep(0.2)
    outputs = [proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-2000:] for _out, err in outputs]
    assert seen_running  # a live run lists itself before it ends
    folders = run_folders(tmp_path / "outputs")
    assert len(folders) == 4 and sum(folder.parent.name.endswith("-multirun") for folder in folders) == 2
    rows = rows_of(index.read_text())
    by_folder = {row["id"]: row for row in rows}
    assert sorted(by_folder) == sorted(str(folder.relative_to(tmp_path / "outputs")) for folder in folders)
    for folder in folders:
        row = by_folder[str(folder.relative_to(tmp_path / "outputs"))]
        (record,) = read_manifest(folder / "videos")
        assert row["cells"][1] == record["run_id"]  # not running any more
        assert row["cells"][3:8] == ["PPO", row["cells"][4], "1 of 1", "1", f"completion {record['completion']:.2f}"]
        assert row["images"] == [f"{row['id']}/videos/{Path(record['file']).stem}.jpg"]
        assert row["links"] == [f"{row['id']}/videos/index.html"] * 2
        for target in row["links"] + row["images"]:
            assert (tmp_path / "outputs" / unquote(target)).is_file()
    assert sorted(row["cells"][4] for row in rows) == ["medium", "medium", "small", "small"]
    assert not (home / "ray_results").exists()


def test_runs_started_in_the_same_second_each_get_their_own_default_folder(tmp_path):
    from omegaconf import OmegaConf

    from eval_recorder.app.console import own_default_folder

    default = tmp_path / "outputs" / "2026-12-02" / "10-00-00"
    configs = [OmegaConf.create({"hydra": {"run": {"dir": str(default)}}}) for _ in range(3)]
    created = [own_default_folder(config, [default, default.parent, default.parent.parent]) for config in configs]
    assert [config.hydra.run.dir for config in configs] == [str(default), f"{default}-2", f"{default}-3"]
    assert created == [[default, default.parent, default.parent.parent],
                       [Path(f"{default}-2"), default.parent, default.parent.parent],
                       [Path(f"{default}-3"), default.parent, default.parent.parent]]
    assert sorted(p.name for p in default.parent.iterdir()) == ["10-00-00", "10-00-00-2", "10-00-00-3"]
