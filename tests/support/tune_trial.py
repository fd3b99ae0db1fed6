"""A user's Ray Tune script with one recorded trial (PPO on the small Flatland env, each
trial's own session), run as a subprocess so that its trial process can be signalled:

    python tune_trial.py RESULTS ITERATIONS [FAIL_AT [EVAL_RUNNERS EPISODES]]

Prints ``trial errors: N`` when ``Tuner.fit()`` returns. FAIL_AT: a training iteration in
which the trial raises (a user callback failing), to see the exit code of a crashed trial.
EVAL_RUNNERS, EPISODES: remote eval runners (default 0: evaluation in the trial's process)
and episodes per round (default 2), e.g. to kill an eval runner in the middle of a round.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest

import ray  # noqa: E402
from ray.rllib.callbacks.callbacks import RLlibCallback  # noqa: E402

from conftest import TINY, compose_config, flatland_config  # noqa: E402
from eval_recorder.api import add_recording  # noqa: E402
from eval_recorder.options import RecordingOptions  # noqa: E402


class FailAt(RLlibCallback):
    """Raises in the training iteration given by the env var EVAL_RECORDER_TEST_FAIL_AT."""

    def on_train_result(self, *, algorithm, result, **kwargs):
        import os

        if result["training_iteration"] == int(os.environ.get("EVAL_RECORDER_TEST_FAIL_AT", "0")):
            raise RuntimeError("the user's callback failed")


def main(results: str, iterations: str, fail_at: str = "0", eval_runners: str = "0", episodes: str = "2") -> None:
    import os

    from ray import tune

    os.environ["EVAL_RECORDER_TEST_FAIL_AT"] = fail_at
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={
        "env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                     "EVAL_RECORDER_TEST_FAIL_AT": fail_at}})
    cfg = compose_config(*TINY, f"evaluation.num_env_runners={eval_runners}", f"evaluation.episodes={episodes}")
    config = flatland_config(cfg).callbacks(FailAt)
    config = add_recording(config, RecordingOptions(video_dir=None, wandb_mode="offline"))
    tuner = tune.Tuner("PPO", param_space=config, run_config=tune.RunConfig(
        name="exp", storage_path=results, stop={"training_iteration": int(iterations)}))
    grid = tuner.fit()
    print(f"trial errors: {grid.num_errors}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
