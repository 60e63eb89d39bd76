"""Backup policy schedules: days of the week and a start time (UTC), with an optional window.

`next_fire(days, start, after)` gives the first start time strictly after `after`. The
scheduler stores it on the policy and moves it forward atomically when it fires, so a schedule
fires once however many cloud processes look at it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from rekindle.core.errors import UsageError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_days(text: str) -> list[int]:
    """'mon,wed,fri' or 'mon-fri' or 'daily' -> weekday numbers (Monday = 0)."""
    text = text.strip().lower()
    if text in ("daily", "every day", "*"):
        return list(range(7))
    out: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        if "-" in part:
            a, b = (x.strip() for x in part.split("-", 1))
            if a not in DAY_NAMES or b not in DAY_NAMES:
                raise UsageError(f"unknown day in {part!r}: use mon, tue, ... sun")
            i, j = DAY_NAMES.index(a), DAY_NAMES.index(b)
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(j + 1)])
        elif part in DAY_NAMES:
            out.add(DAY_NAMES.index(part))
        else:
            raise UsageError(f"unknown day {part!r}: use mon, tue, ... sun, ranges or 'daily'")
    if not out:
        raise UsageError("a schedule needs at least one day")
    return sorted(out)


def format_days(days: list[int]) -> str:
    return ",".join(DAY_NAMES[d] for d in sorted(set(days)))


def parse_time(text: str) -> tuple[int, int]:
    m = _TIME.match(text.strip())
    if not m:
        raise UsageError(f"start time {text!r} must be HH:MM (24-hour, UTC)")
    return int(m.group(1)), int(m.group(2))


def next_fire(days: str, start: str, after: datetime) -> datetime:
    wanted = set(parse_days(days))
    hh, mm = parse_time(start)
    base = after.astimezone(UTC)
    for offset in range(8):
        day = (base + timedelta(days=offset)).date()
        t = datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC)
        if t > base and t.weekday() in wanted:
            return t
    raise AssertionError("a weekly schedule always fires within 8 days")


def window_end(fired: datetime, window_hours: int) -> datetime | None:
    return fired + timedelta(hours=window_hours) if window_hours > 0 else None
