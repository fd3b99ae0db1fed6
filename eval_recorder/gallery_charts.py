"""The gallery's plots, as inline SVG: per env, the mean evaluation return per training
iteration and, for envs that report arrivals (Flatland), the mean completion rate. Beside
the evaluation return, when the folder holds one env, the training return of each train()
call (``training_record``), dashed, with a legend saying which line is which. Each plot has
axes with round ticks, and, unless the run is long, a dot per iteration that shows its
values (an evaluation dot links to its iteration's section of the page).
"""

from __future__ import annotations

import html
import math

from eval_recorder.gallery_records import iteration_summary, record_env, video_count

__all__ = ["plots"]


# The plot's frame (SVG user units): plot area from (_LEFT, _TOP) to (_RIGHT, _BOTTOM).
_WIDTH, _HEIGHT = 480, 176
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 460, 24, 140
_MARKED_POINTS = 100  # up to this many iterations each point is a dot with its values as tooltip


def plots(records: list[dict], *, training: list[tuple[int, float]] = ()) -> list[str]:
    """One return plot per env, and a completion plot for envs that report completion.
    ``training``: (iteration, mean training return) points, drawn on the return plot when
    ``records`` are of one env (a training return belongs to no env of several)."""
    envs = sorted({record_env(record) for record in records}, key=lambda env: (env is not None, env))
    train = [(iteration, value, 0) for iteration, value in training] if len(envs) == 1 else []
    svgs = []
    for env in envs:
        summary = iteration_summary([record for record in records if record_env(record) == env])
        prefix = f"{env} · " if len(envs) > 1 and env is not None else ""
        returns = [(s.training_iteration, s.mean_return, s.episodes) for s in summary if s.mean_return is not None]
        completions = [(s.training_iteration, s.mean_completion, s.episodes)
                       for s in summary if s.mean_completion is not None]
        if returns or train:
            lines = [(line, points) for line, points in (("return", returns), ("train", train)) if points]
            values = [point[1] for point in returns + train]
            svgs.append(_plot_svg(lines, env=env, series="return",
                                  title=f"{prefix}mean return per training iteration",
                                  y_ticks=_nice_ticks(min(values), max(values))))
        if completions:
            svgs.append(_plot_svg([("completion", completions)], env=env, series="completion",
                                  title=f"{prefix}completion rate (agents arrived) per training iteration",
                                  y_ticks=[0.0, 0.5, 1.0]))
    if not svgs:
        return []
    return ['<div class="plots">', *svgs, "</div>"]


# Each line of a plot: its legend text and the words of its dots' tooltips.
_LINES = {
    "return": ("evaluation", "mean return"),
    "completion": ("evaluation", "mean completion"),
    "train": ("training", "training return"),
}


def _plot_svg(lines: list[tuple[str, list[tuple[int, float, int]]]], *, env, series: str, title: str,
              y_ticks: list[float]) -> str:
    """A plot of lines of (iteration, value, episodes) points (each line: its class and
    points; ``"train"`` points are of no videos) with axes, ticks and labels, and a legend
    when it has more than one line."""
    iterations = [point[0] for _, points in lines for point in points]
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
    if len(lines) > 1 or lines[0][0] == "train":
        left = _RIGHT - 84 * len(lines)
        for number, (line, _) in enumerate(lines):
            at = left + 84 * number
            parts.append(f'<line class="{line}" x1="{at}" x2="{at + 16}" y1="10" y2="10"/>')
            parts.append(f'<text class="legend" data-series="{line}" x="{at + 20}" y="14">{_LINES[line][0]}</text>')
    for line, points in lines:
        coordinates = " ".join(f"{x(iteration):.1f},{y(value):.1f}" for iteration, value, _ in points)
        parts.append(f'<polyline class="{line}" points="{coordinates}"/>')
        if len(points) > _MARKED_POINTS:
            continue
        for iteration, value, episodes in points:
            dot = (f'<circle class="{line}" cx="{x(iteration):.1f}" cy="{y(value):.1f}" r="2.5"><title>iteration '
                   f"{iteration} · {_LINES[line][1]} {value_label(value)}")
            if line == "train":
                parts.append(f"{dot}</title></circle>")
            else:
                parts.append(f'<a href="#iteration-{iteration}">{dot} · {video_count(episodes)}</title></circle></a>')
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


def _text(value: str) -> str:
    return html.escape(value, quote=True)
