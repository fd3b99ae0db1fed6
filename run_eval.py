"""The one entry point: RLlib training with recorded periodic evaluation (PPO on Flatland by default).

    python run_eval.py                      # defaults: small env, PPO, 3 iterations, wandb offline
    python run_eval.py training.iterations=10 env=medium algorithm=appo
    python run_eval.py checkpoint=PATH      # evaluate and record a saved checkpoint (or a run folder of them)
    python run_eval.py render=PATH          # render stored episodes (a video folder, or one record in it) into videos
    python run_eval.py --help               # every option with its documentation

Options are documented in eval_recorder/app/config.py (the schema) and in README.md.
What the run prints, and where the output of Ray, RLlib and wandb goes: eval_recorder/app/console.py.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from eval_recorder.app.config import register_configs
from eval_recorder.app.options_doc import register_help_resolvers

register_configs()
register_help_resolvers()


# env.* options that say how to find or check an env, not which env to evaluate on
_NOT_ENV_CHOICE = ("env.setup", "env.build_timeout", "env.scenarios")


def _names_env(override: str) -> bool:
    """True if a command-line override chooses the env (``env=medium``, ``env.n_agents=3``,
    ``env.factory=...``) rather than saying how to find it (``env.setup=...``)."""
    key = override.split("=")[0].lstrip("+~")
    return key.split(".")[0] == "env" and key not in _NOT_ENV_CHOICE


class JobRefused(Exception):
    """A multirun job refused to start (its one-sentence reason is printed above)."""


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> None:
    from eval_recorder.app.console import LOG_NAME, Console, remove_refused_run_folder

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task)  # as typed: a ${...} in one stays as it is
    with Console(output_dir / LOG_NAME, verbose=cfg.verbose):
        if cfg.render is not None:
            from eval_recorder.app.render import render_stored

            code = render_stored(cfg, cfg.render, env_overridden=any(_names_env(override) for override in overrides))
        elif cfg.checkpoint is None:
            from eval_recorder.app.main_job import train_with_recording

            code = train_with_recording(cfg, output_dir, overrides=overrides)
        else:
            from eval_recorder.app.standalone import evaluate_checkpoints

            env_overridden = any(_names_env(override) for override in overrides)
            code = evaluate_checkpoints(cfg, output_dir, cfg.checkpoint, env_overridden=env_overridden,
                                        overrides=overrides)
    if code == 2 and hydra_cfg.mode == RunMode.MULTIRUN:
        # Let the sweep's other jobs run; Hydra reports this job's failure at the end.
        raise JobRefused(f"job {hydra_cfg.job.num} ({' '.join(overrides)}) was refused; see the error above")
    if code == 2:
        remove_refused_run_folder(output_dir)  # refused before it started: leave no empty run folder
    if code:
        sys.exit(code)


def _resume_in_its_own_folder() -> None:
    """A resume continues in the run's own folder (eval_recorder/app/resume.py): Hydra gets
    that folder, or the resume is refused before Hydra makes a folder."""
    from eval_recorder.app.resume import resume_argv
    from eval_recorder.errors import FolderRefused, UserError

    try:
        sys.argv[1:] = resume_argv(sys.argv[1:])
    except (UserError, FolderRefused) as refused:
        print(f"error: {refused}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _resume_in_its_own_folder()
    main()
