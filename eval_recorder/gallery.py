"""The offline gallery of a video folder: one ``index.html`` (``GALLERY``) next to the
videos, opened straight from disk. ``write_gallery`` replaces it atomically with the page
``render_gallery`` makes of the folder's manifest: the plots (``gallery_charts``), the same
situation played across iterations side by side, then every video, newest iteration first,
with its caption (why ``recording.select`` chose it, if it did), and under each iteration its
episodes kept without a video, with the command that renders one. Each video shows its poster (its last frame, ``poster``) until it plays, so
the page reads at a glance. A video found altered after it was stored (``video_index.find_altered``)
keeps its box, marked so. The page fetches nothing, and plays every video also without
JavaScript. Only regular files are shown: a symlink in the folder is never followed.
"""

from __future__ import annotations

import html
import logging
import os
import stat
from itertools import groupby
from pathlib import Path
from urllib.parse import quote

from eval_recorder.atomic_files import replace_file
from eval_recorder.gallery_charts import plots
from eval_recorder.gallery_records import (
    Situation, int_or_zero, is_int, kept_caption, kept_without_video, outcome, render_command, showable, situations,
    video_caption, video_count,
)
from eval_recorder.poster import poster_name
from eval_recorder.training_record import read_training, train_returns
from eval_recorder.video_index import read_manifest, read_marks

__all__ = ["GALLERY", "render_gallery", "write_gallery"]

GALLERY = "index.html"

_log = logging.getLogger(__name__)

