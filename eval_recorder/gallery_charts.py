"""The gallery's plots, as inline SVG: per env, the mean evaluation return per training
iteration and, for envs that report arrivals (Flatland), the mean completion rate. Each
plot has axes with round ticks, and, unless the run is long, a dot per iteration that
links to its section of the page and shows its values.
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


def plots(records: list[dict]) -> list[str]:
    """One return plot per env, and a completion plot for envs that report completion."""
    envs = sorted({record_env(record) for record in records}, key=lambda env: (env is not None, env))
    svgs = []
    for env in envs:
        summary = iteration_summary([record for record in records if record_env(record) == env])
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
                f"{video_count(episodes)}</title></circle></a>"
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


def _text(value: str) -> str:
    return html.escape(value, quote=True)
