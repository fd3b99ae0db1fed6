"""render=PATH / render_records(): stored episodes drawn again from their replay records, as a
user runs it: real run_eval.py jobs (PPO on Flatland and on CartPole) leave episodes without a
video (recording.select), real `python run_eval.py render=...` commands render them, and the
videos are decoded back and compared pixel for pixel with what the live recorder made of the
same episode at the same settings. Refusals, a record that does not replay and a kill -9 in
the middle leave the folder as it was (or consistent)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, run_eval_command
from helpers import in_use_message, snapshot
from support.jobs import check_folder_is_consistent, kill_session
from support.videos import rgb_frames
from eval_recorder.errors import UserError
from eval_recorder.flatland.record_frames import read_trajectory
from eval_recorder.frames import scaled_size
from eval_recorder.render_later import RENDERED, RenderSettings, find_episodes, frame_steps, render_records
from eval_recorder.video_index import MANIFEST, append_record, read_manifest

SELECT = "worst:1,best:1"
VIDEO_ONLY = ("file", "frames", "frame_every", "fps", "width", "height", "bytes", "sha256", "poster", "chosen")
DEFAULTS = {"fps": 10, "max_side": 800, "overlay": True, "frame_every": 1}


def run(tmp: Path, name: str, *overrides: str) -> Path:
    """A real one-iteration run with recording.select; its video folder."""
    tiny = [option for option in TINY if not option.startswith("evaluation.episodes=")]
    proc = subprocess.run(
        run_eval_command(*tiny, "training.iterations=1", f"wandb.run_id={name}", f"recording.video_dir={tmp / 'videos'}",
                         f"hydra.run.dir={tmp / 'run'}", f"recording.select='{SELECT}'", *overrides),
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "videos"


def render(path, tmp: Path, *overrides: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(run_eval_command(f"render={path}", f"hydra.run.dir={tmp / 'render-run'}", *overrides),
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def flatland_videos(tmp_path_factory):
    """4 Flatland episodes (trains breaking down), 2 kept as videos, 2 as trajectories only."""
    return run(tmp_path_factory.mktemp("render-flatland"), "rendfl", "evaluation.episodes=4", "env.malfunction_interval=3")


@pytest.fixture(scope="module")
def cartpole_videos(tmp_path_factory):
    """3 CartPole episodes, 2 kept as videos, 1 as its .episode.npz only."""
    return run(tmp_path_factory.mktemp("render-cartpole"), "rendcp", "evaluation.episodes=3", "env.id=CartPole-v1")


def copy_of(videos: Path, tmp: Path) -> Path:
    """A copy of the video folder (its owner record and lock file too), for a test that writes it."""
    target = tmp / "copy" / "videos"
    shutil.copytree(videos, target, symlinks=True)
    return target


def kept_without_video(videos: Path, line: dict, tmp: Path) -> Path:
    """A video folder holding the episode of ``line`` (which has its live video) as
    recording.select keeps an episode it did not choose: its replay record, the owner record
    and the manifest line without the video's fields (naming.episode_metadata's shape)."""
    target = tmp / "kept" / "videos"
    target.mkdir(parents=True)
    shutil.copy2(videos / ".eval_recorder-owner.json", target)
    record = videos / line["record"]
    (shutil.copytree if record.is_dir() else shutil.copy2)(record, target / line["record"])
    append_record(target / MANIFEST, {"record": line["record"],
                                      **{key: value for key, value in line.items() if key not in (*VIDEO_ONLY, "record")}})
    return target


def without_video(videos: Path) -> list[dict]:
    return [line for line in read_manifest(videos) if "file" not in line]


def with_video(videos: Path) -> list[dict]:
    return [line for line in read_manifest(videos) if "file" in line]


def assert_same_frames(ours: Path, live: Path) -> None:
    rendered, recorded = rgb_frames(ours), rgb_frames(live)
    assert len(rendered) == len(recorded) > 1
    for index, (a, b) in enumerate(zip(rendered, recorded)):
        assert np.array_equal(a, b), f"frame {index} differs"


def raw_lines(videos: Path) -> list[dict]:
    return [json.loads(line) for line in (videos / MANIFEST).read_text().splitlines() if line.strip()]


def tree(folder: Path) -> dict[str, str]:
    """Every file's sha256 and every folder (empty ones too) under ``folder``."""
    return {**snapshot(folder), **{str(p.relative_to(folder)): "dir" for p in folder.rglob("*") if p.is_dir()}}


