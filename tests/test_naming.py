"""Names, tags and metadata: pure functions."""

import pytest

from eval_recorder.naming import (
    caption,
    check_run_id,
    env_label,
    numbered_stem,
    parse_video_name,
    video_metadata,
    video_stem,
)
from eval_recorder.tags import TrainingTag, WeightsHistory
from helpers import episode


def test_video_stem_puts_the_env_label_then_the_zero_padded_iteration_first():
    stem = video_stem(env="flatland", training_iteration=12, evaluation_round=3, episode_index=1, run_id="abc123")
    assert stem == "flatland-it000012-ev0003-ep001-abc123"
    stem = video_stem(env="cartpole-v1", training_iteration=0, evaluation_round=1, episode_index=0, run_id="r")
    assert stem == "cartpole-v1-it000000-ev0001-ep000-r"


@pytest.mark.parametrize("name, label", [
    ("CartPole-v1", "cartpole-v1"), ("ale_py:ALE/Pong-v5", "pong-v5"), ("my_pkg.envs.GridEnv", "gridenv"),
    ("flatland_env", "flatland_env"), ("My Env!", "my-env"), ("", "env"), ("???", "env"),
    ("a" * 40, "a" * 24),
])
def test_env_label_is_short_lower_case_and_file_name_safe(name, label):
    assert env_label(name) == label


def test_video_stem_refuses_a_label_that_is_not_one():
    with pytest.raises(ValueError, match="env label 'Flat Land' is not a label; make it with env_label()"):
        video_stem(env="Flat Land", training_iteration=1, evaluation_round=1, episode_index=0, run_id="r")


def test_name_order_is_training_order():
    stems = [
        video_stem(env="flatland", training_iteration=it, evaluation_round=r, episode_index=e, run_id="r")
        for it, r, e in [(100, 10, 0), (9, 1, 2), (10, 2, 0), (9, 1, 10)]
    ]
    assert sorted(stems) == [stems[1], stems[3], stems[2], stems[0]]


def test_numbered_stem_first_try_is_the_stem_itself():
    assert [numbered_stem("a", n) for n in (1, 2, 3)] == ["a", "a-2", "a-3"]


def test_a_video_name_parses_back_into_what_it_was_made_of():
    made_of = dict(env="cartpole-v1", training_iteration=12, evaluation_round=3, episode_index=1, run_id="r.1_a")
    stem = video_stem(**made_of)
    assert stem == "cartpole-v1-it000012-ev0003-ep001-r.1_a"
    assert parse_video_name(f"{stem}.mp4", "r.1_a") == made_of
    assert parse_video_name(f"{numbered_stem(stem, 2)}.mp4", "r.1_a") == made_of
    assert parse_video_name(f"{numbered_stem(stem, 31)}.mp4", "r.1_a") == made_of
    large = dict(env="flatland", training_iteration=1234567, evaluation_round=12345, episode_index=1000, run_id="r")
    assert parse_video_name(f"{video_stem(**large)}.mp4", "r") == large
    assert video_stem(**parse_video_name("flatland-it000000-ev0001-ep000-r.mp4", "r")) == "flatland-it000000-ev0001-ep000-r"


@pytest.mark.parametrize("name", [
    "flatland-it000012-ev0003-ep001-other.mp4",  # another run's
    "flatland-it000012-ev0003-ep001-r.json",  # the sidecar, not the video
    ".flatland-it000012-ev0003-ep001-r.mp4.x1y2.tmp",  # a hidden temporary file
    "flatland-it12-ev0003-ep001-r.mp4",  # not zero-padded
    "Flatland-it000012-ev0003-ep001-r.mp4",  # not an env label
    "flatland-it000012-ev0003-ep001-r-0.mp4",  # not a numbered_stem
    "flatland-it000012-ev0003-r.mp4",
])
def test_other_names_are_not_videos_of_the_run(name):
    assert parse_video_name(name, "r") is None


@pytest.mark.parametrize("bad", ["", "has space", "../up", "a/b", "x" * 65])
def test_run_id_must_be_safe_in_file_names(bad):
    with pytest.raises(ValueError, match="may hold only letters"):
        check_run_id(bad)


def test_serial_evaluation_tags_the_iteration_that_just_trained():
    history = WeightsHistory()
    history.record(weights_seq_no=0, training_iteration=0, env_steps=0)
    # train() call 1: training updated the learner (version 1), then evaluation ran.
    assert history.tag_for(1, env_steps_now=400) == TrainingTag(1, 400)
    history.record(weights_seq_no=1, training_iteration=1, env_steps=400)
    assert history.tag_for(2, env_steps_now=800) == TrainingTag(2, 800)


def test_parallel_evaluation_tags_the_previous_iteration():
    history = WeightsHistory()
    history.record(weights_seq_no=0, training_iteration=0, env_steps=0)
    # train() call 1: evaluation synced version 0 before training finished.
    assert history.tag_for(0, env_steps_now=123) == TrainingTag(0, 0)
    history.record(weights_seq_no=1, training_iteration=1, env_steps=400)
    # call 2 evaluates version 1 = weights after iteration 1, with its env steps.
    assert history.tag_for(1, env_steps_now=555) == TrainingTag(1, 400)


def test_iterations_without_update_share_a_version_and_the_latest_wins():
    history = WeightsHistory()
    history.record(weights_seq_no=4, training_iteration=7, env_steps=70)
    history.record(weights_seq_no=4, training_iteration=8, env_steps=80)
    assert history.tag_for(4, env_steps_now=0) == TrainingTag(8, 80)


def test_resumed_run_tags_continue_from_the_restored_iteration():
    history = WeightsHistory()
    history.record(weights_seq_no=5, training_iteration=5, env_steps=2000)
    assert history.tag_for(6, env_steps_now=2400) == TrainingTag(6, 2400)


