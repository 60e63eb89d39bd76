"""What the console's pages show, computed from CloudServices results: plain data for the
templates, no database access of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rekindle.cloud.models import Job, Server
from rekindle.cloud.services import Actor, CloudServices
from rekindle.cloud.web.charts import Point


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_time(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


@dataclass
class JobView:
    id: int
    server_id: int
    kind: str
    state: str
    trigger: str
    created: datetime
    finished: datetime | None
    error: str | None
    log: str
    percent: int | None
    files_done: int
    bytes_done: int
    rate: str
    eta: str
    active: bool
    #: A restore waiting for a defreeze: packs back from the archive, and how many it needs.
    thawed: int = 0
    to_thaw: int = 0


def job_view(job: Job) -> JobView:
    prog: dict[str, Any] = job.progress or {}
    total = prog.get("bytes_total")
    done = int(prog.get("bytes_done") or 0)
    percent = None
    if job.state == "succeeded":
        percent = 100
    elif total:
        percent = min(100, int(100 * done / max(int(total), 1)))
    rate = prog.get("rate_bps")
    return JobView(
        id=job.id,
        server_id=job.server_id,
        kind=job.kind,
        state=job.state,
        trigger=job.trigger,
        created=job.created,
        finished=job.finished,
        error=job.error,
        log=job.log or "",
        percent=percent,
        files_done=int(prog.get("files_done") or 0),
        bytes_done=done,
        rate=f"{human_bytes(rate)}/s" if rate else "-",
        eta=human_duration(prog.get("eta_s")),
        active=job.state in ("defreezing", "queued", "running"),
        thawed=int(prog.get("thawed") or 0),
        to_thaw=int(prog.get("to_thaw") or 0),
    )


@dataclass
class ServerRow:
    server: Server
    connected: bool
    last_backup: JobView | None


@dataclass
class DashboardView:
    servers: list[ServerRow] = field(default_factory=list)
    per_day: list[Point] = field(default_factory=list)  # data backed up (scanned) per day
    growth: list[Point] = field(default_factory=list)  # storage used after each day
    running: list[JobView] = field(default_factory=list)
    protected: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    #: The storages the organization uses, as last measured (see Maintenance.check_storages).
    storages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dedup_ratio(self) -> str:
        return f"{self.raw_bytes / self.stored_bytes:.1f}x" if self.stored_bytes else "-"


def running_jobs(svc: CloudServices, actor: Actor) -> list[JobView]:
    """The jobs running now (the dashboard's live panel asks for them every 2 seconds)."""
    return [job_view(j) for j in svc.list_jobs(actor, state="running")]


def dashboard_view(svc: CloudServices, actor: Actor) -> DashboardView:
    view = DashboardView()
    last: dict[int, JobView] = {}
    for job in svc.list_jobs(actor, limit=1000):  # newest first
        if job.kind == "backup" and job.state not in ("queued", "running"):
            last.setdefault(job.server_id, job_view(job))
    view.running = running_jobs(svc, actor)
    view.storages = svc.storage_usage(actor)
    for server in svc.list_servers(actor):
        view.servers.append(ServerRow(server, svc.is_connected(server), last.get(server.id)))
    points = svc.list_restore_points(actor)
    view.protected = len({p.server_id for p in points})
    # Raw: the sum of what every restore point covers; stored: what they added to the
    # repository after deduplication and compression.
    view.raw_bytes = sum(p.bytes for p in points)
    view.stored_bytes = sum(p.bytes_added for p in points)
    backed: dict[date, int] = {}
    added: dict[date, int] = {}
    for p in points:
        day = p.time.astimezone(UTC).date()
        backed[day] = backed.get(day, 0) + p.bytes
        added[day] = added.get(day, 0) + p.bytes_added
    days = _last_days(sorted(backed), 30)
    view.per_day = [Point(d, backed.get(d, 0), human_bytes(backed.get(d, 0))) for d in days]
    total = sum(v for d, v in added.items() if days and d < days[0])
    for d in days:
        total += added.get(d, 0)
        view.growth.append(Point(d, total, human_bytes(total)))
    return view


def _last_days(seen: list[date], n: int) -> list[date]:
    """Every day from the first with data (at most n days back) to the last."""
    if not seen:
        return []
    last = seen[-1]
    first = max(seen[0], last - timedelta(days=n - 1))
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