# ---- the same frames as the live recording --------------------------------------------------


@pytest.mark.slow
def test_a_flatland_episode_rendered_later_has_the_frames_of_its_live_video(flatland_videos, tmp_path):
    line = with_video(flatland_videos)[0]  # one: each render= starts a process
    kept = kept_without_video(flatland_videos, line, tmp_path)
    proc = render(kept / line["record"], tmp_path, check=True)

    video = kept / line["file"]
    assert proc.stdout.splitlines() == [
        f"rendered {video} (iteration 1, {line['frames']} frames)",
        f"videos rendered 1 | gallery {kept / 'index.html'}"]
    assert_same_frames(video, flatland_videos / line["file"])  # the label burned in too
    assert (read_trajectory(kept / line["record"]).arrays["malfunction"] > 0).any()  # trains broke down
    assert video.read_bytes() == (flatland_videos / line["file"]).read_bytes()  # same encoder, same settings

    (stored,) = read_manifest(kept)
    assert stored == json.loads(video.with_suffix(".json").read_text())
    assert stored["rendered"] == RENDERED and stored["render_settings"] == DEFAULTS
    for key in ("training_iteration", "env_steps", "evaluation_round", "episode_index", "env_seed",
                "episode_length", "episode_return", "completion", "run_id", "weights_seq_no", "record", "file",
                "frames", "width", "height", "sha256", "bytes"):
        assert stored[key] == line[key], key
    assert stored["poster"] == line["poster"]
    assert (kept / stored["poster"]).read_bytes() == (flatland_videos / line["poster"]).read_bytes()
    assert f'src="{line["file"]}"' in (kept / "index.html").read_text()


@pytest.mark.slow
def test_a_whole_folder_renders_every_episode_without_a_video_once(flatland_videos, tmp_path):
    videos = copy_of(flatland_videos, tmp_path)
    before = read_manifest(videos)
    waiting = without_video(videos)
    assert len(waiting) == 2

    proc = render(videos, tmp_path, check=True)

    assert proc.stdout.splitlines()[-1] == f"videos rendered 2 | gallery {videos / 'index.html'}"
    after = check_folder_is_consistent(videos)
    # each rendered video's line takes the place of its episode's line: one line per episode, in order
    assert [line["episode_index"] for line in after] == [line["episode_index"] for line in before]
    assert sorted(line["episode_index"] for line in after) == [0, 1, 2, 3]
    assert len(raw_lines(videos)) == 4 + 2
    for episode in waiting:
        (line,) = [line for line in after if line["record"] == episode["record"]]
        assert line["file"] == f"{episode['record']}.mp4"  # the record's stem: as if recorded live
        assert {key: line[key] for key in episode} == episode
        assert line["rendered"] == RENDERED and line["render_settings"] == DEFAULTS
        assert line["frames"] == episode["episode_length"] + 1
        assert json.loads((videos / f"{episode['record']}.json").read_text()) == line
        assert (videos / line["poster"]).is_file()
    gallery = (videos / "index.html").read_text()
    assert all(f'src="{line["file"]}"' in gallery for line in after)

    again = render(videos, tmp_path / "again", check=True)
    assert again.stdout.splitlines() == [
        f"nothing to render: every episode in {videos} that has a replay record has its video"]


@pytest.mark.slow
def test_other_settings_give_other_frames_and_say_so(flatland_videos, tmp_path):
    line = with_video(flatland_videos)[0]
    kept = kept_without_video(flatland_videos, line, tmp_path)
    render(kept, tmp_path, "recording.max_side=200", "recording.overlay=false", "recording.frame_every=2",
           "recording.fps=5", check=True)

    (stored,) = read_manifest(kept)
    frames = rgb_frames(kept / line["file"])
    width, height = scaled_size(line["width"], line["height"], 200)
    assert len(frames) == stored["frames"] == len(frame_steps(line["episode_length"], 2))
    assert frames[0].shape == (height, width, 3) == (stored["height"], stored["width"], 3)
    assert stored["render_settings"] == {"fps": 5, "max_side": 200, "overlay": False, "frame_every": 2}
    assert (stored["fps"], stored["frame_every"]) == (5, 2)


