"""Resuming a run in its own folder: the command that continues a run, and finding the
run folder of a resume before Hydra makes a new one.

``continue_command`` is the line a stopped (or finished) main job prints: pasted, it
resumes the same run in the same Hydra run folder (``hydra.run.dir``). ``resume_argv``
runs in ``run_eval.py`` before Hydra: for ``recording.resume=true wandb.run_id=X`` it finds
run X's folder (given as ``hydra.run.dir``, found through ``recording.video_dir``'s owner
record, or looked up under ``outputs/``) and points Hydra at it, with the run's own
earlier options, so that the resumed run logs into its own folder and Hydra makes no new
one (``hydra.output_subdir=null``: the run's ``.hydra/`` record of how it started stays).
A resume that names nothing to resume is refused (``UserError``) before any folder is made.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

from eval_recorder.errors import UserError
from eval_recorder.folder_guard import OWNER_FILE, folder_owner, in_use_refusal
from eval_recorder.naming import run_id_override

__all__ = ["RUNS_ROOT", "continue_command", "find_run_folders", "resume_argv", "run_folders"]

RUNS_ROOT = Path("outputs")  # where Hydra's default run and sweep folders (conf/config.yaml) put runs
_RUN_FOLDER_PATTERNS = ("*/*", "*/*/*")  # outputs/<date>/<time>/ and a sweep's outputs/<date>/<time>-multirun/<job>/
VIDEOS = "videos"  # the default recording.video_dir inside a run folder
_TRUE = {"true", "yes", "on", "y", "1"}  # what OmegaConf reads as true
# The options a continue command sets itself; a run's earlier values of them are dropped.
_RESUME_KEYS = ("recording.resume", "wandb.run_id")


def _key(override: str) -> str:
    """``training.iterations`` of ``training.iterations=5`` (also of ``+key=..``, ``~key``)."""
    return override.split("=", 1)[0].lstrip("+~")


def _value(overrides: list[str], key: str) -> str | None:
    """The value the last override of ``key`` sets, as Hydra reads it (a quoted one, such as
    the run id ``wandb.run_id='72e47061'`` that continue commands print, without its quotes), or None."""
    found = None
    for override in overrides:
        if "=" in override and _key(override) == key:
            found = override.split("=", 1)[1]
    if found is not None and len(found) >= 2 and found[0] == found[-1] and found[0] in "'\"":
        found = found[1:-1]
    return found


def continue_command(run_folder: Path, run_id: str, overrides: list[str], *, more: dict | None = None) -> str:
    """The command that continues run ``run_id`` in ``run_folder``: this interpreter and
    script, the run's own options (``overrides``, Hydra's task overrides; ``more`` replaces
    or adds some), then the resume options; every word quoted for a POSIX shell."""
    from eval_recorder.app.console import shown

    more = dict(more or {})
    kept = [o for o in overrides if _key(o) not in (*_RESUME_KEYS, *more) and not _key(o).startswith("hydra.")]
    words = [
        _shown_program(sys.executable), shown(Path(sys.argv[0]).absolute()),
        *kept, *(f"{key}={value}" for key, value in more.items()),
        "recording.resume=true", run_id_override(run_id), f"hydra.run.dir={shown(Path(run_folder).absolute())}",
    ]
    return " ".join(shlex.quote(word) for word in words)


def _shown_program(path: str) -> str:
    """The interpreter's path as a user types it from here: relative inside the working
    directory (``.venv/bin/python``), else absolute; never a bare name (which the shell
    would look up on PATH)."""
    from eval_recorder.app.console import shown

    text = shown(Path(path).absolute())
    return text if "/" in text else f"./{text}"


def resume_argv(argv: list[str], *, root: Path = RUNS_ROOT) -> list[str]:
    """``argv`` (run_eval.py's arguments) as Hydra should get it.

    Unchanged unless it resumes (``recording.resume=true wandb.run_id=X``, no Hydra flag
    such as ``-m``). A resume gets ``hydra.run.dir`` of run X's folder (unless it gives
    one) and, for a folder that exists, ``hydra.output_subdir=null``, after the run's own
    earlier options (those it sets again win). Refused (UserError, or FolderRefused for a
    damaged owner record): a ``hydra.run.dir`` or ``recording.video_dir`` holding no run X
    or another run, a video folder a live run holds, no run X (or two) under ``root``.
    """
    if any(word.startswith("-") for word in argv):
        return list(argv)
    value = _value(argv, "recording.resume")
    run_id = _value(argv, "wandb.run_id")
    if value is None or value.lower() not in _TRUE or not run_id:
        return list(argv)  # not a resume (a resume without run id is refused by the job)
    run_dir, video_dir = _value(argv, "hydra.run.dir"), _value(argv, "recording.video_dir")
    if run_dir is not None and video_dir is not None:  # the run's videos, logged into the folder given
        folder = Path(run_dir).expanduser()
        videos = Path(video_dir).expanduser()
        _check_holds(videos, run_id, named="recording.video_dir", given=video_dir)
    elif run_dir is not None:
        folder = Path(run_dir).expanduser()
        if not folder.is_dir():
            raise UserError(f"hydra.run.dir={run_dir} is not a folder, so it holds no run {run_id} to resume; "
                            f"give the folder of run {run_id}, or drop recording.resume=true to start a new run.")
        videos = folder / VIDEOS
        _check_holds(videos, run_id, named="hydra.run.dir", given=run_dir)
    elif video_dir is not None:
        videos = Path(video_dir).expanduser()
        owner = _check_holds(videos, run_id, named="recording.video_dir", given=video_dir)
        folder = _run_folder_of(owner)
        if folder is None:  # a folder the library made: no run folder to go back to
            return list(argv)
    else:
        found = find_run_folders(run_id, root=root)
        if not found:
            raise UserError(
                f"found no run {run_id} under {root}/ (looked for {root}/<date>/<time>/{VIDEOS}/{OWNER_FILE} "
                f"naming it); give its run folder with hydra.run.dir=<folder>, or its video folder with "
                f"recording.video_dir=<folder>.")
        if len(found) > 1:
            raise UserError(f"run {run_id} has {len(found)} folders under {root}/ ({', '.join(map(str, found))}); "
                            f"give the one to continue with hydra.run.dir=<folder>.")
        (folder,) = found
        videos = folder / VIDEOS
    refusal = in_use_refusal(videos)
    if refusal is not None:
        raise refusal
    new = list(argv)
    if run_dir is None:
        new.append(f"hydra.run.dir={folder}")
    if folder.is_dir() and _value(argv, "hydra.output_subdir") is None:  # keep the .hydra/ of its start
        new.append("hydra.output_subdir=null")
    given = {_key(word) for word in argv}
    earlier = [o for o in _earlier_overrides(folder) if _key(o) not in given and _key(o) not in _RESUME_KEYS
               and not _key(o).startswith("hydra.")]
    return earlier + new


def _check_holds(videos: Path, run_id: str, *, named: str, given: str) -> dict:
    """The owner record of video folder ``videos``, which must be run ``run_id``'s."""
    owner = folder_owner(videos)
    if not owner:
        raise UserError(f"{named}={given} holds no run {run_id} to resume (no {OWNER_FILE} in {videos}); "
                        f"give the folder of run {run_id}, or drop recording.resume=true to start a new run.")
    if owner["run_id"] != run_id:
        raise UserError(f"{named}={given} holds run {owner['run_id']}, not run {run_id}; continue it with "
                        f"{run_id_override(owner['run_id'])}, or give the folder of run {run_id}.")
    return owner


