"""Small bar and line charts as inline SVG, drawn on the server: no chart library, no
script, readable without colour (every bar and point has a title with its value)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 600, 180, 28


@dataclass(frozen=True)
class Point:
    day: date
    value: float
    label: str  # the value in words, for the tooltip and screen readers


def _frame(title: str, body: str, first: date | None, last: date | None) -> Markup:
    axis = ""
    if first is not None and last is not None:
        axis = (
            f'<text x="{PAD}" y="{HEIGHT - 6}" class="axis">{first:%b %d}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" text-anchor="end" class="axis">'
            f"{last:%b %d}</text>"
        )
    return Markup(  # noqa: S704 - every piece of text in it went through escape()
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'class="chart"><title>{escape(title)}</title>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        f'class="base"/>{body}{axis}</svg>'
    )


def bar_chart(title: str, points: list[Point]) -> Markup:
    if not points:
        return _frame(
            title, '<text x="50%" y="50%" text-anchor="middle">no data yet</text>', None, None
        )
    top = max(p.value for p in points) or 1.0
    span = WIDTH - 2 * PAD
    step = span / len(points)
    bar = max(step * 0.7, 1.0)
    bars = []
    for i, p in enumerate(points):
        h = (HEIGHT - 2 * PAD) * p.value / top
        x = PAD + i * step + (step - bar) / 2
        y = HEIGHT - PAD - h
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" class="bar">'
            f"<title>{p.day:%Y-%m-%d}: {escape(p.label)}</title></rect>"
        )
    return _frame(title, "".join(bars), points[0].day, points[-1].day)


def line_chart(title: str, points: list[Point]) -> Markup:
    if not points:
        return _frame(
            title, '<text x="50%" y="50%" text-anchor="middle">no data yet</text>', None, None
        )
    top = max(p.value for p in points) or 1.0
    span = WIDTH - 2 * PAD
    step = span / max(len(points) - 1, 1)
    coords = [
        (PAD + i * step, HEIGHT - PAD - (HEIGHT - 2 * PAD) * p.value / top)
        for i, p in enumerate(points)
    ]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="dot">'
        f"<title>{p.day:%Y-%m-%d}: {escape(p.label)}</title></circle>"
        for (x, y), p in zip(coords, points, strict=True)
    )
    return _frame(
        title, f'<polyline points="{path}" class="line"/>{dots}', points[0].day, points[-1].day
    )
