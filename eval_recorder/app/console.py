"""What a run of ``run_eval.py`` shows on the terminal, and where everything else goes.

For the length of one job the Console puts our own lines on stdout, our warnings and errors
on stderr and at most one progress bar (only on a terminal, no ANSI codes otherwise), and
sends everything else this process prints (Ray's, RLlib's, wandb's, gymnasium's: logging,
warnings, C++ writes to descriptors 1 and 2, Ray workers' lines) to the run's log file,
unless ``verbose``. What they print as the process exits (wandb's and Ray's exit hooks run
after the job) goes there too. Also the closing lines of a run, and the Hydra callback that
lets a run refused before it starts leave no empty ``outputs/<date>/<time>/`` behind.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "LOG_NAME",
    "Console",
    "Progress",
    "RunFolderCleanup",
    "error",
    "incomplete_wandb_lines",
    "log_path",
    "progress",
    "remove_refused_run_folder",
    "say",
    "shown",
    "summary_lines",
    "wandb_sync_target",
    "warn",
]

LOG_NAME = "run_eval.log"  # Hydra's job log (hydra.job.name is the script's name), in the run folder
_OUR_LOGGER = "eval_recorder"  # our modules' loggers: their warnings and errors reach the console
_HYDRA_FILES = (Path(".hydra") / "config.yaml", Path(".hydra") / "hydra.yaml", Path(".hydra") / "overrides.yaml")

_active: "Console | None" = None
_exit_log: Path | None = None  # where the others' output goes as the process exits (the last job's log)
_exit_hook_registered = False


class _ConsoleHandler(logging.Handler):
    """Our own warnings and errors (``eval_recorder.*`` loggers) as ``warning: ...`` lines."""

    def __init__(self, console: "Console") -> None:
        super().__init__(level=logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.write_err(f"{record.levelname.lower()}: {record.getMessage()}")
        except Exception:
            self.handleError(record)


class Console:
    """The terminal of one job (a context manager; see the module docstring).

    While it is open, file descriptors 1 and 2 (and so ``sys.stdout`` / ``sys.stderr``)
    point at ``log_file`` (appended to); the console writes through copies of the
    terminal's descriptors taken at ``__enter__``. With ``verbose`` nothing is
    redirected: the others' output stays on the terminal."""

    def __init__(self, log_file: Path, *, verbose: bool = False) -> None:
        self.log_file = Path(log_file)
        self.verbose = verbose
        self.out: TextIO | None = None
        self.err: TextIO | None = None
        self.tty = False
        self._saved: tuple[int, int] | None = None
        self._bar = None
        self._lock = threading.RLock()
        self._handler: logging.Handler | None = None
        self._logger = logging.getLogger(_OUR_LOGGER)
        self._env_before: dict[str, str | None] = {}

    def __enter__(self) -> "Console":
        global _active
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.out = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        self.err = os.fdopen(os.dup(self._saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
        self.tty = self.out.isatty()
        if not self.verbose:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
        if not self.verbose or not self.tty:
            # Ray colours the prefixes of its workers' lines unless told not to.
            self._set_env("RAY_COLOR_PREFIX", "0")
        if self.verbose:  # every logging record on the terminal too, ours among them
            self._handler = logging.StreamHandler(self.err)
            self._handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            self._logger = logging.getLogger()
        else:  # only our own warnings and errors
            self._handler = _ConsoleHandler(self)
            self._logger = logging.getLogger(_OUR_LOGGER)
        self._logger.addHandler(self._handler)
        _active = self
        return self

    def __exit__(self, *exc_info) -> None:
        global _active
        _active = None
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        self._logger.removeHandler(self._handler)
        for name, value in self._env_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.stdout.flush()
        sys.stderr.flush()
        saved_out, saved_err = self._saved
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        self.out.close()
        self.err.close()
        if not self.verbose:
            _send_exit_output_to(self.log_file)


    def _set_env(self, name: str, value: str) -> None:
        self._env_before[name] = os.environ.get(name)
        os.environ[name] = value

    # ---- writing -------------------------------------------------------------------

    def write_out(self, line: str) -> None:
        self._write(self.out, line)

    def write_err(self, line: str) -> None:
        self._write(self.err, line)

    def _write(self, stream: TextIO, line: str) -> None:
        with self._lock:
            bar = self._bar
            if bar is not None:
                bar.clear()
            stream.write(line + "\n")
            stream.flush()
            if bar is not None:
                bar.refresh()

    def progress(self, *, total: int, initial: int = 0, desc: str = "", unit: str = "it") -> "Progress":
        """The job's progress bar (replacing any earlier one); drawn only on a terminal and
        erased when closed, so that what stays on screen is the same as in a pipe."""
        from tqdm import tqdm

        with self._lock:
            if self._bar is not None:
                self._bar.close()
            self._bar = None
            bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.out, leave=False,
                       dynamic_ncols=True, disable=not self.tty)
            if not bar.disable:
                self._bar = bar
        return Progress(self, bar)

    def _forget(self, bar) -> None:
        with self._lock:
            if self._bar is bar:
                self._bar = None
            bar.close()


def _send_exit_output_to(log_file: Path) -> None:
    """Once the job is over, only exit hooks print: wandb's and Ray's were registered while
    the job ran (wandb's service teardown, Ray's shutdown), and atexit runs hooks last-in
    first-out, so a hook registered now runs before them and points descriptors 1 and 2 at
    ``log_file`` for what they print (e.g. tracebacks of a wandb whose disk is full)."""
    global _exit_log, _exit_hook_registered
    _exit_log = Path(log_file)
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(_exit_output_to_log)
    else:  # keep it the last one registered, so that it runs first
        atexit.unregister(_exit_output_to_log)
        atexit.register(_exit_output_to_log)


def _exit_output_to_log() -> None:
    if _exit_log is None:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(_exit_log, os.O_WRONLY | os.O_APPEND)  # never created here: the job made it
    except (OSError, ValueError):
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class Progress:
    """A progress bar of the console (does nothing when stdout is not a terminal)."""

    def __init__(self, console: Console | None, bar=None) -> None:
        self._console = console
        self._bar = bar

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            with self._console._lock:
                self._bar.update(n)

    def describe(self, desc: str | None = None, postfix: str | None = None) -> None:
        if self._bar is not None:
            with self._console._lock:
                if desc is not None:
                    self._bar.set_description_str(desc, refresh=False)
                if postfix is not None:
                    self._bar.set_postfix_str(postfix, refresh=False)
                self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._console._forget(self._bar)
            self._bar = None


def say(line: str, *, err: bool = False) -> None:
    """One of our lines on stdout (``err``: on stderr)."""
    if _active is not None:
        (_active.write_err if err else _active.write_out)(line)
    else:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)