@pytest.mark.slow
def test_a_gymnasium_episode_rendered_later_has_the_frames_of_its_live_video(cartpole_videos, tmp_path):
    (waiting,) = without_video(cartpole_videos)
    line = with_video(cartpole_videos)[0]
    # the env comes from the config of the run that made the folder (its owner record names the run folder)
    kept = kept_without_video(cartpole_videos, line, tmp_path / "kept")
    render(kept / line["record"], tmp_path / "kept", check=True)
    assert_same_frames(kept / line["file"], cartpole_videos / line["file"])
    assert (kept / line["file"]).read_bytes() == (cartpole_videos / line["file"]).read_bytes()

    videos = copy_of(cartpole_videos, tmp_path)
    render(videos / waiting["record"], tmp_path, check=True)
    (line,) = [line for line in check_folder_is_consistent(videos) if line["record"] == waiting["record"]]
    assert line["file"] == waiting["record"].removesuffix(".episode.npz") + ".mp4"
    assert line["frames"] == waiting["episode_length"] + 1 and line["rendered"] == RENDERED


# ---- refused: nothing written ---------------------------------------------------------------


def altered_reward_of_flatland(trajectory: Path, step: int) -> tuple[float, float]:
    """Add 1 to train 0's reward after ``step`` in the trajectory's event log; (was, now)."""
    import pandas as pd

    tsv = trajectory / "event_logs" / "TrainMovementEvents.trains_rewards_dones_infos.tsv"
    frame = pd.read_csv(tsv, sep="\t")
    row = (frame["env_time"] == step) & (frame["agent_id"] == 0)
    was = float(frame.loc[row, "reward"].iloc[0])
    frame.loc[row, "reward"] = was + 1
    frame.to_csv(tsv, sep="\t", index=False)
    return was, was + 1


@pytest.mark.slow
def test_a_flatland_record_that_does_not_replay_is_refused_naming_the_step(flatland_videos, tmp_path):
    videos = copy_of(flatland_videos, tmp_path)
    waiting = without_video(videos)
    was, now = altered_reward_of_flatland(videos / waiting[1]["record"], step=5)
    before = tree(videos)

    proc = render(videos, tmp_path)  # the other episode would replay: nothing of it is written either

    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: step 5: train 0's reward is {was!r} in the replay, {now!r} in the record; the RailEnv does not "
        "repeat this episode from its initial state and the recorded actions, so it cannot be replayed or rendered "
        "from this record."]
    assert tree(videos) == before
    assert not (tmp_path / "render-run").exists()


@pytest.mark.slow
def test_a_gymnasium_record_that_does_not_replay_is_refused_naming_the_step(cartpole_videos, tmp_path):
    from eval_recorder.episode_record import EpisodeRecord

    videos = copy_of(cartpole_videos, tmp_path)
    (waiting,) = without_video(videos)
    path = videos / waiting["record"]
    record = EpisodeRecord.from_bytes(path.read_bytes())
    record.arrays["rewards"][2] = 5.0
    path.write_bytes(record.to_bytes())
    before = tree(videos)

    proc = render(path, tmp_path)

    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: step 3: the reward is 1.0 in the replay, 5.0 in the record; the env does not repeat this episode "
        "from its seed and the recorded actions, so it cannot be replayed or rendered from this record."]
    assert tree(videos) == before