def test_a_version_older_than_every_recorded_one_is_an_error():
    history = WeightsHistory()
    history.record(weights_seq_no=5, training_iteration=5, env_steps=2000)
    with pytest.raises(ValueError, match="weights version 3 is older than every recorded training iteration"):
        history.tag_for(3, env_steps_now=0)


def test_asynchronous_versions_between_two_iterations_belong_to_the_later_one():
    """APPO/IMPALA update many times per iteration and sync runners in between."""
    history = WeightsHistory()
    history.record(weights_seq_no=0, training_iteration=0, env_steps=0)
    history.record(weights_seq_no=7, training_iteration=1, env_steps=500)
    history.record(weights_seq_no=15, training_iteration=2, env_steps=1000)
    assert history.tag_for(3, env_steps_now=9) == TrainingTag(1, 500)
    assert history.tag_for(7, env_steps_now=9) == TrainingTag(1, 500)
    assert history.tag_for(8, env_steps_now=9) == TrainingTag(2, 1000)
    assert history.tag_for(16, env_steps_now=1200) == TrainingTag(3, 1200)  # the running train() call
    assert history.latest == TrainingTag(2, 1000)
    assert history.to_dict() == {0: 0, 7: 1, 15: 2}


def test_metadata_has_every_field_with_exact_values():
    metadata = video_metadata(
        episode=episode(), tag=TrainingTag(12, 4800), evaluation_round=3, episode_index=1, run_id="abc123",
        checkpoint=None, file_name="f.mp4", sha256="ff", created="2026-01-01T00:00:00+00:00",
    )
    assert metadata == {
        "file": "f.mp4", "env": "flatland", "training_iteration": 12, "env_steps": 4800, "evaluation_round": 3,
        "episode_index": 1, "env_seed": 77, "episode_length": 41, "episode_return": -12.5, "agent_returns": None,
        "num_agents": 3, "agents_arrived": 2, "completion": 2 / 3, "frames": 42, "frame_every": 1, "fps": 10, "width": 484, "height": 484, "run_id": "abc123",
        "checkpoint": None, "created": "2026-01-01T00:00:00+00:00", "bytes": 12, "sha256": "ff",
        "weights_seq_no": 3, "runner": {"index": 1, "host": "nodeA", "pid": 4242, "env": 0},
    }


def test_caption_says_iteration_steps_completion_and_return():
    metadata = {"training_iteration": 12, "env_steps": 4800, "episode_index": 1, "agents_arrived": 2,
                "num_agents": 3, "episode_return": -12.5}
    assert caption(metadata) == "iteration 12 · 4800 env steps · episode 1 · 2/3 arrived · return -12.50"


def test_caption_of_an_env_without_arrivals_and_of_a_saved_scenario():
    plain = {"training_iteration": 3, "env_steps": 120, "episode_index": 0, "episode_return": 21.0}
    assert caption(plain) == "iteration 3 · 120 env steps · episode 0 · return 21.00"
    scenario = {**plain, "scenario": "Level_2.pkl", "agents_arrived": 1, "num_agents": 2}
    assert caption(scenario) == "iteration 3 · 120 env steps · episode 0 · scenario Level_2.pkl · 1/2 arrived · return 21.00"


def test_trackers_caption_a_recovered_record_by_iteration_and_episode():
    from eval_recorder.naming import tracker_caption

    assert tracker_caption({"training_iteration": 4, "episode_index": 1}) == "iteration 4 · episode 1"


@pytest.mark.parametrize("run_id, override", [
    ("72e47061", "wandb.run_id='72e47061'"),  # a float (inf) unquoted
    ("12345678", "wandb.run_id='12345678'"), ("1e5", "wandb.run_id='1e5'"), ("1.5", "wandb.run_id='1.5'"),
    ("1_000", "wandb.run_id='1_000'"), ("-3", "wandb.run_id='-3'"), ("inf", "wandb.run_id='inf'"),
    ("NaN", "wandb.run_id='NaN'"), ("true", "wandb.run_id='true'"), ("null", "wandb.run_id='null'"),
    ("00123456", "wandb.run_id='00123456'"),
    ("a1b2c3d4", "wandb.run_id=a1b2c3d4"), ("1e5abcde", "wandb.run_id=1e5abcde"), ("f8e9cdfb", "wandb.run_id=f8e9cdfb"),
    ("run-1", "wandb.run_id=run-1"), ("nan1234", "wandb.run_id=nan1234"),
])
def test_a_run_id_override_keeps_the_id_as_text_for_hydra(run_id, override):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from eval_recorder.naming import run_id_override

    assert run_id_override(run_id) == override
    assert OverridesParser.create().parse_override(override).value() == run_id  # Hydra reads the very id back


def test_every_hex_run_id_that_hydra_reads_as_a_number_is_quoted():
    """All 8-hex-digit ids made of digits and 'e' only (the ones Hydra might read as numbers), checked against Hydra."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from eval_recorder.naming import run_id_override

    parser = OverridesParser.create()
    for letters in itertools.islice(itertools.product("0123456789e", repeat=8), 0, None, 99_991):
        run_id = "".join(letters)
        assert parser.parse_override(run_id_override(run_id)).value() == run_id, run_id


def test_new_run_ids_are_never_read_as_numbers():
    import re

    from eval_recorder.options import new_run_id

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    ids = [new_run_id() for _ in range(3000)]
    assert all(re.fullmatch(r"[0-9a-f]{8}", run_id) for run_id in ids)
    assert all(parser.parse_override(f"wandb.run_id={run_id}").value() == run_id for run_id in ids)  # as typed
    assert len(set(ids)) == len(ids)
