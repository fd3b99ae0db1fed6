"""The index of every run under the outputs folder: ``outputs/index.html`` (``INDEX``), one
row per run folder (a run's, a standalone evaluation's, a sweep job's), opened straight
from disk like each run's gallery.

A row says the run id, when the run started, its algorithm and env, the iterations it
trained, its videos, the completion (or return) of its latest evaluation round, whether it
is running, and shows the poster of its latest video, linking to its gallery. Everything a
row says is read from the run's own folder (``.hydra/``, the video folder's owner record,
manifest and training record), so the index holds nothing the runs do not: it is a view,
rebuilt whole each time, never edited.

Who writes it: every run of ``run_eval.py`` under ``outputs/`` rebuilds it when it has
claimed its video folder, after each training iteration and at its end
(``update_runs_index``); ``python -m eval_recorder.app.runs_index [FOLDER]`` rebuilds it by
hand. A rebuild holds an exclusive lock (``flock`` on ``LOCK``) from the scan to the
atomic replace, so concurrent runs (and the jobs of a sweep) never lose each other's
rows: whichever rebuilds last has seen every folder that existed when it took the lock.
A run writes no file of another run, and its index faults never stop it.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import html
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from eval_recorder.app.resume import RUNS_ROOT, run_folders as _folders
from eval_recorder.atomic_files import open_regular, replace_file
from eval_recorder.errors import FolderRefused, UserError
from eval_recorder.folder_guard import folder_owner, live_holder
from eval_recorder.gallery import GALLERY
from eval_recorder.poster import poster_name
from eval_recorder.training_record import read_training
from eval_recorder.video_index import read_manifest

__all__ = ["INDEX", "LOCK", "RunRow", "main", "render_runs_index", "run_folders", "run_row", "runs_root",
           "update_runs_index", "write_runs_index"]

INDEX = "index.html"
LOCK = ".runs_index.lock"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRow:
    """What the index says about one run folder (``folder`` relative to the outputs folder)."""

    folder: str
    run_id: str | None
    started: str | None  # ISO time, UTC
    kind: str  # "training" or "evaluation" (of saved checkpoints)
    algorithm: str | None  # a training run's (an evaluation plays its checkpoints' own)
    env: str | None  # the config's env name; an evaluation's: its videos' env label
    checkpoint: str | None  # an evaluation's newest checkpoint (relative to the outputs folder if in it)
    iterations: int | None  # trained so far (training) or the newest evaluated (evaluation)
    target_iterations: int | None
    videos: int
    last_outcome: str | None  # "completion 0.50" or "return -12.3" of the latest round
    poster: str | None  # relative to the outputs folder
    gallery: str | None  # relative to the outputs folder
    running: bool


def runs_root(run_folder: str | os.PathLike, *, cwd: str | os.PathLike | None = None) -> Path | None:
    """The outputs folder whose index lists ``run_folder``: ``outputs/`` of the working
    directory if the run folder is inside it, else None (a run elsewhere writes no index:
    nothing outside what the user gave us is written)."""
    root = (Path(cwd) if cwd is not None else Path.cwd()).absolute() / RUNS_ROOT
    folder = Path(run_folder).absolute()
    return root if folder.is_relative_to(root) and folder != root else None


def run_folders(root: str | os.PathLike) -> list[Path]:
    """The run folders the index lists: those under ``root`` at a run's or a sweep job's
    depth (``app/resume.run_folders``) that hold Hydra's record of the run, ``.hydra/``."""
    return [folder for folder in _folders(root) if (folder / ".hydra").is_dir() and not (folder / ".hydra").is_symlink()]


def _config(folder: Path) -> dict:
    """The run's config as Hydra saved it (interpolations not resolved), or {}."""
    import yaml

    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _section(config: dict, key: str) -> dict:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _video_dir(folder: Path, config: dict) -> Path:
    """The run's video folder: its ``recording.video_dir`` (the default names the run folder)."""
    given = _section(config, "recording").get("video_dir")
    if not isinstance(given, str) or not given or given.startswith("${hydra:runtime.output_dir}"):
        rest = given[len("${hydra:runtime.output_dir}"):].lstrip("/") if isinstance(given, str) and given else ""
        return folder / (rest or "videos")
    if "${" in given:  # another interpolation: the default place is the best guess
        return folder / "videos"
    path = Path(given).expanduser()
    if not path.is_absolute():  # relative to where the run started (Hydra keeps the working directory)
        path = _started_in(folder) / path
    return path


def _started_in(folder: Path) -> Path:
    import yaml

    try:
        hydra = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())
        return Path(hydra["hydra"]["runtime"]["cwd"])
    except (OSError, yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError):
        return Path.cwd()