@pytest.mark.slow
def test_refusals_are_one_sentence_and_write_nothing(flatland_videos, tmp_path):
    from eval_recorder.folder_guard import claim_folder

    videos = copy_of(flatland_videos, tmp_path)
    chosen = with_video(videos)[0]
    waiting = without_video(videos)[0]
    before = tree(videos)
    cases = [
        (videos / "nothing-here", f"render={videos / 'nothing-here'} does not exist; give a video folder or one "
                                  "episode's replay record in it (<stem>/ or <stem>.episode.npz)."),
        (videos / chosen["file"], f"render={videos / chosen['file']} is not the replay record of an episode listed in "
                                  f"{videos / MANIFEST}; give a video folder or one episode's record in it (<stem>/ "
                                  "or <stem>.episode.npz)."),
        (videos / chosen["record"], f"the episode of {chosen['record']} already has its video {chosen['file']}; "
                                    "nothing was rendered."),
        (tmp_path, f"render={tmp_path} is neither a video folder (one with {MANIFEST}) nor an episode's replay "
                   "record in one; give a video folder or one episode's record in it."),
    ]
    for number, (path, message) in enumerate(cases):
        proc = render(path, tmp_path / str(number))
        assert (proc.returncode, proc.stderr.splitlines()) == (2, [f"error: {message}"]), path
        assert not (tmp_path / str(number) / "render-run").exists()
    assert tree(videos) == before

    planted = copy_of(flatland_videos, tmp_path / "planted")  # a record swapped for a link to a copy elsewhere
    record = planted / waiting["record"]
    shutil.move(record, tmp_path / "elsewhere")
    record.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    planted_before = tree(planted)
    proc = render(record, tmp_path / "planted-run")
    assert (proc.returncode, proc.stderr.splitlines()) == (2, [
        f"error: the replay record {waiting['record']!r} listed in {planted / MANIFEST} is not an entry of that "
        "folder (a symbolic link, or a path elsewhere), and nothing planted is read; put back the record "
        "eval_recorder wrote there."])
    assert tree(planted) == planted_before

    claim = claim_folder(videos, run_id="rendfl", resume=True)  # a live run holds the folder
    try:
        held = tree(videos)
        proc = render(videos / waiting["record"], tmp_path / "held")
        assert (proc.returncode, proc.stderr.splitlines()) == (
            2, [f"error: {in_use_message(videos.resolve(), 'rendfl', os.getpid())}"])
        assert tree(videos) == held
    finally:
        claim.release()


