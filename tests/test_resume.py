"""Resume that resumes: the continue command a run prints, pasted, continues the same run in
the same folder; a resume finds its run's folder or is refused before anything is made; a
resume with nothing left to train ends before Ray starts; internal config nodes are not
offered; nothing of a run lands in ~/ray_results."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, run_eval_command
from eval_recorder.app.resume import continue_command, find_run_folders, resume_argv
from eval_recorder.errors import UserError
from eval_recorder.folder_guard import OWNER_FILE, claim_folder
from eval_recorder.video_index import read_manifest
from helpers import in_use_message, snapshot
from support.jobs import wait_for


def _run_folder(root: Path, stamp: str, run_id: str, overrides=("env=medium",)) -> Path:
    """A main-job run folder as Hydra and the job leave it: .hydra/overrides.yaml, the
    video folder claimed for ``run_id`` with the checkpoints folder in its owner record."""
    folder = root / "outputs" / stamp
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    claim_folder(folder / "videos", run_id=run_id, resume=False,
                 owner_details={"checkpoint_dir": str((folder / "checkpoints").absolute())}).release()
    return folder


def test_a_resume_without_folder_finds_its_run_and_takes_its_earlier_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_folder(tmp_path, "2026-12-01/10-00-00", "other1")
    folder = _run_folder(tmp_path, "2026-12-01/11-00-00", "mine", overrides=(
        "env=medium", "training.iterations=3", "wandb.run_id=mine", "hydra.job.name=x"))
    assert resume_argv(["recording.resume=true", "wandb.run_id=mine", "training.iterations=6"]) == [
        "env=medium", "recording.resume=true", "wandb.run_id=mine", "training.iterations=6",
        f"hydra.run.dir={Path('outputs/2026-12-01/11-00-00')}", "hydra.output_subdir=null"]
    assert find_run_folders("mine") == [Path("outputs/2026-12-01/11-00-00")]
    # Through its video folder: the run folder is the one holding its checkpoints.
    assert resume_argv(["recording.resume=True", "wandb.run_id=mine", f"recording.video_dir={folder / 'videos'}"]) == [
        "env=medium", "training.iterations=3", "recording.resume=True", "wandb.run_id=mine",
        f"recording.video_dir={folder / 'videos'}", f"hydra.run.dir={(folder / 'checkpoints').absolute().parent}",
        "hydra.output_subdir=null"]


@pytest.mark.parametrize("argv", [
    ["training.iterations=3"], ["recording.resume=false", "wandb.run_id=mine"], ["recording.resume=true"],
    ["-m", "recording.resume=true", "wandb.run_id=mine"], ["--help"],
])
def test_what_is_no_resume_is_left_as_it_is(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    assert resume_argv(argv) == argv


def test_a_resume_with_nothing_to_resume_is_refused_in_one_sentence_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _run_folder(tmp_path, "2026-12-01/11-00-00", "mine")
    cases = {
        ("wandb.run_id=nosuch",): (
            "found no run nosuch under outputs/ (looked for outputs/<date>/<time>/videos/.eval_recorder-owner.json "
            "naming it); give its run folder with hydra.run.dir=<folder>, or its video folder with "
            "recording.video_dir=<folder>."),
        ("wandb.run_id=nosuch", "hydra.run.dir=elsewhere"): (
            "hydra.run.dir=elsewhere is not a folder, so it holds no run nosuch to resume; give the folder of run "
            "nosuch, or drop recording.resume=true to start a new run."),
        ("wandb.run_id=nosuch", f"hydra.run.dir={folder}"): (
            f"hydra.run.dir={folder} holds run mine, not run nosuch; continue it with wandb.run_id=mine, or give the "
            f"folder of run nosuch."),
        ("wandb.run_id=mine", f"recording.video_dir={tmp_path}"): (
            f"recording.video_dir={tmp_path} holds no run mine to resume (no {OWNER_FILE} in {tmp_path}); give the "
            f"folder of run mine, or drop recording.resume=true to start a new run."),
    }
    before = snapshot(tmp_path)
    for words, message in cases.items():
        with pytest.raises(UserError) as refused:
            resume_argv(["recording.resume=true", *words])
        assert str(refused.value) == message
    _run_folder(tmp_path, "2026-12-02/09-00-00", "mine")
    with pytest.raises(UserError) as refused:
        resume_argv(["recording.resume=true", "wandb.run_id=mine"])
    assert str(refused.value) == (
        "run mine has 2 folders under outputs/ (outputs/2026-12-01/11-00-00, outputs/2026-12-02/09-00-00); give the "
        "one to continue with hydra.run.dir=<folder>.")
    assert {k: v for k, v in snapshot(tmp_path).items() if "2026-12-02" not in k} == before


def test_the_continue_command_quotes_every_word_and_names_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "run_eval.py")])
    command = continue_command(tmp_path / "outputs" / "a b", "r1", [
        "algorithm.hidden=[16]", "wandb.run_id=r1", "recording.resume=true", "training.iterations=3",
        "+env.config.name=it's"], more={"training.iterations": 6})
    assert shlex.split(command) == [
        sys.executable, str(ROOT / "run_eval.py"),  # outside the working directory: absolute
        "algorithm.hidden=[16]", "+env.config.name=it's", "training.iterations=6", "recording.resume=true",
        "wandb.run_id=r1", "hydra.run.dir=outputs/a b"]


def test_the_continue_command_of_a_run_id_hydra_reads_as_a_number_finds_its_run(tmp_path, monkeypatch):
    """72e47061 unquoted is Hydra's float inf: the command quotes it, and the resume before
    Hydra reads the quoted id as Hydra does (the run's folder, not a refusal)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "run_eval.py")])
    _run_folder(tmp_path, "2026-12-01/11-00-00", "72e47061")
    words = shlex.split(continue_command(Path("outputs/2026-12-01/11-00-00"), "72e47061", ["env=medium"]))[2:]
    assert words == ["env=medium", "recording.resume=true", "wandb.run_id='72e47061'",
                     "hydra.run.dir=outputs/2026-12-01/11-00-00"]
    assert resume_argv(words) == ["env=medium", "recording.resume=true", "wandb.run_id='72e47061'",
                                  "hydra.run.dir=outputs/2026-12-01/11-00-00", "hydra.output_subdir=null"]


def test_internal_config_nodes_are_neither_offered_nor_selectable_and_leave_no_folder(tmp_path):
    proc = subprocess.run(run_eval_command("--help"), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Config groups ==")[1].strip().splitlines()[:2]
    assert groups == ["algorithm: appo, dqn, impala, ppo", "env: medium, small"]
    proc = subprocess.run(run_eval_command("env=base_env"), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Could not find 'env/base_env'" in proc.stderr and "\tmedium\n\tsmall\n" in proc.stderr
    assert "base_env" not in proc.stderr.split("Available options in 'env':")[1]
    assert list(tmp_path.iterdir()) == []


def test_an_option_that_cannot_be_resolved_is_refused_and_leaves_no_folder(tmp_path):
    proc = subprocess.run(run_eval_command("recording.fps=${oops}"), capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        "error: an option cannot be used (Interpolation key 'oops' not found); fix it and run again."]
    assert list(tmp_path.iterdir()) == []


def test_a_live_run_is_named_as_live_before_hydra_makes_anything(tmp_path):
    folder = tmp_path / "outputs" / "2026-12-01" / "11-00-00"
    code = (f"import time; from eval_recorder.folder_guard import claim_folder; "
            f"claim_folder({str(folder / 'videos')!r}, run_id='live1', resume=False, "
            f"owner_details={{'checkpoint_dir': {str(folder / 'checkpoints')!r}}}); print('claimed', flush=True); "
            f"time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        (folder / ".hydra").mkdir()
        before = snapshot(tmp_path)
        proc = subprocess.run(run_eval_command("recording.resume=true", "wandb.run_id=live1"), capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == ["error: " + in_use_message((folder / "videos").resolve(), "live1",
                                                                       holder.pid)]
        assert snapshot(tmp_path) == before and sorted(p.name for p in (tmp_path / "outputs").iterdir()) == [
            "2026-12-01"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_the_printed_continue_command_pasted_resumes_the_same_folder_and_run(tmp_path):
    """Ctrl-C after round 1; the command it prints, pasted as is, trains on in the same
    folder (iterations continue, videos append, one wandb run id, no other folder, the log
    in the run's own folder); a bare resume with nothing left to train ends before Ray."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    work = tmp_path / "work"
    work.mkdir()
    first = subprocess.Popen(run_eval_command(*TINY, "training.iterations=30", "training.checkpoint_every=1"),
                             cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        # round 1's videos and the checkpoint saved after its train() call (a stop before it leaves none)
        wait_for(lambda: any(len(read_manifest(v)) >= 2 and list(v.parent.glob("checkpoints/it*"))
                             for v in work.glob("outputs/*/*/videos")), 300, "round 1 and its checkpoint")
        os.kill(first.pid, signal.SIGINT)
        out, err = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 130, err[-3000:]
    (run_folder,) = work.glob("outputs/*/*")
    run_id = out.splitlines()[0].split(":")[0].removeprefix("run ")
    stored = read_manifest(run_folder / "videos")
    prefix = f"interrupted: {len(stored)} videos written in {run_folder.relative_to(work) / 'videos'}; continue with: "
    assert err.splitlines()[-1].startswith(prefix), err[-2000:]
    command = err.splitlines()[-1].removeprefix(prefix)
    assert shlex.split(command)[-3:] == ["recording.resume=true", f"wandb.run_id={run_id}",
                                         f"hydra.run.dir={run_folder.relative_to(work)}"]
    iterations_done = max(int(path.name.removeprefix("it")) for path in (run_folder / "checkpoints").glob("it*"))

    # Pasted with one more option (training to one iteration past what was stored).
    target = max(r["training_iteration"] for r in stored) + 1
    second = subprocess.run(f"{command} training.iterations={target}", shell=True, cwd=work, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert list(work.glob("outputs/*/*")) == [run_folder]  # no other folder
    lines = second.stdout.splitlines()
    assert lines[0] == f"run {run_id}: videos go to {run_folder.relative_to(work) / 'videos'}"
    assert f"log: {run_folder.relative_to(work) / 'run_eval.log'} (Ray's, RLlib's and wandb's own output)" in lines
    records = read_manifest(run_folder / "videos")
    assert records[:len(stored)] == stored  # appended, never rewritten
    assert {r["run_id"] for r in records} == {run_id}
    assert max(r["training_iteration"] for r in records) == target
    assert [line.split(" | ")[0] for line in lines if line.startswith("iteration ")] == [
        f"iteration {n}/{target}" for n in range(iterations_done + 1, target + 1)]
    assert {p.name.rsplit("-", 1)[1] for p in (run_folder / "wandb").glob("offline-run-*")} == {run_id}

    # Nothing left to train: said, exit 0, no Ray, nothing written.
    before = snapshot(work)
    began = time.monotonic()
    third = subprocess.run(run_eval_command("recording.resume=true", f"wandb.run_id={run_id}",
                                            f"training.iterations={target}"),
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.splitlines() == [
        f"run {run_id} already trained {target} iterations (training.iterations={target}): nothing to do; raise "
        f"training.iterations to train on"]
    assert third.stderr == ""
    assert snapshot(work) == before
    print(f"\nnothing to train: {time.monotonic() - began:.1f} s")
    assert "ray_results" not in [path.name for path in home.iterdir()]
