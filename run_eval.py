"""The one entry point: PPO training on Flatland with recorded periodic evaluation.

    python run_eval.py                      # defaults: small env, 3 iterations, wandb offline
    python run_eval.py training.iterations=10 env=medium
    python run_eval.py --help               # every option with its documentation

Options are documented in eval_recorder/config.py (the schema) and in README.md.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from eval_recorder.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> None:
    from eval_recorder.main_job import train_with_recording

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    code = train_with_recording(cfg, output_dir)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
