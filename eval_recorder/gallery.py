"""The offline gallery: one ``index.html`` next to the videos, opened straight from disk.

``write_gallery`` reads a folder's manifest and replaces its gallery (``GALLERY``)
atomically with the page ``render_gallery`` makes of the records (pure: records in, text
out); ``iteration_summary`` and ``situations`` are the data of its plot and comparison.

The page opens with a small plot (inline SVG) of mean evaluation return, and mean
completion rate for envs that report arrivals (Flatland), per training iteration. Below it
the user picks a situation (evaluation uses fixed seeds: episode k of every round plays the
same env) played more than once and sees its videos side by side, oldest iteration first,
to answer "did it get better on the same situation?"; the choice is a plain link to the situation's anchor, shown
by CSS ``:target``, so it works without JavaScript. Then every video, newest training
iteration first, one section per iteration, in order of evaluation round and episode within
it; each has the caption wandb shows (``naming.caption``), the checkpoint when it has one,
and a link to the file.

The page needs no server and no network: each video's ``src`` is its bare file name, next
to the page, and the page holds its own CSS, SVG and one small inline script; nothing is
fetched from elsewhere.

Thousands of videos: Chromium gives a page at most 1000 media players and fails every
video beyond that. So videos start with ``preload="none"`` (no player, nothing read: a click
still plays it, also without JavaScript), and the inline script lets only the videos near
the screen load their metadata (duration, first frame), releasing those far away (or
hidden: a situation not chosen, a row scrolled sideways) again once they are paused.
"""

from __future__ import annotations

import html
import logging
import math
import os
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from eval_recorder.naming import caption
from eval_recorder.video_store import fsync_dir, read_manifest, write_temporary

__all__ = [
    "GALLERY",
    "IterationSummary",
    "Situation",
    "iteration_summary",
    "render_gallery",
    "situations",
    "video_caption",
    "write_gallery",
]

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
"""

# Near the screen (one screen height above and below): load metadata. Far away (or hidden)
# and paused: drop the source (kept in data-src), which frees the player and keeps the page
# under the limit; a video that plays on is released when it pauses or ends.
# "Play together" restarts the videos of a situation that are in view, together.
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

# The plot's frame (SVG user units): plot area from (_LEFT, _TOP) to (_RIGHT, _BOTTOM).
_WIDTH, _HEIGHT = 480, 176
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 460, 24, 140
_MARKED_POINTS = 100  # up to this many iterations each point is a dot with its values as tooltip


class IterationSummary(NamedTuple):
    """One training iteration's evaluation videos, averaged (a point of the plot)."""

    training_iteration: int
    episodes: int  # videos of this iteration
    mean_return: float | None  # over the videos that know their return (None: none does)
    mean_completion: float | None  # over the videos that report completion (None: none does)


@dataclass(frozen=True)
class Situation:
    """One evaluation situation (an env seed or a saved scenario of one env) and its videos,
    oldest training iteration first."""

    env: str | None
    scenario: str | None
    env_seed: int | None
    records: tuple[dict, ...]

    @property
    def label(self) -> str:
        """``episode 0 · seed 1000`` (``scenario <file>`` for a saved scenario; the episode
        index when every video of the situation has the same one)."""
        parts = []
        indexes = {record.get("episode_index") for record in self.records}
        if len(indexes) == 1 and isinstance(next(iter(indexes)), int):
            parts.append(f"episode {next(iter(indexes))}")
        if self.scenario is not None:
            parts.append(f"scenario {self.scenario}")
        if self.env_seed is not None:
            parts.append(f"seed {self.env_seed}")
        return " · ".join(parts)