# ---- interrupted --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_render_killed_in_the_middle_leaves_the_folder_consistent_and_completes_when_run_again(
        flatland_videos, tmp_path):
    from eval_recorder.folder_guard import live_holder

    videos = copy_of(flatland_videos, tmp_path)
    waiting = [line["record"] for line in without_video(videos)]
    proc = subprocess.Popen(run_eval_command(f"render={videos}", f"hydra.run.dir={tmp_path / 'killed'}"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(".render-" in name for name in os.listdir(videos)):  # an episode is being encoded
            assert proc.poll() is None and time.monotonic() < deadline, "the render ended before it was killed"
            time.sleep(0.02)
    finally:
        kill_session(proc)
    assert proc.returncode == -signal.SIGKILL

    lines = check_folder_is_consistent(videos)  # every final-named mp4 decodes fully, the manifest parses
    assert len([line for line in lines if "file" not in line]) >= 1  # killed before the end
    assert live_holder(videos) is None  # the OS released the lock

    render(videos, tmp_path / "again", check=True)

    lines = check_folder_is_consistent(videos)
    assert sorted(line["episode_index"] for line in lines) == [0, 1, 2, 3] and all("file" in line for line in lines)
    files = [line["file"] for line in raw_lines(videos) if "file" in line]
    assert sorted(files) == sorted(set(files))  # every episode's video listed once
    assert sorted(path.name for path in videos.glob("*.mp4")) == sorted(f"{record}.mp4" for record in
                                                                           [*waiting, *(line["record"] for line in
                                                                                        with_video(flatland_videos))])
    assert not [name for name in os.listdir(videos) if ".render-" in name]


@pytest.mark.slow
def test_a_video_a_killed_render_left_without_its_index_is_completed_not_duplicated(flatland_videos, tmp_path):
    """The window between a video's final name and its sidecar: the next render finds the
    same bytes under that name, writes its sidecar and manifest line, and stores no -2."""
    from eval_recorder.atomic_files import publish_file
    from eval_recorder.render_later import _episode, rendered_mp4

    videos = copy_of(flatland_videos, tmp_path)
    first, second = without_video(videos)
    mp4, _ = rendered_mp4(_episode(videos, first), RenderSettings(), None, tmp_path / "scratch.mp4")
    assert publish_file(videos, mp4, videos / f"{first['record']}.mp4")  # as the killed render left it

    render(videos, tmp_path, check=True)

    lines = check_folder_is_consistent(videos)
    assert [line.get("file") for line in lines if line["record"] in (first["record"], second["record"])] == [
        f"{first['record']}.mp4", f"{second['record']}.mp4"]
    assert (videos / f"{first['record']}.mp4").read_bytes() == mp4
    assert not list(videos.glob("*-2.*"))


# ---- pure parts ---------------------------------------------------------------------------


def test_frame_steps_are_the_live_recorders():
    assert frame_steps(5, 1) == [0, 1, 2, 3, 4, 5]
    assert frame_steps(5, 2) == [0, 2, 4, 5]  # the last step always
    assert frame_steps(6, 3) == [0, 3, 6]
    assert frame_steps(2, 5) == [0, 2]


def test_settings_that_cannot_render_are_refused():
    with pytest.raises(UserError, match=r"^recording.frame_every=0 cannot render a video; give an integer of at least 1\.$"):
        RenderSettings(frame_every=0).check()
    with pytest.raises(UserError, match=r"^recording.max_side=-1 cannot render a video; give an integer of at least 0\.$"):
        RenderSettings(max_side=-1).check()


def test_a_rendered_videos_line_takes_the_place_of_its_episodes_line(tmp_path):
    for line in ({"record": "a", "run_id": "r", "episode_index": 0}, {"record": "b", "run_id": "r", "episode_index": 1},
                 {"file": "a.mp4", "record": "a", "run_id": "r", "episode_index": 0, "rendered": "later"}):
        append_record(tmp_path / MANIFEST, line)
    assert [(line.get("file"), line["record"]) for line in read_manifest(tmp_path)] == [("a.mp4", "a"), (None, "b")]


def test_a_folder_without_episodes_to_render_gives_nothing(tmp_path):
    append_record(tmp_path / MANIFEST, {"file": "a.mp4", "record": "a.episode.npz", "run_id": "r"})
    assert find_episodes(tmp_path) == (tmp_path, [])
    assert render_records(tmp_path) == []
    with pytest.raises(UserError, match=r"^render=.* is not the replay record of an episode listed in "):
        find_episodes(tmp_path / MANIFEST)


# ---- the gallery: episodes without a video, and the command that renders one ---------------


def kept_items(gallery: str) -> list[tuple[str, str]]:
    """(caption, command) of each episode the gallery lists without a video, as a browser shows them."""
    import html
    import re

    return [(html.unescape(caption), html.unescape(command)) for caption, command in re.findall(
        r'<li><span class="caption">(.*?)</span><code>(.*?)</code></li>', gallery)]


@pytest.mark.slow
def test_the_gallery_lists_the_episodes_without_a_video_and_its_command_renders_one(flatland_videos, tmp_path):
    import shlex

    videos = copy_of(flatland_videos, tmp_path / "my videos, kept")  # a space and a comma: quoted for sh and Hydra
    (tmp_path / "my videos, kept" / "copy" / "videos" / "index.html").unlink()
    from eval_recorder.gallery import write_gallery

    write_gallery(videos)
    gallery = (videos / "index.html").read_text()
    waiting = without_video(videos)
    items = kept_items(gallery)
    assert [caption for caption, _ in items] == [
        f"episode {line['episode_index']} · completion {line['completion']:.2f} · "
        f"{line['agents_arrived']}/{line['num_agents']} arrived · return {line['episode_return']:.2f}"
        for line in waiting]
    assert "2 videos of 1 training iteration, newest first · 2 episodes without a video · run rendfl" in gallery
    for line in with_video(videos):
        assert f" · chosen: {line['chosen']}</span>" in gallery  # each video says why it was chosen

    command = items[0][1]
    assert command.startswith("python run_eval.py ") and shlex.split(command)[2] != command.split(" ", 2)[2]
    # run exactly as printed, by a shell, from a folder where `python run_eval.py` names the project's
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "run_eval.py").symlink_to(Path(__file__).resolve().parents[1] / "run_eval.py")
    (cwd / "conf").symlink_to(Path(__file__).resolve().parents[1] / "conf")
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == f"videos rendered 1 | gallery {videos / 'index.html'}"

    gallery = (videos / "index.html").read_text()
    assert [caption for caption, _ in kept_items(gallery)] == [items[1][0]]
    assert f'src="{waiting[0]["record"]}.mp4"' in gallery
    assert '<span class="rendered">rendered later from its replay record</span>' in gallery


def test_the_render_command_is_quoted_for_the_shell_and_for_hydra():
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from eval_recorder.gallery_records import render_command

    for path in ("/data/videos/flatland-it000001-ev0001-ep000-a", "/my videos/x", "/a,b/it's [1]/x=y", "/$HOME/x"):
        words = shlex.split(render_command(path))
        assert words[:2] == ["python", "run_eval.py"]
        (override,) = OverridesParser.create().parse_overrides(words[2:])
        assert (override.key_or_group, override.value()) == ("render", path)


def test_a_stored_trajectory_reads_back_as_the_episode_and_draws_its_live_frames(tmp_path):
    """flatland/record_frames: the Trajectory folder publish_trajectory wrote is read back
    (nothing written into it) to the episode that was captured, and its frames and label
    extras are those the live renderer drew of the stepping env."""
    from eval_recorder.flatland.frames import FlatlandFrames
    from eval_recorder.flatland.rendering import FrameRenderer
    from eval_recorder.flatland.trajectory import FlatlandEpisode, TrajectoryCapture, publish_trajectory
    from eval_recorder.frames import YUV420P
    from test_flatland_trajectory import malfunctioning_env

    env = malfunctioning_env(seed=9)
    renderer, live, extras = FrameRenderer(env, max_side=300), [], []
    source = FlatlandFrames(env, env, max_side=300)

    def keep() -> None:
        live.append(renderer.render_yuv420p())
        extras.append(source.label_extra())

    renderer.new_episode()
    keep()
    capture, rng = TrajectoryCapture(env), np.random.default_rng(3)
    while True:
        actions = {handle: int(rng.integers(0, 5)) for handle in range(env.get_num_agents())}
        _, _, dones, _ = env.step(actions)
        capture.step(actions)
        keep()
        if dones["__all__"]:
            break
    episode = capture.finish()
    folder = publish_trajectory(FlatlandEpisode.from_bytes(episode.to_bytes()), tmp_path, "ep")
    before = tree(folder)

    again = read_trajectory(folder)
    assert (again.n_agents, again.steps, again.ended, again.initial_state) == (
        episode.n_agents, episode.steps, episode.ended, episode.initial_state)
    assert again.success_rate == pytest.approx(episode.success_rate)
    for name, array in episode.arrays.items():
        assert np.array_equal(again.arrays[name], array) and again.arrays[name].dtype == array.dtype, name
    assert (episode.arrays["malfunction"] > 0).any()

    steps = frame_steps(episode.steps, 3)
    drawn = list(FlatlandFrames.render_record(folder, max_side=300, steps=steps))
    assert [extra for _, _, extra in drawn] == [extras[step] for step in steps]
    for step, (pixel_format, frame, _) in zip(steps, drawn):
        assert pixel_format == YUV420P and np.array_equal(frame, live[step]), f"frame of step {step} differs"
    assert list(FlatlandFrames.render_record(folder, max_side=300, steps=[])) == []  # the check alone
    assert tree(folder) == before


def test_a_damaged_record_is_refused_in_one_sentence_and_nothing_is_written(tmp_path):
    from eval_recorder.folder_guard import claim_folder

    claim_folder(tmp_path, run_id="r", resume=False).release()  # a video folder of run r
    (tmp_path / "flatland-it000001-ev0001-ep000-r").mkdir()  # its trajectory lost its files
    append_record(tmp_path / MANIFEST, {"record": "flatland-it000001-ev0001-ep000-r", "run_id": "r",
                                        "training_iteration": 1, "episode_index": 0, "episode_length": 3})
    before = tree(tmp_path)
    state = tmp_path / "flatland-it000001-ev0001-ep000-r" / "serialised_state" / "flatland-it000001-ev0001-ep000-r.pkl"
    with pytest.raises(UserError, match=rf"^{tmp_path / 'flatland-it000001-ev0001-ep000-r'} is not a flatland trajectory "
                                        rf"of episode flatland-it000001-ev0001-ep000-r \({state} cannot be read: No such "
                                        r"file or directory\); the episode cannot be rendered from this record\.$"):
        render_records(tmp_path)
    assert tree(tmp_path) == before