def warn(message: str) -> None:
    """A warning that needs the user's action, on stderr (``warning: ...``)."""
    if _active is not None:
        _active.write_err(f"warning: {message}")
    else:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """One sentence on stderr (``error: ...``)."""
    if _active is not None:
        _active.write_err(f"error: {message}")
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)


def shown(path) -> str:
    """``path`` relative to the working directory when it lies inside it (as a user types
    it: ``outputs/2026-11-23/21-37-54/videos``), else as it is."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def progress(*, total: int, initial: int = 0, desc: str = "", unit: str = "it") -> Progress:
    """The open console's progress bar (a silent one without a console)."""
    if _active is None:
        return Progress(None)
    return _active.progress(total=total, initial=initial, desc=desc, unit=unit)


def log_path() -> Path | None:
    """The log file of the open console, if it holds the others' output (not with verbose:
    then their output is on the terminal)."""
    if _active is None or _active.verbose or not _active.log_file.exists():
        return None
    return _active.log_file


# ---- the closing lines ----------------------------------------------------------------


def wandb_sync_target(run_dir: Path, run_id: str) -> list[Path]:
    """The paths one ``wandb sync`` command needs to upload the whole offline run
    ``run_id`` whose latest part is ``run_dir``: a resumed run writes a new
    ``offline-run-<time>-<id>`` folder per process into the same wandb folder, and
    ``wandb sync <wandb folder>`` uploads all of them, in order. If that folder also holds
    other runs, each part of this run is named instead."""
    wandb_folder = Path(run_dir).parent
    parts = sorted(path for path in wandb_folder.glob("offline-run-*") if path.is_dir() and not path.is_symlink())
    ours = [path for path in parts if _is_part_of(path.name, run_id)]
    if ours and len(ours) == len(parts):
        return [wandb_folder]
    return ours or [Path(run_dir)]


def _is_part_of(folder_name: str, run_id: str) -> bool:
    """``offline-run-<date>_<time>-<run id>``, with ``-<n>`` when wandb found a folder
    of the same second."""
    return re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?", folder_name) is not None