_STYLE = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.5em 0 .5em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin: .8em 0 .4em; display: inline-block; }
nav a { margin-right: .6em; }
nav .choice { margin-right: 1.2em; white-space: nowrap; }
nav .choice a { margin-right: 0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.plot { width: 480px; max-width: 100%; height: auto; background: #fff; border: 1px solid #ddd; }
.plot text { font: 11px system-ui, sans-serif; fill: #444; }
.plot .title { font-size: 12px; font-weight: 600; fill: #222; }
.plot .grid { stroke: #eee; }
.plot .axis { stroke: #888; }
.plot .return { stroke: #1f66b4; fill: none; stroke-width: 1.5; }
.plot circle.return { fill: #1f66b4; }
.plot .completion { stroke: #238a3b; fill: none; stroke-width: 1.5; }
.plot circle.completion { fill: #238a3b; }
.plot .train { stroke: #d9711c; fill: none; stroke-width: 1.5; stroke-dasharray: 4 2; }
.plot circle.train { fill: #d9711c; stroke: none; }
.situation { display: none; }
.situation:target { display: block; }
.situation button, .situation .close { margin-left: .8em; }
.row { display: flex; gap: 1em; overflow-x: auto; padding-bottom: .5em; }
.row figure { flex: 0 0 300px; }
.videos { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1em; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: .5em; }
video { display: block; width: 100%; height: auto; background: #000; }
figcaption { margin-top: .4em; }
figcaption span, figcaption a { display: block; overflow-wrap: anywhere; }
.checkpoint, .file { color: #666; font-size: .9em; }
.altered { color: #b00020; font-weight: 600; }
.kept li { margin: .3em 0; }
.kept code { display: block; color: #444; font-size: .9em; overflow-wrap: anywhere; user-select: all; }
figure.altered { border-color: #b00020; }
"""

# Chromium gives a page at most 1000 media players and fails every video beyond that, so
# videos start with preload="none" (no player, nothing read; a click still plays one) and
# this script lets only the videos near the screen (one screen height above and below) load
# their metadata (a video's poster shows wherever it is: it needs no player). Far away (or hidden: a situation not chosen, a row scrolled sideways) and
# paused: it drops the source (kept in data-src), which frees the player; a video that plays
# on is released when it pauses or ends. "Play together" restarts the videos of a situation
# that are in view, together.
_SCRIPT = """\
(() => {
  const near = new Set();
  const release = (video) => {
    if (near.has(video) || !video.paused || video.preload === "none") return;
    video.dataset.src = video.getAttribute("src");
    video.preload = "none";
    video.removeAttribute("src");
    video.load();
  };
  const watch = new IntersectionObserver((changes) => {
    for (const { target: video, isIntersecting } of changes) {
      if (isIntersecting) {
        near.add(video);
        if (!video.hasAttribute("src")) video.src = video.dataset.src;
        video.preload = "metadata";
      } else {
        near.delete(video);
        release(video);
      }
    }
  }, { rootMargin: "100% 0px" });
  for (const video of document.querySelectorAll("video")) {
    watch.observe(video);
    video.addEventListener("pause", () => release(video));
  }
  addEventListener("hashchange", () => {
    for (const video of document.querySelectorAll(".situation:not(:target) video")) video.pause();
  });
  for (const button of document.querySelectorAll("button.play-together")) {
    button.hidden = false;
    button.addEventListener("click", () => {
      for (const video of button.closest(".situation").querySelectorAll("video")) {
        if (!near.has(video)) continue;
        if (video.currentTime > 0) video.currentTime = 0;
        video.play().catch(() => {});
      }
    });
  }
})();
"""


def render_gallery(records: list[dict], *, posters: frozenset[str] | set[str] = frozenset(),
                   training: list[tuple[int, float]] = (), altered: dict[str, str] | None = None,
                   kept: list[dict] = (), folder: str | None = None) -> str:
    """The gallery page showing ``records`` (manifest records; videos next to the page).

    Records without a plain file name or without the caption's fields (unless recovered
    after a crash) are left out. ``posters``: the poster files next to the page (a video
    whose ``poster_name`` is among them shows it); ``training``: (iteration, mean training
    return) points, drawn beside the evaluation return (``gallery_charts.plots``);
    ``altered``: {file name: how it differs} of the videos changed after they were stored,
    each marked in its box; ``kept``: manifest lines of episodes kept without a video, listed
    under their iteration with how they went and the command that renders each (its record
    in ``folder``, the video folder's absolute path).
    """
    altered = altered or {}
    shown = [record for record in records if showable(record)]
    waiting: dict[int, list[dict]] = {}
    for record in sorted((record for record in kept if kept_without_video(record)),
                         key=lambda r: (int_or_zero(r.get("evaluation_round")), r["episode_index"])):
        waiting.setdefault(record["training_iteration"], []).append(record)
    # Newest iteration first; within one, by round and episode (ties: manifest order).
    shown.sort(key=lambda record: (int_or_zero(record.get("evaluation_round")),
                                   int_or_zero(record.get("episode_index"))))
    shown.sort(key=lambda record: record["training_iteration"], reverse=True)
    groups = [(iteration, list(group)) for iteration, group in groupby(shown, key=lambda r: r["training_iteration"])]
    groups += [(iteration, []) for iteration in waiting if iteration not in dict(groups)]
    groups.sort(key=lambda group: group[0], reverse=True)
    run_ids = list(dict.fromkeys(str(record["run_id"]) for record in shown if record.get("run_id")))

    summary = f"{len(shown)} video{'s' if len(shown) != 1 else ''} of {len(groups)} training iteration"
    summary += f"{'s' if len(groups) != 1 else ''}, newest first"
    if waiting:
        count = sum(len(group) for group in waiting.values())
        summary += f" · {count} episode{'s' if count != 1 else ''} without a video"
    if run_ids:
        summary += f" · run {', '.join(run_ids)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Evaluation videos</title>",
        f"<style>\n{_STYLE}</style>",
        "</head>",
        "<body>",
        "<h1>Evaluation videos</h1>",
        f'<p class="summary">{_text(summary)}</p>',
    ]
    parts.extend(plots(shown, training=list(training)))
    parts.extend(_comparison([situation for situation in situations(shown) if len(situation.records) > 1], posters,
                             altered))
    if groups:
        links = " ".join(f'<a href="#iteration-{iteration}">{iteration}</a>' for iteration, _ in groups)
        parts.append(f'<nav class="iterations">Iterations: {links}</nav>')
    for iteration, group in groups:
        parts.append(f'<section id="iteration-{iteration}">')
        parts.append(f"<h2>Iteration {iteration}</h2>")
        parts.append('<div class="videos">')
        parts.extend(_figure(record, posters, altered.get(record["file"])) for record in group)
        parts.append("</div>")
        parts.extend(_kept(waiting.get(iteration, []), folder))
        parts.append("</section>")
    parts.append(f"<script>\n{_SCRIPT}</script>")
    parts.append("</body>")
    parts.append("</html>")
    return "\n".join(parts) + "\n"


def write_gallery(folder: Path) -> Path:
    """Replace ``folder``'s gallery with one of every video its manifest lists (and of every
    episode it keeps without a video, with the command that renders it); its path.

    Records whose mp4 is not in the folder (as a regular file) are left out; a video shows
    its poster if the poster is in the folder, and is marked if the manifest marks it altered
    (``video_index.read_marks``); the return plot has the training returns of the videos' runs
    from the folder's training record (``training_record``), if there is one. The page is
    written to a hidden temporary name in the folder, flushed to disk and renamed over the
    old one, so a browser (or a crash) never sees half a page.
    """
    folder = Path(folder)
    records = read_manifest(folder)
    present = [record for record in records if showable(record) and _regular(folder / record["file"])]
    if len(present) < len(records):
        _log.debug("gallery leaves out %d of %d manifest records (file missing or record unusable)",
                   len(records) - len(present), len(records))
    posters = {poster_name(record["file"]) for record in present if _regular(folder / poster_name(record["file"]))}
    training = train_returns(read_training(folder), run_ids={record.get("run_id") for record in present})
    altered = {name: str(mark.get("why") or "changed") for name, mark in read_marks(folder).items()
               if not mark.get("restored")}
    kept = [record for record in records if kept_without_video(record) and os.path.lexists(folder / record["record"])]
    data = render_gallery(present, posters=posters, training=training, altered=altered, kept=kept,
                          folder=os.path.abspath(folder)).encode()
    return replace_file(folder, data, folder / GALLERY)


def _regular(path: Path) -> bool:
    """Whether ``path`` is a regular file (a symlink is not followed)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _comparison(found: list[Situation], posters, altered: dict[str, str]) -> list[str]:
    """The situation chooser (links to anchors) and each situation's row of videos
    (situations played more than once: one video has nothing to be compared with).

    Evaluation uses fixed seeds (episode k of every round plays the same env), so a row,
    oldest iteration first, answers "did it get better on the same situation?". Choosing
    is a plain link to the situation's anchor, shown by CSS ``:target``: no JavaScript needed.
    """
    if not found:
        return []
    envs = {situation.env for situation in found}
    labels = [f"{s.env} · {s.label}" if len(envs) > 1 and s.env is not None else s.label for s in found]
    links = " ".join(
        f'<span class="choice"><a href="#situation-{number}">{_text(label)}</a> '
        f"({video_count(len(situation.records))})</span>"
        for number, (situation, label) in enumerate(zip(found, labels), start=1)
    )
    parts = [
        '<div class="compare" id="compare">',
        "<h2>Same situation across iterations</h2>",
        f'<nav class="situations">Compare: {links}</nav>',
    ]
    for number, (situation, label) in enumerate(zip(found, labels), start=1):
        iterations = [record["training_iteration"] for record in situation.records]
        span = f"iteration {iterations[0]}" if iterations[0] == iterations[-1] else \
            f"iterations {iterations[0]} to {iterations[-1]}, oldest first"
        parts.append(f'<div class="situation" id="situation-{number}">')
        parts.append(f"<h3>{_text(label)} · {span}</h3>")
        parts.append('<button type="button" class="play-together" hidden>Play together</button>')
        parts.append('<a class="close" href="#compare">close</a>')
        parts.append('<div class="row">')
        for record in situation.records:
            facts = outcome(record) + (["recovered"] if record.get("recovered") else [])
            facts += ["altered after it was stored"] if record["file"] in altered else []
            lines = f'<span class="caption">iteration {record["training_iteration"]}</span>'
            lines += f'<span class="outcome">{_text(" · ".join(facts))}</span>' if facts else ""
            parts.append(f'<figure data-iteration="{record["training_iteration"]}">\n{_video(record, posters)}\n'
                         f"<figcaption>{lines}</figcaption>\n</figure>")
        parts.append("</div>")
        parts.append("</div>")
    parts.append("</div>")
    return parts


def _kept(records: list[dict], folder: str | None) -> list[str]:
    """The iteration's episodes kept without a video: how each went, and the command that renders it."""
    if not records:
        return []
    parts = ['<div class="kept">', f"<h3>Episodes without a video ({len(records)})</h3>", "<ul>"]
    for record in records:
        path = record["record"] if folder is None else os.path.join(folder, record["record"])
        parts.append(f'<li><span class="caption">{_text(kept_caption(record))}</span>'
                     f"<code>{_text(render_command(path))}</code></li>")
    parts += ["</ul>", "</div>"]
    return parts


def _video(record: dict, posters) -> str:
    src = _text(quote(record["file"]))
    poster = poster_name(record["file"])
    shown = f' poster="{_text(quote(poster))}"' if poster in posters else ""
    size = ""
    if is_int(record.get("width")) and is_int(record.get("height")):
        size = f' width="{record["width"]}" height="{record["height"]}"'
    return f'<video controls preload="none" src="{src}"{shown}{size}></video>'


def _figure(record: dict, posters, altered: str | None = None) -> str:
    src = _text(quote(record["file"]))
    lines = [f'<span class="caption">{_text(video_caption(record))}</span>']
    if altered is not None:
        lines.append(f'<span class="altered">altered after it was stored: {_text(altered)}</span>')
    if record.get("rendered") == "later":
        lines.append('<span class="rendered">rendered later from its replay record</span>')
    if record.get("checkpoint") is not None:
        lines.append(f'<span class="checkpoint">checkpoint {_text(str(record["checkpoint"]))}</span>')
    lines.append(f'<a class="file" href="{src}">{_text(record["file"])}</a>')
    opening = "<figure>" if altered is None else '<figure class="altered">'
    return f"{opening}\n{_video(record, posters)}\n<figcaption>{''.join(lines)}</figcaption>\n</figure>"


def _text(value: str) -> str:
    return html.escape(value, quote=True)