def _relative(path: Path, root: Path) -> str | None:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return None


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _latest_outcome(records: list[dict]) -> str | None:
    """Mean completion (else return) of the episodes of the newest evaluation round."""
    rounds = [r for r in records if _int(r.get("training_iteration")) is not None]
    if not rounds:
        return None
    newest = max((_int(r["training_iteration"]), _int(r.get("evaluation_round")) or 0) for r in rounds)
    latest = [r for r in rounds if (_int(r["training_iteration"]), _int(r.get("evaluation_round")) or 0) == newest]
    completions = [r.get("completion") for r in latest]
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in completions):
        return f"completion {sum(completions) / len(completions):.2f}"
    returns = [r.get("episode_return") for r in latest]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in returns):
        return f"return {sum(returns) / len(returns):.2f}"
    return None


def run_row(folder: str | os.PathLike, root: str | os.PathLike) -> RunRow:
    """The row of run folder ``folder`` (under outputs folder ``root``), read from its files."""
    folder, root = Path(folder), Path(root)
    config = _config(folder)
    videos_dir = _video_dir(folder, config)
    try:
        owner = folder_owner(videos_dir)
    except FolderRefused:  # a damaged owner record: the run is listed, without what it would say
        owner = {}
    run_id = owner.get("run_id") or _section(config, "wandb").get("run_id")
    # Every episode's line (with recording.select, some have a replay record but no video).
    episodes = [r for r in read_manifest(videos_dir) if isinstance(r.get("file"), str)
                or isinstance(r.get("record"), str)] if owner else []
    if run_id:
        episodes = [r for r in episodes if r.get("run_id", run_id) == run_id]
    records = [r for r in episodes if isinstance(r.get("file"), str)]  # the videos
    standalone = config.get("checkpoint") is not None
    trained = [_int(r.get("training_iteration")) for r in read_training(videos_dir) if r.get("run_id") == run_id]
    evaluated = [_int(r.get("training_iteration")) for r in episodes]
    # A training run's videos show weights it trained, so they count even without their train() line.
    iterations = [i for i in (evaluated if standalone else trained + evaluated) if i is not None]
    poster = None
    for record in reversed(records):
        name = record.get("poster") or poster_name(record["file"])
        if isinstance(name, str) and "/" not in name and (videos_dir / name).is_file():
            poster = _relative(videos_dir / name, root)
            break
    gallery = videos_dir / GALLERY
    checkpoint = next((r["checkpoint"] for r in reversed(episodes) if isinstance(r.get("checkpoint"), str)), None)
    if checkpoint is not None and Path(checkpoint).is_relative_to(root.absolute()):
        checkpoint = _relative(Path(checkpoint), root.absolute())
    env = next((r["env"] for r in reversed(episodes) if isinstance(r.get("env"), str)), None) if standalone \
        else _section(config, "env").get("name")
    running = bool(owner) and live_holder(videos_dir) is not None
    return RunRow(
        folder=_relative(folder, root) or str(folder),
        run_id=run_id if isinstance(run_id, str) else None,
        started=owner.get("started") if isinstance(owner.get("started"), str) else _folder_time(folder),
        kind="evaluation" if standalone else "training",
        algorithm=None if standalone else _section(config, "algorithm").get("name"),
        env=env,
        checkpoint=checkpoint if standalone else None,
        iterations=max(iterations) if iterations else None,
        target_iterations=None if standalone else _int(_section(config, "training").get("iterations")),
        videos=len({r["file"] for r in records}),
        last_outcome=_latest_outcome(episodes),
        poster=poster,
        gallery=_relative(gallery, root) if gallery.is_file() else None,
        running=running,
    )


def _folder_time(folder: Path) -> str | None:
    try:
        moment = datetime.datetime.fromtimestamp(os.stat(folder / ".hydra").st_mtime, datetime.timezone.utc)
    except OSError:
        return None
    return moment.isoformat(timespec="seconds")