def summary_lines(session, *, checkpoint: Any = None, nothing_recorded: str | None = None,
                  show_manifest: bool = True) -> list[str]:
    """The closing lines of a run: videos written (or why none), and each file or folder
    that exists: manifest, gallery, checkpoint, wandb run (with its one upload command)
    and the log file."""
    from eval_recorder.video_index import MANIFEST

    lines = [f"videos written: {len(session.videos)} in {shown(session.video_dir)}"]
    if not session.videos:
        lines.append(f"nothing was recorded: {nothing_recorded or 'no evaluation episode reached the video folder'}")
    manifest = session.video_dir / MANIFEST
    if show_manifest and manifest.is_file():
        lines.append(f"manifest: {shown(manifest)}")
    if session.gallery_path.is_file():
        lines.append(f"gallery: {shown(session.gallery_path)} (open it in a browser, no server needed)")
    if checkpoint is not None and Path(checkpoint).exists():
        lines.append(f"checkpoint: {shown(checkpoint)}")
    sink = session.wandb
    run_dir = sink.run_dir if sink is not None else None
    if run_dir is not None and Path(run_dir).exists():
        targets = " ".join(shown(path) for path in wandb_sync_target(run_dir, session.options.run_id))
        if getattr(sink, "incomplete", False):
            lines.extend(incomplete_wandb_lines(sink, written=len(session.videos), video_dir=session.video_dir,
                                                sync_targets=targets if sink.mode == "offline" else None))
        else:
            lines.append(f"wandb run: {shown(run_dir)}")
            if sink.mode == "offline":
                lines.append(f"upload it with: wandb sync {targets}")
    for other in session.sinks[1:]:
        lines.extend(other.where())
    log = log_path()
    if log is not None:
        lines.append(f"log: {shown(log)} (Ray's, RLlib's and wandb's own output)")
    return lines


def incomplete_wandb_lines(sink, *, written: int, video_dir: Path, sync_targets: str | None) -> list[str]:
    """The summary of a wandb run that failed after it started (e.g. its disk filled up):
    called incomplete, what failed and when, what it can hold and what it lacks; the
    upload command only for a run that got something before the fault."""
    when = f"at iteration {sink.fault_step}" if sink.fault_step is not None else "as it started"
    lines = [f"wandb run: {shown(sink.run_dir)} is incomplete: {sink.fault} {when}; nothing after that was logged "
             f"to it"]
    sent = min(sink.videos_sent, written)
    if sent:
        lines.append(f"it has at most {sent} of the {written} videos written; the other {written - sent} are only "
                     f"in {shown(video_dir)}")
        if sync_targets:
            lines.append(f"upload what it has with: wandb sync {sync_targets}")
    else:
        lines.append(f"it has none of the {written} videos written; they are only in {shown(video_dir)}")
    return lines


# ---- a refused run leaves no folder behind --------------------------------------------

_NEW_FOLDERS: list[Path] = []  # hydra.run.dir and its parents that did not exist at start, deepest first

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra is a dependency of the app
    _HydraCallback = object


class RunFolderCleanup(_HydraCallback):
    """Hydra callback (conf/config.yaml): before Hydra makes ``hydra.run.dir``, note
    which of its folders do not exist yet; and give a run on the default folder one of
    its own (``own_default_folder``)."""

    def on_run_start(self, config, **kwargs) -> None:
        _NEW_FOLDERS.clear()
        try:
            folder = Path(str(config.hydra.run.dir)).absolute()
        except Exception:  # an interpolation that cannot be resolved yet: keep everything
            return
        new = []
        while not folder.exists() and folder != folder.parent:
            new.append(folder)
            folder = folder.parent
        if not any(str(o).lstrip("+~").startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra):
            new = own_default_folder(config, new)
        _NEW_FOLDERS.extend(new)


def own_default_folder(config, new: list[Path]) -> list[Path]:
    """Runs started in the same second get the same default folder
    (``outputs/<date>/<time>``), and would write into each other's ``.hydra/`` and log: the
    first takes it (``mkdir`` is atomic), the others ``<time>-2``, ``<time>-3``, ...; Hydra
    then runs in the one taken. Returns the folders (deepest first) this run created."""
    from omegaconf import read_write

    folder = Path(str(config.hydra.run.dir)).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 10_000):
        candidate = folder if number == 1 else folder.with_name(f"{folder.name}-{number}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        break
    else:
        return new
    with read_write(config.hydra.run):
        config.hydra.run.dir = str(candidate)
    return [candidate, *(path for path in new if path != folder)]


def remove_refused_run_folder(output_dir: Path) -> bool:
    """After a run was refused before it started: remove what Hydra and the console
    wrote into ``output_dir`` (its ``.hydra`` record and the log) and the folders this
    run created for it, if nothing else is in them. True if ``output_dir`` is gone."""
    output_dir = Path(output_dir).absolute()
    if output_dir not in _NEW_FOLDERS:
        return False  # the folder existed before this run: not ours to remove
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == output_dir:
            handler.close()
            root.removeHandler(handler)
    for name in (*_HYDRA_FILES, Path(LOG_NAME)):
        (output_dir / name).unlink(missing_ok=True)
    for folder in (output_dir / ".hydra", *_NEW_FOLDERS[_NEW_FOLDERS.index(output_dir):]):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): leave it and its parents
            break
    return not output_dir.exists()
