"""README.md's code blocks run as written: the library example is taken from the README and
executed; every ``run_eval.py`` command in it is composed by Hydra exactly as the CLI would."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, compose_config
from eval_recorder.video_index import read_manifest

README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(language: str) -> list[tuple[str, str]]:
    """(section heading, text) of every fenced block of ``language`` in README.md."""
    text = README.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) == language:
            headings = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
            blocks.append((headings[-1] if headings else "", match.group(2)))
    return blocks


def run_eval_commands() -> list[list[str]]:
    """The arguments of every ``run_eval.py`` command in the README's bash blocks
    (continuation lines joined, comments dropped)."""
    commands = []
    for _, block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if len(words) > 1 and words[1] == "run_eval.py":
                commands.append(words[2:])
    return commands


def test_the_readme_has_the_blocks_these_tests_run():
    sections = [heading for heading, _ in code_blocks("python")]
    assert "Use 3: your own RLlib config (library)" in sections
    assert sections.count("Your own env and algorithm") == 2
    assert len(run_eval_commands()) >= 6


@pytest.mark.parametrize("arguments", run_eval_commands(), ids=" ".join)
def test_every_run_eval_command_of_the_readme_composes(arguments):
    """Every key exists and every value has its type (placeholders such as PATH are strings)."""
    overrides = [a for a in arguments if not a.startswith("-")]
    if "-m" in arguments:  # a sweep: each of its combinations is one job; take the first
        overrides = [re.sub(r"=([^,]*),.*", r"=\1", o) for o in overrides]
    compose_config(*overrides)


@pytest.mark.slow
def test_library_example_runs_as_written(tmp_path):
    """The README's library example, byte for byte, in a fresh working directory: it
    finishes in about a minute on 2 cores, records both rounds on the same episodes (fixed
    evaluation seed) and writes wandb next to the video folder, nothing into the working
    directory but the folder it names."""
    (example,) = [text for heading, text in code_blocks("python") if heading.startswith("Use 3")]
    script = tmp_path / "example.py"
    script.write_text(example)
    began = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["iteration 1 videos 2", "iteration 2 videos 4"]
    assert seconds < 180, f"the README promises about 30 s; it took {seconds:.0f} s"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["example.py", "runs"]
    assert sorted(path.name for path in (tmp_path / "runs" / "first").iterdir()) == ["videos", "wandb"]
    records = read_manifest(tmp_path / "runs" / "first" / "videos")
    assert [(r["training_iteration"], r["episode_index"]) for r in records] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    seeds = {(r["training_iteration"], r["episode_index"]): r["env_seed"] for r in records}
    assert seeds[1, 0] == seeds[2, 0] and seeds[1, 1] == seeds[2, 1]  # the same episodes every round
    (run_id,) = {r["run_id"] for r in records}
    assert list((tmp_path / "runs" / "first" / "wandb").glob(f"offline-run-*-{run_id}"))


def test_readme_sample_outputs_are_the_lines_a_run_prints():
    """The sample output of `make run` shows the lines of main_job/console in their order."""
    text = README.read_text()
    start = text.index("## What `make run` does")
    sample = _FENCE.search(text, start).group(2).splitlines()
    patterns = [
        r"run [0-9a-f]{8}: videos go to outputs/\S+/videos",
        r"starting Ray \.\.\.",
        r"started a local Ray \(2 CPUs\)",
        r"building PPO \(env runners start, the first rail drawing takes a few seconds\) \.\.\.",
        *[rf"iteration {n}/3 \| env steps {400 * n} \| train return -?\d+\.\d\d \| evaluated weights of "
          rf"iteration {n}: completion \d\.\d\d \| videos written 2" for n in (1, 2, 3)],
        r"videos written: 6 in outputs/\S+/videos",
        r"manifest: outputs/\S+/videos/manifest\.jsonl",
        r"gallery: outputs/\S+/videos/index\.html \(open it in a browser, no server needed\)",
        r"checkpoint: outputs/\S+/checkpoints/it000003",
        r"wandb run: outputs/\S+/wandb/offline-run-\d{8}_\d{6}-[0-9a-f]{8}",
        r"upload it with: wandb sync outputs/\S+/wandb",
        r"log: outputs/\S+/run_eval\.log \(Ray's, RLlib's and wandb's own output\)",
    ]
    assert len(sample) == len(patterns), sample
    for line, pattern in zip(sample, patterns):
        assert re.fullmatch(pattern, line), (line, pattern)


@pytest.mark.parametrize(("video_dir", "wandb_dir"), [
    ("videos", "videos-wandb"),  # its parent is the working directory: wandb goes beside, never into it
    ("runs/first/videos", "runs/first"),  # the main job's layout: runs/first/videos + runs/first/wandb
])
def test_library_wandb_folder_is_next_to_the_videos_never_the_working_directory(tmp_path, monkeypatch,
                                                                                 video_dir, wandb_dir):
    from eval_recorder import RecordingOptions
    from eval_recorder.options import default_wandb_dir

    monkeypatch.chdir(tmp_path)
    assert default_wandb_dir(RecordingOptions(video_dir=video_dir)) == tmp_path / wandb_dir


def own_env_examples() -> list[str]:
    return [text for heading, text in code_blocks("python") if heading == "Your own env and algorithm"]


def run_example(text: str, folder: Path) -> subprocess.CompletedProcess:
    script = folder / "example.py"
    script.write_text(text)
    return subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_flatland_rl_users_example_runs_as_written(tmp_path):
    """flatland-rl's registration (ray_env_generator + an observation builder of flatland's
    registry) + APPO + add_recording, byte for byte from the README."""
    flatland, _ = own_env_examples()
    proc = run_example(flatland, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(" video tags ")[0] for line in lines] == ["iteration 1", "iteration 2"]
    records = read_manifest(tmp_path / "flatland_run" / "videos")
    assert [line.split(" video tags ")[1] for line in lines] == [
        str([r["training_iteration"] for r in records[:1]]), str([r["training_iteration"] for r in records])]
    assert [r["evaluation_round"] for r in records] == [1, 2]
    for record in records:
        assert record["file"].startswith(f"flatland-it{record['training_iteration']:06d}-ev")
        assert record["training_iteration"] <= record["evaluation_round"]  # APPO: the iteration that made the weights
        assert record["num_agents"] == 2 and "completion" in record


@pytest.mark.slow
def test_gymnasium_example_runs_as_written(tmp_path):
    _, gymnasium = own_env_examples()
    proc = run_example(gymnasium, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_manifest(tmp_path / "cartpole_run" / "videos")
    (run_id,) = {r["run_id"] for r in records}
    names = [f"cartpole-v1-it{it:06d}-ev{it:04d}-ep{ep:03d}-{run_id}.mp4" for it in (1, 2) for ep in (0, 1)]
    assert proc.stdout.splitlines()[-1] == str(names)
    assert [r["file"] for r in records] == names
    assert all(r["agent_returns"] is None and "completion" not in r for r in records)


def test_the_readme_layout_lists_every_module_and_no_other():
    """The Layout section names each module of the core and of app/ (and the flatland/
    plug-in folder), and nothing that is gone: it cannot drift from the file list."""
    (layout,) = [text for heading, text in code_blocks("") if heading == "Layout"]
    listed = set(re.findall(r"^\s+([\w/]+\.py|flatland/|app/)\s", layout, re.MULTILINE))
    package = ROOT / "eval_recorder"
    present = {path.name for path in package.glob("*.py")} | {path.name for path in (package / "app").glob("*.py")
                                                             if path.name != "__init__.py"}
    assert listed == present | {"flatland/", "app/"}
