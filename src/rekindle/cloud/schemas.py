"""Request and response bodies of the admin API (pydantic; published in the OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LoginIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1000)


class TokenOut(BaseModel):
    token: str


class ApiTokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    days: int = Field(default=90, ge=1, le=3650)


class AdminIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    role: Literal["org_admin", "group_admin", "read_only"]
    group_ids: list[int] = []


class AdminPatch(BaseModel):
    """What to change of an admin; omitted fields stay as they are."""

    role: Literal["org_admin", "group_admin", "read_only"] | None = None
    group_ids: list[int] | None = Field(default=None, max_length=10000)
    disabled: bool | None = None


class AdminCreated(BaseModel):
    id: int
    password: str


class AdminOut(_Out):
    id: int
    email: str
    role: str
    group_ids: list[str]
    disabled: bool


class PolicyPatch(BaseModel):
    """Fields of a backup policy; omitted ones keep their value (or the default)."""

    days: str | None = Field(default=None, max_length=60)
    start_time: str | None = Field(default=None, max_length=5)
    window_hours: int | None = Field(default=None, ge=0, le=168)
    max_retries: int | None = Field(default=None, ge=0, le=100)
    retry_interval_min: int | None = Field(default=None, ge=0, le=10080)
    bandwidth_kib: int | None = Field(default=None, ge=0)
    retention: dict[str, int] | None = None
    cold_after_days: int | None = Field(default=None, ge=1, le=36500)
    #: A retention change that removes restore points kept now needs this (after a look at
    #: POST /policies/ID/retention-preview).
    confirm_removal: bool = False


class PolicyIn(PolicyPatch):
    name: str = Field(min_length=1, max_length=200)


class RetentionIn(BaseModel):
    """Retention rules: within_days, daily, weekly, monthly, yearly (0 or absent: unused)."""

    retention: dict[str, int]


class PolicyOut(_Out):
    id: int
    name: str
    days: str
    start_time: str
    window_hours: int
    max_retries: int
    retry_interval_min: int
    bandwidth_kib: int
    retention: dict[str, Any]
    cold_after_days: int
    next_run: datetime | None


class GroupIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    policy_id: int | None = None
    storage_id: int | None = None


class GroupPatch(BaseModel):
    #: The group's backup policy; null: its servers back up only on demand.
    policy_id: int | None
    #: Needed when the new policy's retention keeps fewer of the group's restore points.
    confirm_removal: bool = False


class GroupOut(_Out):
    id: int
    name: str
    policy_id: int | None
    storage_id: int


class StorageOut(_Out):
    id: int
    name: str
    url: str
    capacity_bytes: int | None
    used_bytes: int | None = None
    total_bytes: int | None = None
    checked: datetime | None = None


class ServerStats(BaseModel):
    id: int
    hostname: str
    restore_points: int
    #: Size of the newest restore point (the data it covers).
    latest_bytes: int
    #: What its restore points added to the repository after deduplication and compression.
    stored_bytes: int
    dedup_ratio: float | None
    #: Stored bytes its restore points use in warm packs and in the archive tier, as the last
    #: retention run measured them (data shared with other servers counts for each).
    warm_bytes: int | None
    cold_bytes: int | None
    last_backup: datetime | None


class StorageStats(BaseModel):
    id: int
    name: str
    used_bytes: int | None
    total_bytes: int | None
    percent: float | None
    checked: datetime | None
    #: The organization's packs there: warm, and moved to the archive tier (last retention run).
    warm_bytes: int | None
    cold_bytes: int | None
    tiers_measured: datetime | None
    dedup_ratio: float | None


class StatsOut(BaseModel):
    #: Sum of what every restore point covers.
    raw_bytes: int
    #: What they take in the repository after deduplication and compression.
    stored_bytes: int
    dedup_ratio: float | None
    #: Sums over the storages measured by a retention run (None before the first).
    warm_bytes: int | None
    cold_bytes: int | None
    restore_points: int
    servers: list[ServerStats]
    storages: list[StorageStats]


class ActivationIn(BaseModel):
    group_id: int
    hours: int = Field(default=24, ge=1, le=24 * 365)
    uses: int = Field(default=1, ge=1, le=10000)


class ActivationOut(BaseModel):
    token: str
    command: str


class ServerOut(_Out):
    id: int
    group_id: int
    hostname: str
    os: str
    agent_version: str
    enabled: bool
    created: datetime
    last_seen: datetime | None
    free_bytes: int | None
    connected: bool = False


class ServerPatch(BaseModel):
    enabled: bool


class BackupSetIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    include: list[str] = Field(min_length=1, max_length=1000)
    exclude: list[str] = Field(default=[], max_length=10000)


class BackupSetPatch(BaseModel):
    """Fields of a backup set to change; omitted ones stay as they are."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    include: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    exclude: list[str] | None = Field(default=None, max_length=10000)