def iteration_summary(records: list[dict]) -> list[IterationSummary]:
    """Per training iteration of ``records`` (videos of one env), oldest first: the number of
    videos, their mean return and their mean completion rate. A video lacking a value (a
    record recovered after a crash) is left out of that mean only."""
    by_iteration: dict[int, list[dict]] = {}
    for record in records:
        by_iteration.setdefault(record["training_iteration"], []).append(record)
    summary = []
    for iteration in sorted(by_iteration):
        group = by_iteration[iteration]
        summary.append(IterationSummary(
            training_iteration=iteration,
            episodes=len(group),
            mean_return=_mean(record.get("episode_return") for record in group),
            mean_completion=_mean(record.get("completion") for record in group),
        ))
    return summary


def situations(records: list[dict]) -> list[Situation]:
    """The situations that ``records`` played, each with its videos: same env and same
    ``scenario`` / ``env_seed``. Videos of an unseeded reset without a scenario (or whose
    seed was lost in a crash) belong to none. Situations in order of env, then episode
    index; videos oldest training iteration first, then by round and episode."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        seed, scenario = record.get("env_seed"), record.get("scenario")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        scenario = str(scenario) if scenario else None
        if seed is None and scenario is None:
            continue
        groups.setdefault((_env(record), scenario, seed), []).append(record)
    found = [
        Situation(env=env, scenario=scenario, env_seed=seed, records=tuple(sorted(group, key=_oldest_first)))
        for (env, scenario, seed), group in groups.items()
    ]
    found.sort(key=lambda s: (
        s.env or "", min(_int_or_zero(r.get("episode_index")) for r in s.records), s.scenario or "", s.env_seed or 0,
    ))
    return found


def video_caption(record: dict) -> str:
    """The caption of a video: ``naming.caption``, or for a record recovered after a crash
    what it knows (``iteration 3 · episode 1 · recovered``)."""
    try:
        text = caption(record)
    except (KeyError, TypeError, ValueError):
        if not record.get("recovered"):
            raise
        text = " · ".join(_known_facts(record))
    return f"{text} · recovered" if record.get("recovered") else text


def render_gallery(records: list[dict]) -> str:
    """The gallery page showing ``records`` (manifest records; videos next to the page).

    Records without a plain file name or without the caption's fields (unless recovered
    after a crash) are left out.
    """
    shown = [record for record in records if _showable(record)]
    # Newest iteration first; within one, by round and episode (ties: manifest order).
    shown.sort(key=lambda record: (_int_or_zero(record.get("evaluation_round")),
                                   _int_or_zero(record.get("episode_index"))))
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
    parts.extend(_plots(shown))
    parts.extend(_comparison([situation for situation in situations(shown) if len(situation.records) > 1]))
    if groups:
        links = " ".join(f'<a href="#iteration-{iteration}">{iteration}</a>' for iteration, _ in groups)
        parts.append(f'<nav class="iterations">Iterations: {links}</nav>')
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


# --- records -----------------------------------------------------------------------------------


def _showable(record) -> bool:
    """A dict naming a file in the folder itself, of a known training iteration, with
    everything its caption needs (a record recovered after a crash: what it knows)."""
    if not isinstance(record, dict):
        return False
    name = record.get("file")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    if not _is_int(record.get("training_iteration")):
        return False
    if record.get("recovered"):
        return record.get("episode_index") is None or _is_int(record.get("episode_index"))
    if not _is_int(record.get("episode_index")):
        return False
    try:
        caption(record)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _known_facts(record: dict) -> list[str]:
    """The caption's parts that ``record`` knows, in the caption's order."""
    parts = [f"iteration {record['training_iteration']}"]
    if _is_int(record.get("env_steps")):
        parts.append(f"{record['env_steps']} env steps")
    if _is_int(record.get("episode_index")):
        parts.append(f"episode {record['episode_index']}")
    if record.get("scenario"):
        parts.append(f"scenario {record['scenario']}")
    parts.extend(_outcome(record))
    return parts


def _outcome(record: dict) -> list[str]:
    """``2/3 arrived``, ``return -12.50``: what is known of how the episode went."""
    parts = []
    if _is_int(record.get("agents_arrived")) and _is_int(record.get("num_agents")) and record["num_agents"]:
        parts.append(f"{record['agents_arrived']}/{record['num_agents']} arrived")
    if _number(record.get("episode_return")) is not None:
        parts.append(f"return {float(record['episode_return']):.2f}")
    return parts


def _env(record: dict) -> str | None:
    env = record.get("env")
    return None if env is None else str(env)


def _oldest_first(record: dict) -> tuple[int, int, int]:
    return (record["training_iteration"], _int_or_zero(record.get("evaluation_round")),
            _int_or_zero(record.get("episode_index")))


def _mean(values) -> float | None:
    numbers = [number for number in map(_number, values) if number is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_zero(value) -> int:
    return value if _is_int(value) else 0


# --- the plot ----------------------------------------------------------------------------------


def _plots(records: list[dict]) -> list[str]:
    """One return plot per env, and a completion plot for envs that report completion."""
    envs = sorted({_env(record) for record in records}, key=lambda env: (env is not None, env))
    svgs = []
    for env in envs:
        summary = iteration_summary([record for record in records if _env(record) == env])
        prefix = f"{env} · " if len(envs) > 1 and env is not None else ""
        returns = [(s.training_iteration, s.mean_return, s.episodes) for s in summary if s.mean_return is not None]
        completions = [(s.training_iteration, s.mean_completion, s.episodes)
                       for s in summary if s.mean_completion is not None]
        if returns:
            svgs.append(_plot_svg(returns, env=env, series="return",
                                  title=f"{prefix}mean return per training iteration",
                                  y_ticks=_nice_ticks(min(p[1] for p in returns), max(p[1] for p in returns))))
        if completions:
            svgs.append(_plot_svg(completions, env=env, series="completion",
                                  title=f"{prefix}completion rate (agents arrived) per training iteration",
                                  y_ticks=[0.0, 0.5, 1.0]))
    if not svgs:
        return []
    return ['<div class="plots">', *svgs, "</div>"]


def _plot_svg(points: list[tuple[int, float, int]], *, env, series: str, title: str, y_ticks: list[float]) -> str:
    """A line plot of (iteration, value, episodes) points with axes, ticks and labels."""
    iterations = [point[0] for point in points]
    first, last = min(iterations), max(iterations)
    low, high = y_ticks[0], y_ticks[-1]

    def x(iteration: int) -> float:
        if first == last:
            return (_LEFT + _RIGHT) / 2
        return _LEFT + (iteration - first) / (last - first) * (_RIGHT - _LEFT)

    def y(value: float) -> float:
        return _BOTTOM - (value - low) / (high - low) * (_BOTTOM - _TOP)

    def tick_label(value: float) -> str:
        return f"{value:.0%}" if series == "completion" else _tick_label(value, y_ticks)

    def value_label(value: float) -> str:
        return f"{value:.0%}" if series == "completion" else f"{value:.2f}"

    env_attr = f' data-env="{_text(str(env))}"' if env is not None else ""
    parts = [
        f'<svg class="plot" data-series="{series}"{env_attr} viewBox="0 0 {_WIDTH} {_HEIGHT}" '
        f'width="{_WIDTH}" height="{_HEIGHT}" role="img">',
        f"<title>{_text(title)}</title>",
        f'<text class="title" x="{_LEFT}" y="14">{_text(title)}</text>',
    ]
    for tick in y_ticks:
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        parts.append(f'<text class="y-tick" x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                     f"{tick_label(tick)}</text>")
    parts.append(f'<line class="axis" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_BOTTOM}"/>')
    parts.append(f'<line class="axis" x1="{_LEFT}" x2="{_RIGHT}" y1="{_BOTTOM}" y2="{_BOTTOM}"/>')
    for tick in _iteration_ticks(first, last):
        parts.append(f'<line class="axis" x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{_BOTTOM}" y2="{_BOTTOM + 4}"/>')
        parts.append(f'<text class="x-tick" x="{x(tick):.1f}" y="{_BOTTOM + 16}" text-anchor="middle">{tick}</text>')
    parts.append(f'<text class="x-title" x="{(_LEFT + _RIGHT) / 2:.0f}" y="{_HEIGHT - 4}" text-anchor="middle">'
                 "training iteration</text>")
    coordinates = " ".join(f"{x(iteration):.1f},{y(value):.1f}" for iteration, value, _ in points)
    parts.append(f'<polyline class="{series}" points="{coordinates}"/>')
    if len(points) <= _MARKED_POINTS:
        for iteration, value, episodes in points:
            parts.append(
                f'<a href="#iteration-{iteration}"><circle class="{series}" cx="{x(iteration):.1f}" '
                f'cy="{y(value):.1f}" r="2.5"><title>iteration {iteration} · mean {series} {value_label(value)} · '
                f"{_videos(episodes)}</title></circle></a>"
            )
    parts.append("</svg>")
    return "\n".join(parts)


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` steps of 1, 2 or 5 times a power of ten covering ``low``..``high``."""
    if high <= low:
        pad = max(abs(low) * 0.1, 1.0)
        low, high = low - pad, high + pad
    step = _nice_step((high - low) / count)
    start, stop = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(index * step, 12) for index in range(start, stop + 1)]


