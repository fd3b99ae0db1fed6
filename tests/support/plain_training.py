"""A user's own training script with plain RLlib (no eval_recorder, no evaluation): trains
one iteration and saves a checkpoint. Run as ``python plain_training.py OUT ENV``, with
tests/ on PYTHONPATH.

ENV: ``flatland`` — flatland-rl's ray_env_generator registered by name as ``user_flatland``,
two policies (agent "0" plays p0, agent "1" plays p1); ``blocks`` — the gymnasium Blocks env.
"""

from __future__ import annotations

import sys

import ray
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import register_env

from support.user_envs import FLATLAND_ENV, make_blocks, register


def per_agent_policy(agent_id, *args, **kwargs):
    return f"p{agent_id}"


def main(out: str, env: str) -> None:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    config = PPOConfig().env_runners(num_env_runners=0).training(
        train_batch_size_per_learner=100, minibatch_size=50, num_epochs=1)
    if env == "flatland":
        register()
        config = config.environment(FLATLAND_ENV, env_config={"n_agents": 2, "seed": 0}).multi_agent(
            policies={"p0", "p1"}, policy_mapping_fn=per_agent_policy
        ).rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={
            "p0": RLModuleSpec(model_config={"fcnet_hiddens": [8]}),
            "p1": RLModuleSpec(model_config={"fcnet_hiddens": [8]}),
        }))
    else:
        register_env("blocks", make_blocks)
        config = config.environment("blocks").rl_module(model_config={"fcnet_hiddens": [8]})
    algo = config.build_algo()
    algo.train()
    algo.save_to_path(out)
    algo.stop()
    ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
