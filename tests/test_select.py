"""recording.select and the replay record of every evaluation episode, as a user runs them:
real `python run_eval.py` jobs (real Ray, PPO, Flatland and CartPole), real files, real
wandb offline runs; the records replayed by flatland's own TrajectoryEvaluator and by
eval_recorder.episode_record.replay."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import TINY, run_eval_command
from helpers import evaluate_trajectory
from eval_recorder.selection import EpisodeFacts, choose, may_be_chosen, parse_select
from eval_recorder.video_index import MANIFEST, read_manifest
from eval_recorder.wandb_sink import video_key
from wandb_offline import history_rows

SELECT = "worst:1,best:1"
VIDEO_ONLY = {"file", "frames", "frame_every", "fps", "width", "height", "bytes", "sha256", "poster", "chosen"}


def run(tmp, name: str, *overrides: str) -> subprocess.CompletedProcess:
    tiny = [option for option in TINY if not option.startswith("evaluation.episodes=")]
    return subprocess.run(
        run_eval_command(*tiny, "training.iterations=1", f"wandb.run_id={name}", f"recording.video_dir={tmp / 'videos'}",
                         f"hydra.run.dir={tmp / 'run'}", *overrides),
        capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """One round of 6 Flatland episodes, trains breaking down often, with recording.select=worst:1,best:1."""
    tmp = tmp_path_factory.mktemp("select")
    proc = run(tmp, "selrun", "evaluation.episodes=6", "env.malfunction_interval=3", f"recording.select='{SELECT}'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc


def stem(index: int, run_id: str = "selrun", env: str = "flatland") -> str:
    return f"{env}-it000001-ev0001-ep{index:03d}-{run_id}"


@pytest.mark.slow
def test_select_stores_exactly_the_chosen_videos_and_says_why(selected):
    tmp, proc = selected
    videos = tmp / "videos"
    records = read_manifest(videos)
    facts = [EpisodeFacts(index=r["episode_index"], episode_return=r["episode_return"], completion=r["completion"],
                          agents_arrived=r["agents_arrived"], num_agents=r["num_agents"])
             for r in sorted(records, key=lambda r: r["episode_index"])]
    assert [fact.index for fact in facts] == [0, 1, 2, 3, 4, 5]
    # The one eval runner drew only the episodes the rules could still choose (worse or better
    # than every earlier one); the others' records were written as they arrived, the drawn
    # ones' lines when the round was in, in episode order.
    drawn = [fact.index for at, fact in enumerate(facts) if may_be_chosen(SELECT, facts[:at], fact)]
    assert [record["episode_index"] for record in records] == [i for i in range(6) if i not in drawn] + drawn
    expected = {chosen.index: chosen.reason for chosen in choose(parse_select(SELECT), facts)}
    assert len(expected) == 2 and sorted(expected.values()) == ["best completion of 6", "worst completion of 6"]

    assert sorted(path.name for path in videos.glob("*.mp4")) == [f"{stem(i)}.mp4" for i in sorted(expected)]
    for record in records:
        index = record["episode_index"]
        assert record["record"] == stem(index)  # every episode's trajectory, sharing the video's stem
        assert (videos / stem(index) / "serialised_state" / f"{stem(index)}.pkl").is_file()
        if index in expected:
            assert record["file"] == f"{stem(index)}.mp4" and record["chosen"] == expected[index]
            sidecar = json.loads((videos / f"{stem(index)}.json").read_text())
            assert sidecar == record
        else:
            assert VIDEO_ONLY.isdisjoint(record)
            assert not (videos / f"{stem(index)}.json").exists()
    gallery = (videos / "index.html").read_text()
    for reason in expected.values():
        assert f"chosen: {reason}" in gallery
    # every episode counts in the round's means (the console line and wandb's eval/ metrics)
    completion = sum(record["completion"] for record in records) / 6
    assert f"evaluated weights of iteration 1: completion {completion:.2f} | videos written {len(expected)}" in proc.stdout
    (run_dir,) = (tmp / "run" / "wandb").glob("offline-run-*-selrun")
    rows = history_rows(run_dir)
    (metrics,) = [row for row in rows if "eval/completion_rate" in row]
    assert metrics["eval/completion_rate"] == pytest.approx(completion)
    assert metrics["eval/videos"] == len(expected)
    captions = {index: row[f"{video_key(index)}/caption"] for row in rows for index in range(6)
                if f"{video_key(index)}/caption" in row}
    assert set(captions) == set(expected)
    for index, text in captions.items():
        assert text.endswith(f" · chosen: {expected[index]}")


@pytest.mark.slow
def test_every_episodes_trajectory_with_its_malfunctions_passes_flatlands_evaluator(selected):
    tmp, _ = selected
    videos = tmp / "videos"
    records = read_manifest(videos)
    assert len([r for r in records if "file" not in r]) == 4  # kept without a video: their trajectories too
    broken_down = 0
    for record in records:
        env, malfunctions = evaluate_trajectory(videos, record)
        assert sum(agent.state == 6 for agent in env.agents) == record["agents_arrived"]  # TrainState.DONE
        broken_down += sum(counter > 0 for counter in malfunctions)
    assert broken_down > 0  # the round had malfunctions, and their replays passed


@pytest.mark.slow
def test_a_gymnasium_env_gets_episode_records_that_replay(tmp_path):
    import gymnasium as gym

    from eval_recorder.episode_record import EpisodeRecord, replay

    proc = run(tmp_path, "cartrun", "env.id=CartPole-v1", "evaluation.episodes=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = tmp_path / "videos"
    records = read_manifest(videos)
    assert [(r["file"], r["record"]) for r in records] == [
        (f"{stem(i, 'cartrun', 'cartpole-v1')}.mp4", f"{stem(i, 'cartrun', 'cartpole-v1')}.episode.npz") for i in (0, 1)]
    for r in records:
        kept = EpisodeRecord.from_bytes((videos / r["record"]).read_bytes())
        assert (kept.seed, kept.steps, kept.multi_agent) == (r["env_seed"], r["episode_length"], False)
        assert float(kept.arrays["rewards"].sum()) == r["episode_return"]
        replay(lambda: gym.make("CartPole-v1"), kept).close()


def test_a_bad_select_is_refused_before_anything_is_written(tmp_path):
    proc = run(tmp_path, "badsel", "recording.select=worse:1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: recording.select has 'worse:1': 'worse' is not one of all, worst, best, failed, first; "
        "write all, or a list such as worst:1,best:1."
    )
    assert not (tmp_path / "videos").exists() and not (tmp_path / "run").exists()
    assert not (tmp_path / "videos" / MANIFEST).exists()


def kept_episode(seed: int, episode_return: float, completion: float):
    """A RecordedEpisode carrying a real replay record (a 3-step CartPole episode)."""
    import gymnasium as gym

    from eval_recorder.episode_record import EpisodeCapture
    from helpers import episode

    env = gym.make("CartPole-v1")
    env.reset(seed=seed)
    capture = EpisodeCapture(seed=seed)
    for _ in range(3):
        _, reward, terminated, truncated, _ = env.step(0)
        capture.step(0, reward, terminated, truncated)
    return episode(env_label="cartpole-v1", env_seed=seed, episode_return=episode_return, episode_length=3,
                   facts={"completion": completion}, record=capture.finish().to_bytes(), record_kind="episode")


def test_a_session_holds_the_round_and_keeps_only_the_chosen_videos(tmp_path):
    """Without Ray: worst:1 of 3 episodes; the others keep their record and a manifest line;
    the round's means count all 3; a round cut off by close() is decided too."""
    from eval_recorder.options import RecordingOptions
    from eval_recorder.session import RecordingSession, evaluation_metrics
    from eval_recorder.tags import TrainingTag

    videos = tmp_path / "videos"
    session = RecordingSession(RecordingOptions(video_dir=str(videos), run_id="held1", wandb_mode="disabled",
                                                trackers=(), select="worst:1")).open()
    session.begin_round()
    for seed, (episode_return, completion) in enumerate([(-5.0, 0.5), (-9.0, 0.5), (-1.0, 0.0)]):
        assert session.publish(kept_episode(seed, episode_return, completion), TrainingTag(1, 100)) is None
    assert sorted(path.name for path in videos.iterdir() if not path.name.startswith(".")) == []  # held
    stored = session.end_round()
    name = "cartpole-v1-it000001-ev0001-ep{:03d}-held1"
    assert [video.path.name for video in stored] == [f"{name.format(2)}.mp4"]
    records = read_manifest(videos)
    assert [(r.get("file"), r["record"], r.get("chosen")) for r in records] == [
        (None, f"{name.format(0)}.episode.npz", None),
        (None, f"{name.format(1)}.episode.npz", None),
        (f"{name.format(2)}.mp4", f"{name.format(2)}.episode.npz", "worst completion of 3"),
    ]
    assert VIDEO_ONLY.isdisjoint(records[0])
    assert evaluation_metrics(stored, records[:2])["eval/completion_rate"] == pytest.approx(1 / 3)
    assert session.episodes == records
    session.begin_round()
    session.publish(kept_episode(7, -3.0, 1.0), TrainingTag(2, 200))
    session.close()  # the round never ended: what reached the driver is decided and kept
    assert [(r["evaluation_round"], r.get("file")) for r in read_manifest(videos)][3:] == [
        (2, "cartpole-v1-it000002-ev0002-ep000-held1.mp4")]


def test_the_wrapper_keeps_each_episodes_record_with_the_seed_its_reset_got():
    """Resets without a seed (as RLlib's after the first) get a concrete one: the record has it."""
    import gymnasium as gym

    from eval_recorder.episode_record import EpisodeRecord, replay
    from eval_recorder.wrapper import RecordEpisodes

    env = RecordEpisodes(gym.make("CartPole-v1", render_mode="rgb_array"), overlay=False, seed=5)
    for _ in range(2):
        env.reset()
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(1)
            done = terminated or truncated
    episodes = env.pop_finished()
    env.close()
    assert [episode.record_kind for episode in episodes] == ["episode", "episode"]
    for episode in episodes:
        record = EpisodeRecord.from_bytes(episode.record)
        assert (record.seed, record.steps) == (episode.env_seed, episode.episode_length)
        replay(lambda: gym.make("CartPole-v1"), record).close()
