"""Retention rules: which restore points to keep (pure functions, no I/O).

The rules follow the usual backup-tool meaning. Restore points are taken newest first;
`keep_last` keeps the newest N; each of `keep_hourly|daily|weekly|monthly|yearly` keeps the
newest restore point of each of the N most recent hours, days, ISO weeks (Monday to Sunday),
months or years that have one; `keep_within` keeps everything newer than that long before
the newest restore point; `keep_tags` keeps every restore point carrying one of the tags.
A restore point is kept if any rule keeps it, and the newest one is always kept. Periods
are cut in `tz` (default UTC), so a day ends at midnight there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Generic, Protocol, TypeVar

from rekindle.core.errors import UsageError


class Dated(Protocol):
    """What retention looks at: a restore point in the repository, or its catalog entry."""

    @property
    def id(self) -> str: ...
    @property
    def time(self) -> datetime: ...
    @property
    def tags(self) -> Collection[str]: ...


D = TypeVar("D", bound=Dated)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: timedelta | None = None
    keep_tags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in (
            "keep_last",
            "keep_hourly",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
        ):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UsageError(f"{name.replace('_', '-')} must not be negative")

    def is_empty(self) -> bool:
        return (
            not any(
                (
                    self.keep_last,
                    self.keep_hourly,
                    self.keep_daily,
                    self.keep_weekly,
                    self.keep_monthly,
                    self.keep_yearly,
                    self.keep_within,
                )
            )
            and not self.keep_tags
        )


_BUCKETS: list[tuple[str, Callable[[datetime], tuple[int, ...]]]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
]


@dataclass
class RetentionResult(Generic[D]):
    keep: list[D]
    remove: list[D]
    reasons: dict[str, list[str]]  # snapshot id -> the rules that keep it


def apply_retention(
    snapshots: Sequence[D], policy: RetentionPolicy, *, tz: tzinfo = UTC
) -> RetentionResult[D]:
    """Split restore points (of one backup set) into those kept and those to remove."""
    ordered = sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True)
    reasons: dict[str, list[str]] = {s.id: [] for s in ordered}
    if not ordered:
        return RetentionResult([], [], reasons)
    reasons[ordered[0].id].append("latest")
    for s in ordered[: policy.keep_last or 0]:
        reasons[s.id].append("last")
    if policy.keep_within is not None:
        cutoff = ordered[0].time - policy.keep_within
        for s in ordered:
            if s.time >= cutoff:
                reasons[s.id].append("within")
    for s in ordered:
        if policy.keep_tags.intersection(s.tags):
            reasons[s.id].append("tag")
    for name, bucket in _BUCKETS:
        left = getattr(policy, f"keep_{name}") or 0
        last_key: tuple[int, ...] | None = None
        for s in ordered:
            if left <= 0:
                break
            key = bucket(s.time.astimezone(tz))
            if key != last_key:
                reasons[s.id].append(name)
                last_key = key
                left -= 1
    keep = [s for s in ordered if reasons[s.id]]
    remove = [s for s in ordered if not reasons[s.id]]
    return RetentionResult(keep, remove, reasons)


_DURATION = re.compile(r"(\d+)([yMmwdh])")
_UNIT_HOURS = {"y": 365 * 24, "M": 30 * 24, "m": 30 * 24, "w": 7 * 24, "d": 24, "h": 1}


def parse_duration(text: str) -> timedelta:
    """'60d', '12h', '1y2m', '2w' -> timedelta. Months are 30 days, years 365."""
    text = text.strip()
    if not text or _DURATION.sub("", text):
        raise UsageError(f"invalid duration {text!r}: use e.g. 60d, 12h, 2w, 1y6m")
    hours = sum(int(n) * _UNIT_HOURS[u] for n, u in _DURATION.findall(text))
    return timedelta(hours=hours)


#: The defaults of the product we model: every restore point for 60 days, then one per week
#: for 24 weeks, one per month for 12 months, one per year for 3 years.
DEFAULT_POLICY = RetentionPolicy(
    keep_within=timedelta(days=60), keep_weekly=24, keep_monthly=12, keep_yearly=3
)