class BackupSetOut(_Out):
    id: int
    server_id: int
    name: str
    include: list[str]
    exclude: list[str]


class BackupNowIn(BaseModel):
    backup_set_id: int | None = None


class RestoreIn(BaseModel):
    restore_point_id: int
    #: Another server of the same OS family; default: the server the data came from.
    target_server_id: int | None = None
    #: Another directory; default: the original location.
    target_path: str | None = Field(default=None, max_length=4096)
    include: list[str] = Field(default=[], max_length=10000)
    existing: Literal["skip", "overwrite", "rename"] = "skip"


class JobOut(_Out):
    id: int
    server_id: int
    kind: str
    state: str
    trigger: str
    backup_set_id: int | None
    attempt: int
    created: datetime
    started: datetime | None
    finished: datetime | None
    window_end: datetime | None
    progress: dict[str, Any]
    error: str | None
    snapshot_id: str | None


class MissedOut(_Out):
    path: str
    reason: str


class JobDetail(JobOut):
    params: dict[str, Any]
    log: str
    missed: list[MissedOut] = []


class RestorePointOut(_Out):
    id: int
    server_id: int
    backup_set_id: int | None
    job_id: int | None
    snapshot_id: str
    time: datetime
    paths: list[str]
    files: int
    bytes: int
    bytes_added: int
    partial: bool


Severity = Literal["info", "warning", "error"]


class EventOut(_Out):
    id: int
    time: datetime
    severity: str
    kind: str
    message: str
    server_id: int | None
    job_id: int | None
    acknowledged: datetime | None = None
    acknowledged_by: int | None = None


class AcknowledgeIn(BaseModel):
    """Which alerts to acknowledge: the listed events, or every open one."""

    event_ids: list[int] = Field(default=[], max_length=10000)
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> AcknowledgeIn:
        if self.all == bool(self.event_ids):
            raise ValueError("give either event_ids or all=true")
        return self


class AcknowledgedOut(BaseModel):
    acknowledged: int


class AuditOut(_Out):
    id: int
    admin_id: int | None
    time: datetime
    action: str
    target: str
    detail: dict[str, Any]


class MaintenanceRunOut(_Out):
    id: int
    storage_id: int
    kind: str
    state: str
    trigger: str
    created: datetime
    started: datetime | None
    finished: datetime | None
    removed: int
    bytes_freed: int
    report: str
    error: str | None


class RetentionRunIn(BaseModel):
    #: One storage; default: every storage the organization uses.
    storage_id: int | None = None


class NotificationsIn(BaseModel):
    #: Who gets the organization's emails; an empty list: its organization admins.
    recipients: list[str] | None = Field(default=None, max_length=100)
    #: Hours without the agent connecting before an enabled server raises an alert.
    offline_after_hours: int | None = Field(default=None, ge=1, le=8760)


class NotificationsOut(BaseModel):
    recipients: list[str]
    #: Who actually gets mail now (the admins when no recipient is set).
    effective_recipients: list[str]
    offline_after_hours: int
    #: False when the installation has no SMTP server configured: nothing is mailed.
    email_enabled: bool


class EmailOut(_Out):
    id: int
    recipients: list[str]
    subject: str
    created: datetime
    state: str
    attempts: int
    sent: datetime | None
    last_error: str | None
