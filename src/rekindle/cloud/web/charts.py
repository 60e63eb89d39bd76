"""Small bar and line charts as inline SVG, drawn on the server: no chart library, no
script, readable without colour (every bar and point has a title with its value)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 600, 180, 28


@dataclass(frozen=True)
class Point:
    day: date
    value: float
    label: str  # the value in words, for the tooltip and screen readers


def _frame(
    title: str, body: str, first: date | None, last: date | None, css: str = "chart"
) -> Markup:
    axis = ""
    if first is not None and last is not None:
        axis = (
            f'<text x="{PAD}" y="{HEIGHT - 6}" class="axis">{first:%b %d}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" text-anchor="end" class="axis">'
            f"{last:%b %d}</text>"
        )
    return Markup(  # noqa: S704 - every piece of text in it went through escape()
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'class="{css}"><title>{escape(title)}</title>'
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


@dataclass(frozen=True)
class Mark:
    """A restore point on the timeline: a link to browse it."""

    time: datetime
    label: str
    href: str
    partial: bool = False


def timeline_chart(title: str, marks: list[Mark]) -> Markup:
    """Restore points placed by time, oldest left; each is a link (focusable by keyboard)
    titled with its time and size. Points close in time are staggered in three rows so
    they stay apart."""
    if not marks:
        return _frame(
            title, '<text x="50%" y="50%" text-anchor="middle">no restore points</text>', None, None
        )
    ordered = sorted(marks, key=lambda m: m.time)
    first, last = ordered[0].time, ordered[-1].time
    span_s = (last - first).total_seconds()
    width = WIDTH - 2 * PAD
    rows = (HEIGHT / 2, HEIGHT / 2 - 24, HEIGHT / 2 + 24)
    dots = []
    for i, m in enumerate(ordered):
        x = PAD + (width * (m.time - first).total_seconds() / span_s if span_s else width / 2)
        y = rows[i % 3]
        cls = "dot partial" if m.partial else "dot"
        dots.append(
            f'<a href="{escape(m.href)}"><circle cx="{x:.1f}" cy="{y:.1f}" r="6" class="{cls}">'
            f"<title>{escape(m.label)}</title></circle></a>"
        )
    body = (
        f'<line x1="{PAD}" y1="{HEIGHT / 2:.1f}" x2="{WIDTH - PAD}" y2="{HEIGHT / 2:.1f}" '
        f'class="base"/>{"".join(dots)}'
    )
    return _frame(title, body, first.date(), last.date(), css="chart timeline-chart")
