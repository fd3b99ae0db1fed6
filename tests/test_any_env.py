"""Recording the policies people train: their envs, their algorithms (real RLlib runs on tiny envs).

* flatland-rl's own RLlib wrapper (``ray_env_generator`` with flatland's global observation,
  registered by name as flatland-rl's example script does) + PPO;
* a gymnasium env rendering rgb_array (CartPole-v1, by its gymnasium id) + PPO;
* eval runners with two envs each;
* DQN and APPO on a Flatland env, SAC on a continuous gymnasium env (Pendulum-v1):
  tags exact, as README's "Which weights a video shows" defines them.
"""

from __future__ import annotations


import av
import pytest
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import get_trainable_cls

from conftest import TINY, compose_config, flatland_config
from eval_recorder import RecordingOptions, add_recording
from eval_recorder.video_index import read_manifest
from support.training import LearnerVersions, expected_tag, train
from support.user_envs import FLATLAND_ENV, register

pytestmark = pytest.mark.slow


def frames_of(path) -> list:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def evaluated(config, *, episodes=2, runners=1, envs_per_runner=1):
    return config.evaluation(evaluation_interval=1, evaluation_duration=episodes, evaluation_duration_unit="episodes",
                             evaluation_num_env_runners=runners,
                             evaluation_config={"num_envs_per_env_runner": envs_per_runner})


def options(tmp_path, run_id):
    return RecordingOptions(video_dir=str(tmp_path / "videos"), run_id=run_id, wandb_mode="disabled")


def shared_policy(agent_id, *args, **kwargs):
    return "p0"


def test_flatland_rl_example_env_with_its_own_observation_builder_and_ppo(ray_local, tmp_path):
    register()  # as flatland-rl's example: register_env("...", lambda _: ray_env_generator(..., obs_builder_object=...))
    config = evaluated(
        get_trainable_cls("PPO").get_default_config()
        .environment(FLATLAND_ENV, env_config={"n_agents": 2, "seed": 0})
        .multi_agent(policies={"p0"}, policy_mapping_fn=shared_policy)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={"p0": RLModuleSpec(
            model_config={"fcnet_hiddens": [16]})}))
        .env_runners(num_env_runners=0)
        .training(train_batch_size_per_learner=200, minibatch_size=64, num_epochs=1)
    )
    results = train(add_recording(config, options(tmp_path, "flatrl")), iterations=2)
    manifest = read_manifest(tmp_path / "videos")
    assert [m["file"] for m in manifest] == [
        "flatland-it000001-ev0001-ep000-flatrl.mp4", "flatland-it000001-ev0001-ep001-flatrl.mp4",
        "flatland-it000002-ev0002-ep000-flatrl.mp4", "flatland-it000002-ev0002-ep001-flatrl.mp4",
    ]
    assert [m["training_iteration"] for m in manifest] == [r["training_iteration"] for r in results for _ in (0, 1)]
    for record in manifest:
        assert record["env"] == "flatland" and record["num_agents"] == 2
        assert record["completion"] == record["agents_arrived"] / 2
        assert set(record["agent_returns"]) == {"0", "1"}
        assert len(frames_of(tmp_path / "videos" / record["file"])) == record["frames"] == record["episode_length"] + 1


def test_gymnasium_env_by_its_id_is_recorded_through_its_own_render(ray_local, tmp_path):
    config = evaluated(
        get_trainable_cls("PPO").get_default_config().environment("CartPole-v1")
        .env_runners(num_env_runners=0).rl_module(model_config={"fcnet_hiddens": [16]})
        .training(train_batch_size_per_learner=200, minibatch_size=64, num_epochs=1)
    )
    results = train(add_recording(config, options(tmp_path, "cart")), iterations=2)
    manifest = read_manifest(tmp_path / "videos")
    assert [m["file"] for m in manifest] == [
        "cartpole-v1-it000001-ev0001-ep000-cart.mp4", "cartpole-v1-it000001-ev0001-ep001-cart.mp4",
        "cartpole-v1-it000002-ev0002-ep000-cart.mp4", "cartpole-v1-it000002-ev0002-ep001-cart.mp4",
    ]
    assert [m["training_iteration"] for m in manifest] == [1, 1, 2, 2] == [r["training_iteration"] for r in results
                                                                          for _ in (0, 1)]
    for record in manifest:
        assert "completion" not in record and "agents_arrived" not in record and record["agent_returns"] is None
        assert record["episode_return"] == record["episode_length"]  # CartPole: +1 per step
        frames = frames_of(tmp_path / "videos" / record["file"])
        assert len(frames) == record["frames"] and frames[0].shape == (400, 600, 3)  # gymnasium's own 600x400


