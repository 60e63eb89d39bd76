"""Form fields of the console's pages to and from the service layer's arguments. The
services validate; this only turns text into numbers with messages an admin understands."""

from __future__ import annotations

from typing import Any

from rekindle.cloud.models import BackupPolicy
from rekindle.cloud.schedule import DAY_NAMES
from rekindle.core.errors import UsageError

_RETENTION = ("within_days", "daily", "weekly", "monthly", "yearly")
_LABELS = {
    "window_hours": "Window",
    "max_retries": "Retries",
    "retry_interval_min": "Minutes between retries",
    "bandwidth_kib": "Bandwidth cap",
    "cold_after_days": "Archive after",
    "within_days": "Keep every restore point for",
    "daily": "Daily restore points",
    "weekly": "Weekly restore points",
    "monthly": "Monthly restore points",
    "yearly": "Yearly restore points",
}


def _number(form: Any, key: str, default: int = 0) -> int:
    raw = str(form.get(key) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{_LABELS.get(key, key)}: {raw!r} is not a whole number") from None
    if value < 0:
        raise UsageError(f"{_LABELS.get(key, key)} cannot be negative")
    return value


def policy_from_form(form: Any) -> tuple[str, dict[str, Any]]:
    """(name, fields for create_policy/update_policy and describe_policy)."""
    days = [d for d in form.getlist("day") if d in DAY_NAMES]
    if not days:
        raise UsageError("pick at least one day of the week")
    retention = {k: _number(form, k) for k in _RETENTION}
    cold = _number(form, "cold_after_days", 90)
    if cold < 1:
        raise UsageError("Archive after: at least 1 day")
    fields: dict[str, Any] = {
        "days": ",".join(days),
        "start_time": str(form.get("start_time") or "").strip(),
        "window_hours": _number(form, "window_hours"),
        "max_retries": _number(form, "max_retries"),
        "retry_interval_min": _number(form, "retry_interval_min"),
        "bandwidth_kib": _number(form, "bandwidth_mib_s") * 1024,
        "retention": {k: v for k, v in retention.items() if v},
        "cold_after_days": cold,
    }
    return str(form.get("name") or "").strip(), fields


def policy_values(p: BackupPolicy) -> dict[str, Any]:
    return {
        "days": p.days,
        "start_time": p.start_time,
        "window_hours": p.window_hours,
        "max_retries": p.max_retries,
        "retry_interval_min": p.retry_interval_min,
        "bandwidth_kib": p.bandwidth_kib,
        "retention": dict(p.retention or {}),
        "cold_after_days": p.cold_after_days,
    }


def default_policy_form() -> dict[str, Any]:
    return {
        "name": "",
        "days": "mon,tue,wed,thu,fri",
        "start_time": "22:00",
        "window_hours": 8,
        "max_retries": 2,
        "retry_interval_min": 30,
        "bandwidth_kib": 0,
        "retention": {"within_days": 60, "weekly": 24, "monthly": 12, "yearly": 3},
        "cold_after_days": 90,
    }