def _nice_step(raw: float) -> float:
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _tick_label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    label = f"{value:.{decimals}f}"
    return "0" if float(label) == 0 else label


def _iteration_ticks(first: int, last: int) -> list[int]:
    """Whole iterations at 1, 2 or 5 times a power of ten within ``first``..``last``, and
    ``first`` and ``last`` themselves where they are not too close to those."""
    if first == last:
        return [first]
    step = max(1, int(_nice_step((last - first) / 5)))
    ticks = list(range(math.ceil(first / step) * step, last + 1, step))
    if not ticks or ticks[0] - first >= step / 2:
        ticks.insert(0, first)
    if last - ticks[-1] >= step / 2:
        ticks.append(last)
    return ticks


# --- the comparison ----------------------------------------------------------------------------


def _comparison(found: list[Situation]) -> list[str]:
    """The situation chooser (links to anchors) and each situation's row of videos
    (situations played more than once: one video has nothing to be compared with)."""
    if not found:
        return []
    envs = {situation.env for situation in found}
    labels = [f"{s.env} · {s.label}" if len(envs) > 1 and s.env is not None else s.label for s in found]
    links = " ".join(
        f'<span class="choice"><a href="#situation-{number}">{_text(label)}</a> '
        f"({_videos(len(situation.records))})</span>"
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
            outcome = _outcome(record) + (["recovered"] if record.get("recovered") else [])
            lines = f'<span class="caption">iteration {record["training_iteration"]}</span>'
            lines += f'<span class="outcome">{_text(" · ".join(outcome))}</span>' if outcome else ""
            parts.append(f'<figure data-iteration="{record["training_iteration"]}">\n{_video(record)}\n'
                         f"<figcaption>{lines}</figcaption>\n</figure>")
        parts.append("</div>")
        parts.append("</div>")
    parts.append("</div>")
    return parts


# --- the videos --------------------------------------------------------------------------------


def _video(record: dict) -> str:
    src = _text(quote(record["file"]))
    size = ""
    if _is_int(record.get("width")) and _is_int(record.get("height")):
        size = f' width="{record["width"]}" height="{record["height"]}"'
    return f'<video controls preload="none" src="{src}"{size}></video>'


def _figure(record: dict) -> str:
    src = _text(quote(record["file"]))
    lines = [f'<span class="caption">{_text(video_caption(record))}</span>']
    if record.get("checkpoint") is not None:
        lines.append(f'<span class="checkpoint">checkpoint {_text(str(record["checkpoint"]))}</span>')
    lines.append(f'<a class="file" href="{src}">{_text(record["file"])}</a>')
    return f"<figure>\n{_video(record)}\n<figcaption>{''.join(lines)}</figcaption>\n</figure>"


def _videos(count: int) -> str:
    return f"{count} video{'s' if count != 1 else ''}"


def _text(value: str) -> str:
    return html.escape(value, quote=True)
