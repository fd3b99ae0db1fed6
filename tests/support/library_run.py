"""A user's own script on the library path, run as its own process (its own local Ray, so
that its eval runners get this process's environment, e.g. TMPDIR): PPO on the faulty env
(support.faulty_envs) with add_recording into VIDEO_DIR, one training iteration.

    python library_run.py VIDEO_DIR [FAULT]

Exit 0 after training; 2 if recording refused the run (RecordingError: its message is the
last line on stderr)."""

from __future__ import annotations

import sys


def main(video_dir: str, fault: str = "ok") -> int:
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    from eval_recorder import RecordingError, RecordingOptions, add_recording, recording_session
    from support.faulty_envs import make

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    register_env("faulty_env", make)
    config = (
        PPOConfig().environment("faulty_env", env_config={"fault": fault})
        .env_runners(num_env_runners=0)
        .training(train_batch_size_per_learner=100, minibatch_size=50, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [8]})
        .evaluation(evaluation_interval=1, evaluation_duration=1, evaluation_duration_unit="episodes",
                    evaluation_num_env_runners=1)
    )
    config = add_recording(config, RecordingOptions(video_dir=video_dir, run_id="library", wandb_mode="disabled"))
    try:
        with recording_session(config):
            algo = config.build_algo()
            algo.train()
            algo.stop()
    except RecordingError as error:
        print(str(error), file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