def test_eval_runners_with_two_envs_record_every_episode_of_each(ray_local, tmp_path):
    from ray.tune.registry import register_env

    from support.user_envs import make_blocks

    register_env("blocks", make_blocks)
    config = evaluated(
        get_trainable_cls("PPO").get_default_config().environment("blocks")
        .env_runners(num_env_runners=0).rl_module(model_config={"fcnet_hiddens": [8]})
        .training(train_batch_size_per_learner=100, minibatch_size=50, num_epochs=1),
        episodes=6, envs_per_runner=2,
    )
    train(add_recording(config, options(tmp_path, "twoenvs")), iterations=1)
    manifest = read_manifest(tmp_path / "videos")
    assert len(manifest) >= 6  # RLlib stops once 6 are done; both envs may finish on the last step
    assert {m["runner"]["env"] for m in manifest} == {0, 1}
    names = [m["file"] for m in manifest]
    assert names == [f"blocks-it000001-ev0001-ep{i:03d}-twoenvs.mp4" for i in range(len(manifest))]
    for record in manifest:
        assert len(frames_of(tmp_path / "videos" / record["file"])) == record["frames"] == record["episode_length"] + 1


def _flatland_algorithm(name: str, *overrides: str):
    cfg = compose_config(*TINY, f"algorithm={name}", *overrides)
    return evaluated(flatland_config(cfg).callbacks(LearnerVersions), episodes=1)


def test_dqn_on_flatland_tags_each_video_with_the_iteration_just_trained(ray_local, tmp_path):
    config = _flatland_algorithm("dqn", "algorithm.train_batch_size=100", "algorithm.learning_starts=50")
    results = train(add_recording(config, options(tmp_path, "dqn")), iterations=3)
    manifest = read_manifest(tmp_path / "videos")
    # DQN stamps no weights version on its actions: the eval runner's own version is used.
    assert [(m["training_iteration"], m["weights_seq_no"]) for m in manifest] == [
        (r["training_iteration"], LearnerVersions.versions[r["training_iteration"]]) for r in results
    ]
    assert [m["env_steps"] for m in manifest] == [r["env_runners"]["num_env_steps_sampled_lifetime"] for r in results]


def test_appo_on_flatland_tags_the_iteration_that_produced_the_weights(ray_local, tmp_path):
    config = _flatland_algorithm("appo", "algorithm.train_batch_size=100").env_runners(num_env_runners=1)
    # APPO learns asynchronously: on a slow machine its learner may not have updated by the
    # third round yet, so train on (at most 8 rounds) until a round saw updated weights.
    videos = tmp_path / "videos"
    results = train(add_recording(config, options(tmp_path, "appo")), iterations=3, at_most=8,
                    until=lambda: read_manifest(videos)[-1]["weights_seq_no"] > 0)
    manifest = read_manifest(videos)
    assert [m["evaluation_round"] for m in manifest] == list(range(1, len(results) + 1))
    for record, result in zip(manifest, results):
        evaluating = result["training_iteration"]
        assert record["training_iteration"] == expected_tag(record["weights_seq_no"], LearnerVersions.versions,
                                                             evaluating)
        assert record["training_iteration"] <= evaluating  # never newer than the call that evaluated
    assert manifest[-1]["weights_seq_no"] > 0  # the learner did update


def test_sac_on_a_continuous_gymnasium_env(ray_local, tmp_path):
    config = evaluated(
        get_trainable_cls("SAC").get_default_config().environment("Pendulum-v1", env_config={"max_episode_steps": 30})
        .env_runners(num_env_runners=0).rl_module(model_config={"fcnet_hiddens": [16]})
        .training(train_batch_size_per_learner=32, num_steps_sampled_before_learning_starts=50)
        .reporting(min_sample_timesteps_per_iteration=60).callbacks(LearnerVersions),
        episodes=1,
    )
    results = train(add_recording(config, options(tmp_path, "sac")), iterations=2)
    manifest = read_manifest(tmp_path / "videos")
    assert [m["file"] for m in manifest] == ["pendulum-v1-it000001-ev0001-ep000-sac.mp4",
                                             "pendulum-v1-it000002-ev0002-ep000-sac.mp4"]
    assert [(m["training_iteration"], m["weights_seq_no"]) for m in manifest] == [
        (r["training_iteration"], LearnerVersions.versions[r["training_iteration"]]) for r in results
    ]
    for record in manifest:
        assert record["episode_length"] == 30 and record["frames"] == 31
        assert frames_of(tmp_path / "videos" / record["file"])[0].shape == (500, 500, 3)
