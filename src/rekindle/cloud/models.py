"""The catalog: SQLAlchemy 2 models. Alembic migrations (cloud/migrations) create them;
nothing calls ``create_all`` outside tests of the migrations themselves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created: Mapped[datetime]
    #: The organization's repository operator key, sealed with the installation's KEK.
    repo_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    #: Who gets the organization's emails; empty: its enabled organization admins.
    notify_emails: Mapped[list[str]] = mapped_column(default=list)
    #: An enabled server whose agent is not seen for this long raises an alert (hours).
    offline_after_hours: Mapped[int] = mapped_column(Integer, default=24)


class Admin(Base):
    __tablename__ = "admins"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    #: org_admin | group_admin | read_only
    role: Mapped[str] = mapped_column(String(20))
    #: For group admins: the server groups they manage.
    group_ids: Mapped[list[str]] = mapped_column(default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime]


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id", ondelete="CASCADE"))
    #: SHA-256 of the token: a leaked database does not leak usable tokens.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    #: session (from a login, idle timeout) or personal (until revoked or expired)
    kind: Mapped[str] = mapped_column(String(20))
    created: Mapped[datetime]
    last_used: Mapped[datetime]
    expires: Mapped[datetime | None]


class Storage(Base):
    __tablename__ = "storages"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(String(500))
    #: Set by the operator; None: the node's filesystem size (local disks).
    capacity_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: From the last usage check: bytes used and the capacity they are measured against.
    used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    checked: Mapped[datetime | None]
    #: Above the alert threshold at the last check (an alert is raised on the way up only).
    over_threshold: Mapped[bool] = mapped_column(Boolean, default=False)


class BackupPolicy(Base):
    __tablename__ = "backup_policies"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    #: Days of the week it runs, as "mon,tue,...".
    days: Mapped[str] = mapped_column(String(40))
    start_time: Mapped[str] = mapped_column(String(5))  # HH:MM, UTC
    window_hours: Mapped[int] = mapped_column(Integer, default=0)  # 0: no window
    max_retries: Mapped[int] = mapped_column(Integer, default=2)
    retry_interval_min: Mapped[int] = mapped_column(Integer, default=30)
    bandwidth_kib: Mapped[int] = mapped_column(Integer, default=0)  # 0: no cap
    retention: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cold_after_days: Mapped[int] = mapped_column(Integer, default=90)
    #: When the schedule fires next; the scheduler moves it forward atomically.
    next_run: Mapped[datetime | None] = mapped_column(index=True)


class ServerGroup(Base):
    __tablename__ = "server_groups"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("backup_policies.id"))
    storage_id: Mapped[int] = mapped_column(ForeignKey("storages.id"))


class ActivationToken(Base):
    __tablename__ = "activation_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    group_id: Mapped[int] = mapped_column(ForeignKey("server_groups.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime]
    expires: Mapped[datetime]
    uses_left: Mapped[int] = mapped_column(Integer)


class Server(Base):
    __tablename__ = "servers"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("server_groups.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(255))
    os: Mapped[str] = mapped_column(String(100))
    agent_version: Mapped[str] = mapped_column(String(50), default="")
    cert_fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[datetime]
    last_seen: Mapped[datetime | None]
    #: The agent counts as connected until then: pushed forward by every poll, progress
    #: report and result, and reset when the cloud sees its long-poll connection drop.
    connected_until: Mapped[datetime | None]
    free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: From the last retention run on its storage: stored bytes its restore points use, in
    #: warm packs and in packs moved to the archive tier (shared data counts for each server).
    warm_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cold_bytes: Mapped[int | None] = mapped_column(BigInteger)


class BackupSet(Base):
    __tablename__ = "backup_sets"
    __table_args__ = (UniqueConstraint("server_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    include: Mapped[list[str]]
    exclude: Mapped[list[str]] = mapped_column(default=list)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_server_state", "server_id", "state"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"))
    #: backup | restore
    kind: Mapped[str] = mapped_column(String(20))
    #: defreezing (a restore waiting for archived data) | queued | running | succeeded |
    #: partial | failed | stopped | skipped | aborted | cancelled
    state: Mapped[str] = mapped_column(String(20), index=True)
    #: scheduled | manual | retry
    trigger: Mapped[str] = mapped_column(String(20))
    backup_set_id: Mapped[int | None] = mapped_column(ForeignKey("backup_sets.id"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created: Mapped[datetime]
    not_before: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    snapshot_id: Mapped[str | None] = mapped_column(String(64))
    log: Mapped[str] = mapped_column(Text, default="")


class MissedFileRow(Base):
    __tablename__ = "missed_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


class RestorePoint(Base):
    __tablename__ = "restore_points"
    __table_args__ = (UniqueConstraint("org_id", "snapshot_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id"), index=True)
    backup_set_id: Mapped[int | None] = mapped_column(ForeignKey("backup_sets.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    snapshot_id: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime]
    paths: Mapped[list[str]]
    files: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    bytes_added: Mapped[int] = mapped_column(BigInteger)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    time: Mapped[datetime]
    #: info | warning | error
    severity: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(50))
    message: Mapped[str] = mapped_column(Text)
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    #: A warning or error is an open alert until an admin acknowledges it.
    acknowledged: Mapped[datetime | None]
    acknowledged_by: Mapped[int | None] = mapped_column(ForeignKey("admins.id"))


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("admins.id"))
    time: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MaintenanceRun(Base):
    """Retention and prune of one organization's repository on one storage, run by the cloud
    (it holds the keys; the storage node never does)."""

    __tablename__ = "maintenance_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    storage_id: Mapped[int] = mapped_column(ForeignKey("storages.id"))
    #: retention (expire restore points the policy no longer keeps, then prune)
    kind: Mapped[str] = mapped_column(String(20))
    #: queued | running | succeeded | failed
    state: Mapped[str] = mapped_column(String(20), index=True)
    #: scheduled | manual | policy (a retention change)
    trigger: Mapped[str] = mapped_column(String(20))
    created: Mapped[datetime]
    started: Mapped[datetime | None]
    finished: Mapped[datetime | None]
    #: Pushed forward while it runs; a running row whose heartbeat stopped was cut short.
    heartbeat: Mapped[datetime | None]
    removed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_freed: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Bytes this run moved to the archive tier (tiering; 0 on a storage without one).
    bytes_archived: Mapped[int] = mapped_column(BigInteger, default=0)
    report: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)


class StorageTier(Base):
    """An organization's bytes on a storage, warm and in the archive tier, as the last
    retention run measured them."""

    __tablename__ = "storage_tiers"
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    storage_id: Mapped[int] = mapped_column(ForeignKey("storages.id"), primary_key=True)
    warm_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    cold_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    cold_packs: Mapped[int] = mapped_column(Integer, default=0)
    measured: Mapped[datetime]


class OutboundEmail(Base):
    """An email to send (the outbox): written in the transaction of the event it reports,
    delivered by the cloud's mail task with retries, so a mail server that is down loses
    nothing and slows nothing."""

    __tablename__ = "outbound_emails"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    recipients: Mapped[list[str]]
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime]
    #: queued | sent | failed (gave up)
    state: Mapped[str] = mapped_column(String(10), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try: Mapped[datetime]
    sent: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
