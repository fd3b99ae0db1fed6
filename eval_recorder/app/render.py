"""render=PATH: the stored episodes of a video folder drawn into videos (``eval_recorder.render_later``).

The command's own Hydra folder holds only its ``.hydra`` record and ``run_eval.log``: no run
id, no wandb run, no Ray. The video folder's episodes are rendered with the command's
``recording.fps``, ``max_side``, ``overlay`` and ``frame_every``; records of any env but
Flatland's are replayed in the env of the run that made the folder (its ``.hydra/config.yaml``
beside the video folder), or in the env the command names (``env.id=...``, ``env.factory=...``).
A refusal (a path that is no record, an episode that has its video, a folder in use, a record
that does not replay) is one sentence and exit code 2, nothing written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eval_recorder.app import console
from eval_recorder.errors import FolderRefused, ReplayDiverged, UserError

__all__ = ["render_stored"]

logger = logging.getLogger(__name__)


def render_stored(cfg, path: str, *, env_overridden: bool) -> int:
    """Render the stored episodes at ``path``; the exit code (0, or 2 after a refusal)."""
    from eval_recorder.render_later import find_episodes, render_records

    try:
        if cfg.checkpoint is not None:
            raise UserError(f"render={path} and checkpoint={cfg.checkpoint} were both given; render stored episodes "
                            "or evaluate a checkpoint, one command each.")
        recording = cfg.recording
        folder, episodes = find_episodes(path)
        if not episodes:
            console.say(f"nothing to render: every episode in {console.shown(folder)} that has a replay record has its video")
            return 0
        env = _env_of(cfg, folder, env_overridden=env_overridden) \
            if any(episode.kind == "episode" for episode in episodes) else None
        stored = render_records(path, fps=recording.fps, max_side=recording.max_side, overlay=recording.overlay,
                                frame_every=recording.frame_every, env=env)
    except (UserError, FolderRefused, ReplayDiverged) as refused:
        console.error(str(refused))
        return 2
    except OmegaConfBaseException as error:
        console.error(f"{error}".splitlines()[0])
        return 2
    for video in stored:
        console.say(f"rendered {console.shown(video.path)} (iteration {video.metadata.get('training_iteration')}, "
                    f"{video.metadata['frames']} frames)")
    console.say(f"videos rendered {len(stored)} | gallery {console.shown(Path(folder) / 'index.html')}")
    return 0


def _env_of(cfg, folder: Path, *, env_overridden: bool):
    """A function making the env the folder's episodes were played in: the command's env
    if it names one, else that of the run whose folder holds the video folder."""
    from ray.rllib.env.env_context import EnvContext

    from eval_recorder.app.envs import env_choice, run_setup
    from eval_recorder.eval_env import make_user_env

    env_cfg = cfg
    if not env_overridden:
        saved = _run_config(Path(folder))
        if saved is None:
            raise UserError(f"the episodes in {folder} are replayed in their env, and the config of the run that made "
                            f"the folder is not found (no .hydra/config.yaml beside the folder or in the run folder "
                            f"its owner record names); name the env on the command line (e.g. env.id=CartPole-v1).")
        env_cfg = OmegaConf.load(saved)
    run_setup(env_cfg.env.get("setup"))
    choice = env_choice(env_cfg, seed=int(env_cfg.training.seed))

    def make():
        return make_user_env(choice.specifier, EnvContext(dict(choice.env_config), worker_index=0))

    return make


def _run_config(folder: Path) -> Path | None:
    """The Hydra config of the run that made video folder ``folder``: beside it (the default
    ``<run folder>/videos``), else in the run folder its owner record names."""
    from eval_recorder.folder_guard import folder_owner

    candidates = [folder.parent]
    run_folder = folder_owner(folder).get("wandb_dir")
    if isinstance(run_folder, str):
        candidates.append(Path(run_folder))
    for candidate in candidates:
        saved = candidate / ".hydra" / "config.yaml"
        if saved.is_file():
            return saved
    return None
