"""The offline gallery: one ``index.html`` next to the videos, opened straight from disk.

Holds:
  GALLERY           the gallery's file name in the video folder.
  render_gallery()  the page for some manifest records (pure: text in, text out).
  write_gallery()   reads a folder's manifest and replaces its gallery atomically.

The page needs no server and no network: each video's ``src`` is its bare file name, next
to the page, and the page holds its own CSS and one small inline script; nothing is fetched
from elsewhere. Videos are shown newest training iteration first, one section per
iteration, in order of evaluation round and episode within it; each has the caption wandb
shows (``naming.caption``), the checkpoint when it has one, and a link to the file.

Thousands of videos: Chromium gives a page at most 1000 media players and fails every
video beyond that. So videos start with ``preload="none"`` (no player, nothing read: a click
still plays it, also without JavaScript), and the inline script lets only the videos near
the screen load their metadata (duration, first frame), releasing those far away again
unless they are playing.
"""

from __future__ import annotations

import html
import logging
import os
from itertools import groupby
from pathlib import Path
from urllib.parse import quote

from eval_recorder.naming import caption
from eval_recorder.video_store import fsync_dir, read_manifest, write_temporary

__all__ = ["GALLERY", "render_gallery", "write_gallery"]

GALLERY = "index.html"

_log = logging.getLogger(__name__)

_STYLE = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.5em 0 .5em; border-bottom: 1px solid #ccc; }
nav a { margin-right: .6em; }
.videos { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1em; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: .5em; }
video { display: block; width: 100%; height: auto; background: #000; }
figcaption { margin-top: .4em; }
figcaption span, figcaption a { display: block; overflow-wrap: anywhere; }
.checkpoint, .file { color: #666; font-size: .9em; }
"""

# Near the screen (one screen height above and below): load metadata. Far away and paused:
# drop the source (kept in data-src), which frees the player and keeps the page under the limit.
_SCRIPT = """\
(() => {
  const near = new IntersectionObserver((changes) => {
    for (const { target: video, isIntersecting } of changes) {
      if (isIntersecting) {
        if (!video.hasAttribute("src")) video.src = video.dataset.src;
        video.preload = "metadata";
      } else if (video.paused && video.preload !== "none") {
        video.dataset.src = video.getAttribute("src");
        video.preload = "none";
        video.removeAttribute("src");
        video.load();
      }
    }
  }, { rootMargin: "100% 0px" });
  for (const video of document.querySelectorAll("video")) near.observe(video);
})();
"""


def render_gallery(records: list[dict]) -> str:
    """The gallery page showing ``records`` (manifest records; videos next to the page).

    Records without a plain file name or without the caption's fields are left out.
    """
    shown = [record for record in records if _showable(record)]
    # Newest iteration first; within one, by round and episode (ties: manifest order).
    shown.sort(key=lambda record: (_int_or_zero(record.get("evaluation_round")), record["episode_index"]))
    shown.sort(key=lambda record: record["training_iteration"], reverse=True)
    groups = [(iteration, list(group)) for iteration, group in groupby(shown, key=lambda r: r["training_iteration"])]
    run_ids = list(dict.fromkeys(str(record["run_id"]) for record in shown if record.get("run_id")))

    summary = f"{len(shown)} video{'s' if len(shown) != 1 else ''} of {len(groups)} training iteration"
    summary += f"{'s' if len(groups) != 1 else ''}, newest first"
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
    if groups:
        links = " ".join(f'<a href="#iteration-{iteration}">{iteration}</a>' for iteration, _ in groups)
        parts.append(f"<nav>Iterations: {links}</nav>")
    for iteration, group in groups:
        parts.append(f'<section id="iteration-{iteration}">')
        parts.append(f"<h2>Iteration {iteration}</h2>")
        parts.append('<div class="videos">')
        parts.extend(_figure(record) for record in group)
        parts.append("</div>")
        parts.append("</section>")
    parts.append(f"<script>\n{_SCRIPT}</script>")
    parts.append("</body>")
    parts.append("</html>")
    return "\n".join(parts) + "\n"


def write_gallery(folder: Path) -> Path:
    """Replace ``folder``'s gallery with one of every video its manifest lists; its path.

    Records whose mp4 is not in the folder are left out. The page is written to a hidden
    temporary name in the folder, flushed to disk and renamed over the old one, so a
    browser (or a crash) never sees half a page.
    """
    folder = Path(folder)
    records = read_manifest(folder)
    present = [record for record in records if _showable(record) and (folder / record["file"]).is_file()]
    if len(present) < len(records):
        _log.debug("gallery leaves out %d of %d manifest records (file missing or record unusable)",
                   len(records) - len(present), len(records))
    data = render_gallery(present).encode()
    path = folder / GALLERY
    tmp = write_temporary(folder, GALLERY, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return path


def _showable(record) -> bool:
    """A dict naming a file in the folder itself, with everything its caption needs."""
    if not isinstance(record, dict):
        return False
    name = record.get("file")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    if not isinstance(record.get("training_iteration"), int) or not isinstance(record.get("episode_index"), int):
        return False
    try:
        caption(record)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _int_or_zero(value) -> int:
    return value if isinstance(value, int) else 0


def _figure(record: dict) -> str:
    src = _text(quote(record["file"]))
    size = ""
    if isinstance(record.get("width"), int) and isinstance(record.get("height"), int):
        size = f' width="{record["width"]}" height="{record["height"]}"'
    lines = [f'<span class="caption">{_text(caption(record))}</span>']
    if record.get("checkpoint") is not None:
        lines.append(f'<span class="checkpoint">checkpoint {_text(str(record["checkpoint"]))}</span>')
    lines.append(f'<a class="file" href="{src}">{_text(record["file"])}</a>')
    return (
        f'<figure>\n<video controls preload="none" src="{src}"{size}></video>\n'
        f"<figcaption>{''.join(lines)}</figcaption>\n</figure>"
    )


def _text(value: str) -> str:
    return html.escape(value, quote=True)
