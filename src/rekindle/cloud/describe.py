"""Backup policies in plain words, for the console's previews:
"Runs Mon-Fri at 22:00 UTC for up to 8 hours; ..."."""

from __future__ import annotations

from typing import Any

from rekindle.cloud.schedule import DAY_NAMES, parse_days


def describe_days(days: str) -> str:
    picked = sorted(set(parse_days(days)))
    if len(picked) == 7:
        return "every day"
    runs: list[list[int]] = []
    for d in picked:
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = []
    for run in runs:
        first, last = DAY_NAMES[run[0]].title(), DAY_NAMES[run[-1]].title()
        if len(run) >= 3:
            parts.append(f"{first}-{last}")
        else:
            parts.extend(DAY_NAMES[d].title() for d in run)
    return ", ".join(parts)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _times(n: int) -> str:
    return "twice" if n == 2 else f"{n} times"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe_retention(retention: dict[str, Any]) -> str:
    within = int(retention.get("within_days") or 0)
    tiers = [
        (int(retention.get("daily") or 0), "a day", "day"),
        (int(retention.get("weekly") or 0), "a week", "week"),
        (int(retention.get("monthly") or 0), "a month", "month"),
        (int(retention.get("yearly") or 0), "a year", "year"),
    ]
    kept = [f"one {per} for {_count(n, unit)}" for n, per, unit in tiers if n > 0]
    if within and kept:
        return f"keeps every restore point for {_count(within, 'day')}, then {_join(kept)}"
    if within:
        return f"keeps every restore point for {_count(within, 'day')}"
    if kept:
        return f"keeps {_join(kept)}"
    return "keeps every restore point"


def describe_policy(
    *,
    days: str,
    start_time: str,
    window_hours: int,
    max_retries: int,
    retry_interval_min: int,
    bandwidth_kib: int,
    retention: dict[str, Any],
    cold_after_days: int,
) -> str:
    when = f"Runs {describe_days(days)} at {start_time} UTC"
    when += f" for up to {_count(window_hours, 'hour')}" if window_hours else " until done"
    if max_retries == 1:
        retry = f"a failed backup is tried again once, after {_count(retry_interval_min, 'minute')}"
    elif max_retries:
        retry = (
            f"a failed backup is tried again up to {_times(max_retries)}, "
            f"{_count(retry_interval_min, 'minute')} apart"
        )
    else:
        retry = "a failed backup is not tried again"
    if bandwidth_kib:
        cap = f"uploads at most {bandwidth_kib / 1024:.1f} MiB/s".replace(".0 MiB", " MiB")
    else:
        cap = "no bandwidth cap"
    cold = f"moves restore points to archive storage after {_count(cold_after_days, 'day')}"
    return f"{when}; {retry}; {cap}; {describe_retention(retention)}; {cold}."