def _run_folder_of(owner: dict) -> Path | None:
    """The Hydra run folder of the main job that owns a video folder: the one holding its
    ``checkpoints/`` (the owner record says where) and Hydra's ``.hydra/``; None for a
    folder the library or a standalone run made."""
    if not owner.get("checkpoint_dir"):
        return None
    folder = Path(owner["checkpoint_dir"]).parent
    return folder if (folder / ".hydra").is_dir() else None


def run_folders(root: str | os.PathLike = RUNS_ROOT) -> list[Path]:
    """The folders (not symlinks) under ``root`` at a run's depth (``<date>/<time>/``) or a
    sweep job's (``<date>/<time>-multirun/<job>/``), where Hydra's default folders put runs."""
    return sorted({folder for pattern in _RUN_FOLDER_PATTERNS for folder in Path(root).glob(pattern)
                   if _is_dir(folder)})


def find_run_folders(run_id: str, *, root: Path = RUNS_ROOT) -> list[Path]:
    """The run folders under ``root`` (``run_folders``) whose video folder is run ``run_id``'s."""
    found = []
    for folder in run_folders(root):
        owner_file = folder / VIDEOS / OWNER_FILE
        if owner_file.is_file() and not owner_file.is_symlink():
            owner = folder_owner(folder / VIDEOS)
            if owner and owner.get("run_id") == run_id:
                found.append(folder)
    return found


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _earlier_overrides(folder: Path) -> list[str]:
    """The options run folder ``folder`` was started with (Hydra's ``.hydra/overrides.yaml``)."""
    import yaml

    try:
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [o for o in overrides if isinstance(o, str)] if isinstance(overrides, list) else []