_STYLE = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: middle; white-space: nowrap; }
th { background: #f0f0f0; }
td.still img { display: block; width: 120px; height: auto; background: #000; }
td.number { text-align: right; }
.running { color: #238a3b; font-weight: 600; }
.muted { color: #888; }
"""


def _text(value) -> str:
    return html.escape(str(value)) if value is not None else '<span class="muted">–</span>'


def _href(relative: str) -> str:
    return html.escape(quote(relative), quote=True)


def _shown_time(iso: str | None) -> str | None:
    if not iso:
        return None
    try:
        moment = datetime.datetime.fromisoformat(iso).astimezone(datetime.timezone.utc)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def render_runs_index(rows: list[RunRow]) -> str:
    """The page listing ``rows``, newest start first."""
    ordered = sorted(rows, key=lambda row: (row.started or "", row.folder), reverse=True)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>eval_recorder runs</title>", f"<style>\n{_STYLE}</style>", "</head>", "<body>",
        "<h1>eval_recorder runs</h1>",
        f"<p>{len(ordered)} run{'s' if len(ordered) != 1 else ''} in this folder; "
        "rebuild this page with <code>python -m eval_recorder.app.runs_index</code>.</p>",
    ]
    if ordered:
        parts.append("<table>")
        parts.append("<thead><tr><th>still</th><th>run</th><th>started</th><th>algorithm</th><th>env</th>"
                     "<th>iterations</th><th>videos</th><th>last evaluation</th><th>folder</th></tr></thead>")
        parts.append("<tbody>")
        parts.extend(_row(row) for row in ordered)
        parts.append("</tbody>")
        parts.append("</table>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _row(row: RunRow) -> str:
    still = (f'<img src="{_href(row.poster)}" alt="last frame of the latest video of run '
             f'{html.escape(row.run_id or "", quote=True)}" '
             f'loading="lazy">' if row.poster else '<span class="muted">no video</span>')
    if row.gallery:
        still = f'<a href="{_href(row.gallery)}">{still}</a>'
    run = _text(row.run_id)
    if row.gallery:
        run = f'<a class="gallery" href="{_href(row.gallery)}">{run}</a>'
    if row.running:
        run += ' <span class="running">running</span>'
    if row.kind == "evaluation":
        iterations = f"evaluated {_text(row.iterations)}"
    elif row.target_iterations is not None:
        iterations = f"{_text(row.iterations if row.iterations is not None else 0)} of {row.target_iterations}"
    else:
        iterations = _text(row.iterations)
    algorithm = _text(row.algorithm) if row.kind == "training" else f"evaluates <code>{_text(row.checkpoint)}</code>"
    cells = [
        f'<td class="still">{still}</td>', f'<td class="run">{run}</td>',
        f"<td>{_text(_shown_time(row.started))}</td>", f"<td>{algorithm}</td>", f"<td>{_text(row.env)}</td>",
        f'<td class="number">{iterations}</td>', f'<td class="number">{row.videos}</td>',
        f"<td>{_text(row.last_outcome)}</td>", f"<td><code>{_text(row.folder)}</code></td>",
    ]
    return f'<tr id="{html.escape(row.folder, quote=True)}">' + "".join(cells) + "</tr>"


def _open_lock(root: Path) -> int:
    """The index lock of ``root``, opened without following a symlink; a lock file that is
    a symlink or not a regular file is refused."""
    path = root / LOCK
    try:
        return open_regular(path, os.O_RDWR | os.O_CREAT)
    except OSError as error:
        raise FolderRefused(f"cannot open the runs index lock {path} ({error.strerror}); remove it if it is not "
                            f"a regular file, and run again.") from None


def write_runs_index(root: str | os.PathLike) -> tuple[Path, int]:
    """Rebuild ``root``'s index of runs (under its lock, replaced atomically): its path
    and the number of runs it lists."""
    root = Path(root)
    fd = _open_lock(root)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rows = [run_row(folder, root) for folder in run_folders(root)]
        path = root / INDEX
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise FolderRefused(f"{path} is not a regular file; remove it and run again.")
        return replace_file(root, render_runs_index(rows).encode(), path), len(rows)
    finally:
        os.close(fd)  # releases the lock


def update_runs_index(run_folder: str | os.PathLike) -> Path | None:
    """A run's own update of the index that lists it (if its folder is under ``outputs/``
    of the working directory): the index's path, or None. Never raises: the index is a
    view, and its faults (said once in the log) never stop a run."""
    root = runs_root(run_folder)
    if root is None:
        return None
    try:
        return write_runs_index(root)[0]
    except Exception as error:  # noqa: BLE001 - a view's fault must not stop training
        _log.warning("could not rebuild the runs index in %s: %s", root, error)
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m eval_recorder.app.runs_index [FOLDER]``: rebuild FOLDER's (default
    ``outputs``) index of runs; exit 0, or 2 with one sentence on stderr."""
    parser = argparse.ArgumentParser(prog="python -m eval_recorder.app.runs_index",
                                     description="Rebuild the index.html that lists every run under FOLDER.")
    parser.add_argument("folder", nargs="?", default=RUNS_ROOT,
                        help=f"the folder the runs are in (default: {RUNS_ROOT}, where run_eval.py puts them)")
    folder = Path(parser.parse_args(argv).folder)
    try:
        if not folder.is_dir() or folder.is_symlink():
            raise UserError(f"{folder} is not a folder: give the folder your runs are in "
                            f"(default {RUNS_ROOT}, in the folder you ran run_eval.py from).")
        if not run_folders(folder):
            raise UserError(f"{folder} holds no run folder (none with a .hydra/ folder at <date>/<time>/ or "
                            f"<date>/<time>-multirun/<job>/): give the folder your runs are in.")
        path, count = write_runs_index(folder)
    except (UserError, FolderRefused) as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    print(f"runs index: {path} ({count} run{'s' if count != 1 else ''}; open it in a browser, no server needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
