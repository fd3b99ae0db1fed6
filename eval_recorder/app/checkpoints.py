"""Reading saved RLlib checkpoints, before anything is built or claimed.

A checkpoint folder (or a run folder holding several, in order of training iteration) is
read from its own files into a CheckpointInfo: algorithm class, stored config, training
iteration, env steps and each policy's spaces. Every file is read up front, so a truncated
or corrupt checkpoint (or one of RLlib's old API stack) is refused here rather than when
RLlib restores it. Also names the main job's checkpoint folders (one per saved iteration)
and finds the newest intact one, for resume.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_recorder.errors import UserError

__all__ = [
    "CheckpointInfo",
    "checkpoint_path",
    "find_checkpoints",
    "inspect_checkpoint",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)

MARKER = "rllib_checkpoint.json"
_ENV_STEPS_KEY = "env_runners--num_env_steps_sampled_lifetime"
_MODULES = Path("learner_group") / "learner" / "rl_module"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    algorithm_class: type
    config: dict[str, Any]
    training_iteration: int
    env_steps: int
    modules: dict[str, tuple[Any, Any]]  # module (policy) id -> (observation space, action space)


def _incomplete(checkpoint: Path, file: Path) -> UserError:
    return UserError(
        f"checkpoint {checkpoint} is incomplete: {file.relative_to(checkpoint)} is missing; "
        f"point checkpoint= at a complete RLlib checkpoint."
    )


def _corrupt(checkpoint: Path, file: Path) -> UserError:
    return UserError(
        f"checkpoint {checkpoint} is corrupt: {file.relative_to(checkpoint)} cannot be read; "
        f"point checkpoint= at an intact RLlib checkpoint."
    )


def _load(path: Path, checkpoint: Path):
    """The unpickled content of ``path`` (a file of ``checkpoint``), or UserError."""
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except FileNotFoundError:
        raise _incomplete(checkpoint, path) from None
    except Exception:
        raise _corrupt(checkpoint, path) from None


def _check_every_file(path: Path) -> None:
    """Read every pickle and JSON file of the checkpoint: a truncated or corrupt module,
    learner or optimizer state is refused here, before anything is claimed."""
    for file in sorted(path.rglob("*")):
        if file.suffix == ".pkl":
            _load(file, path)
        elif file.suffix == ".json":
            try:
                json.loads(file.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                raise _corrupt(path, file) from None


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read and check one RLlib Algorithm checkpoint folder."""
    path = Path(path).expanduser().resolve()
    if not (path / MARKER).is_file():
        raise UserError(f"{path} is not an RLlib checkpoint (no {MARKER}); point checkpoint= at one.")
    try:
        json.loads((path / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(
            f"checkpoint {path} is corrupt: {MARKER} is not valid JSON; point checkpoint= at an intact RLlib checkpoint."
        ) from None
    class_and_args = _load(path / "class_and_ctor_args.pkl", path)
    state = _load(path / "algorithm_state.pkl", path)
    try:
        algorithm_class = class_and_args["class"]
        config = class_and_args["ctor_args_and_kwargs"][0][0]
        iteration = int(state["training_iteration"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError(
            f"checkpoint {path} is corrupt: its algorithm state lacks the config or the training iteration; "
            f"point checkpoint= at an intact RLlib checkpoint."
        ) from None
    from ray.rllib.algorithms.algorithm import Algorithm

    if not (isinstance(algorithm_class, type) and issubclass(algorithm_class, Algorithm)):
        name = getattr(algorithm_class, "__name__", algorithm_class)
        raise UserError(f"checkpoint {path} was written by {name}, not an RLlib Algorithm; point checkpoint= at one.")
    if not (config.get("enable_rl_module_and_learner") and config.get("enable_env_runner_and_connector_v2")):
        raise UserError(
            f"checkpoint {path} was written by {algorithm_class.__name__} on RLlib's old API stack; eval_recorder "
            f"evaluates checkpoints of the new API stack (RLModules and EnvRunners)."
        )
    module_dirs = sorted(folder for folder in (path / _MODULES).glob("*") if folder.is_dir())
    if not module_dirs:
        raise _incomplete(path, path / _MODULES / "<module id>" / "module_state.pkl")
    modules = {}
    for module_dir in module_dirs:
        module_args = _load(module_dir / "class_and_ctor_args.pkl", path)
        if not (module_dir / "module_state.pkl").is_file():
            raise _incomplete(path, module_dir / "module_state.pkl")
        try:
            kwargs = module_args["ctor_args_and_kwargs"][1]
            modules[module_dir.name] = (kwargs["observation_space"], kwargs["action_space"])
        except (KeyError, IndexError, TypeError):
            raise _corrupt(path, module_dir / "class_and_ctor_args.pkl") from None
    _check_every_file(path)
    stats = state.get("metrics_logger", {}).get("stats", {})
    env_steps = int(stats.get(_ENV_STEPS_KEY, {}).get("lifetime_sum", 0))
    return CheckpointInfo(
        path=path,
        algorithm_class=algorithm_class,
        config=config,
        training_iteration=iteration,
        env_steps=env_steps,
        modules=modules,
    )


def find_checkpoints(path: str | Path) -> list[CheckpointInfo]:
    """The checkpoint at ``path``, or every checkpoint below it, by training iteration."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass an RLlib checkpoint folder or a run folder holding checkpoints.")
    if (path / MARKER).exists():
        return [inspect_checkpoint(path)]
    found = sorted(
        marker.parent
        for marker in path.rglob(MARKER)
        # hidden folders are unfinished saves (see main_job._save); nested ones are components
        if not any(part.startswith(".") for part in marker.parent.relative_to(path).parts)
        and not _nested(marker.parent, path)
    )
    if not found:
        raise UserError(f"{path} is not an RLlib checkpoint and holds none (no {MARKER} in it or below); "
                        f"pass an RLlib checkpoint folder or a run folder holding checkpoints.")
    infos = [inspect_checkpoint(folder) for folder in found]
    return sorted(infos, key=lambda info: (info.training_iteration, str(info.path)))


def _nested(folder: Path, root: Path) -> bool:
    """True for component checkpoints inside an algorithm checkpoint (e.g. learner_group/)."""
    return any((parent / MARKER).exists() for parent in folder.parents if parent != root and root in parent.parents)


def checkpoint_path(checkpoints: Path, iteration: int) -> Path:
    """``<checkpoints>/it000012``: one folder per saved iteration."""
    return Path(checkpoints) / f"it{iteration:06d}"


def latest_checkpoint(checkpoints: Path) -> CheckpointInfo | None:
    """The intact checkpoint of the highest iteration in ``checkpoints`` (None if none).
    Unfinished ones (hidden ``.it*`` folders of a crashed save) are not considered."""
    candidates = sorted(Path(checkpoints).glob("it[0-9]*"), reverse=True) if Path(checkpoints).is_dir() else []
    for candidate in candidates:
        try:
            return inspect_checkpoint(candidate)
        except UserError as error:
            logger.warning("skipping checkpoint %s: %s", candidate, error)
    return None
