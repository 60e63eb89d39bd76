"""The cloud's service layer: every action of the API (and later the console) is a function
here, taking the acting admin, checking the role, and writing the audit log. Routers only
translate HTTP to these calls.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from rekindle.cloud import mailer, retention, schedule
from rekindle.cloud.catalog import Entry, PlanningError, RestorePlan, StorageCatalog
from rekindle.cloud.db import Database
from rekindle.cloud.models import (
    ActivationToken,
    Admin,
    ApiToken,
    AuditEntry,
    BackupPolicy,
    BackupSet,
    Event,
    Job,
    MissedFileRow,
    Organization,
    OutboundEmail,
    RestorePoint,
    Server,
    ServerGroup,
    Storage,
    StorageTier,
)
from rekindle.cloud.security import (
    ROLES,
    AuthError,
    ForbiddenError,
    KeyEncryptionKey,
    check_password,
    hash_password,
    new_password,
    new_token,
    token_hash,
)
from rekindle.core.clock import Clock
from rekindle.core.errors import RekindleError, UsageError
from rekindle.net import protocol as p
from rekindle.net import tokens
from rekindle.net.pki import CertificateAuthority, cert_pem, fingerprint

log = logging.getLogger(__name__)
T = TypeVar("T")

ACTIVE_JOB_STATES = ("queued", "running")
#: Days a defreeze keeps the thawed copy in warm storage by default (the restore must run
#: by then; REKINDLE_CLOUD_DEFREEZE_DAYS).
DEFREEZE_DAYS = 7
#: A defreeze that has not brought everything back by then (or by 4 times the node's
#: estimate, if longer) fails the restore with an alert, instead of waiting forever.
DEFREEZE_TIMEOUT = timedelta(days=2)
SEVERITIES = ("info", "warning", "error")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
#: Events of these severities are alerts until an admin acknowledges them.
ALERT_SEVERITIES = ("warning", "error")
DEFAULT_RETENTION: dict[str, Any] = {"within_days": 60, "weekly": 24, "monthly": 12, "yearly": 3}


@dataclass(frozen=True)
class _Source:
    storage_url: str
    org_id: int
    repo_key: bytes
    snapshot: str


class NotFoundError(RekindleError):
    """The object does not exist, or the caller may not see it (we do not say which)."""


class ConflictError(RekindleError):
    """The request contradicts the current state (a name taken, a job already finished)."""


@dataclass(frozen=True)
class Actor:
    admin_id: int
    org_id: int
    role: str
    group_ids: frozenset[int] = field(default_factory=frozenset)

    def require_write(self) -> None:
        if self.role == "read_only":
            raise ForbiddenError("your role is read-only")

    def require_org_admin(self) -> None:
        if self.role != "org_admin":
            raise ForbiddenError("only an organization admin may do this")

    def may_see_group(self, group_id: int) -> bool:
        return self.role != "group_admin" or group_id in self.group_ids


class CloudServices:
    """Everything the cloud does, on one database. Thread-safe: one session per call."""

    def __init__(
        self,
        db: Database,
        *,
        kek: KeyEncryptionKey,
        ca: CertificateAuthority,
        token_key: Any,
        clock: Clock,
        default_storage_url: str,
        token_ttl_s: int = 6 * 3600,
        connected_grace_s: float = 15.0,
        session_ttl_s: int = 12 * 3600,
        catalog: StorageCatalog | None = None,
        email: bool = False,
        console_url: str = "",
        defreeze_days: int = DEFREEZE_DAYS,
    ) -> None:
        self.db = db
        self.kek = kek
        self.ca = ca
        self.token_key = token_key
        self.clock = clock
        self.default_storage_url = default_storage_url
        self.token_ttl_s = token_ttl_s
        self.connected_grace_s = connected_grace_s
        self.session_ttl_s = session_ttl_s
        #: Plans restores (reads repositories on storage nodes); None in a cloud without.
        self.catalog = catalog
        #: How long a defreeze's thawed copy stays readable (days).
        self.defreeze_days = defreeze_days
        #: Whether mail-worthy events queue emails (SMTP is configured).
        self.email = email
        #: Where admins reach the console, for links in emails ("" : no link).
        self.console_url = console_url.rstrip("/")
        #: Called with a server id whenever a job is queued for it (wakes its long-poll).
        self.on_job_queued: list[Any] = []
        #: Called with (organization id, policy id) when a policy's retention was changed.
        self.on_retention_changed: list[Any] = []

    # -- helpers ----------------------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock.now()

    def _audit(
        self, s: Session, actor: Actor | None, org_id: int, action: str, target: str, **detail: Any
    ) -> None:
        s.add(
            AuditEntry(
                org_id=org_id,
                admin_id=actor.admin_id if actor else None,
                time=self.now(),
                action=action,
                target=target,
                detail=detail,
            )
        )

    def _event(
        self,
        s: Session,
        org_id: int,
        severity: str,
        kind: str,
        message: str,
        *,
        server_id: int | None = None,
        job_id: int | None = None,
    ) -> None:
        s.add(
            Event(
                org_id=org_id,
                time=self.now(),
                severity=severity,
                kind=kind,
                message=message,
                server_id=server_id,
                job_id=job_id,
            )
        )
        if self.email and kind in mailer.MAILED_EVENTS:
            lines = [message, "", f"When: {self.now():%Y-%m-%d %H:%M:%S} UTC"]
            server = s.get(Server, server_id) if server_id is not None else None
            if server is not None:
                lines.append(f"Server: {server.hostname}")
            if job_id is not None:
                lines.append(f"Job: {job_id}")
            if self.console_url:
                lines += ["", f"Alerts: {self.console_url}/ui/alerts"]
            subject = mailer.MAILED_EVENTS[kind]
            if server is not None:
                subject += f" ({server.hostname})"
            mailer.enqueue(s, org_id, self.now(), subject, "\n".join(lines) + "\n")

    def _get(self, s: Session, model: Any, obj_id: int, actor: Actor) -> Any:
        obj = s.get(model, obj_id)
        if obj is None or obj.org_id != actor.org_id:
            raise NotFoundError(f"{model.__tablename__[:-1].replace('_', ' ')} {obj_id} not found")
        group_id = getattr(obj, "group_id", None)
        if model is ServerGroup:
            group_id = obj.id
        if group_id is not None and not actor.may_see_group(group_id):
            raise NotFoundError(f"{model.__tablename__[:-1].replace('_', ' ')} {obj_id} not found")
        return obj

    def _server(self, s: Session, server_id: int, actor: Actor) -> Server:
        server: Server = self._get(s, Server, server_id, actor)
        return server

    def _wake(self, server_id: int) -> None:
        for cb in self.on_job_queued:
            cb(server_id)

    def is_connected(self, server: Server) -> bool:
        return (
            server.enabled
            and server.connected_until is not None
            and self.now() <= server.connected_until
        )

    def _seen(self, s: Session, server_id: int, for_s: float) -> Server:
        server = _must(s.get(Server, server_id))
        server.last_seen = self.now()
        server.connected_until = self.now() + timedelta(seconds=for_s)
        return server

    def poll_dropped(self, server_id: int, connected_until: datetime) -> None:
        """A long-poll's connection dropped: the agent is gone, and a Backup Now from now on
        waits in the queue. Only if nothing newer (the agent's next poll) came since."""
        with self.db.session() as s:
            s.execute(
                update(Server)
                .where(Server.id == server_id, Server.connected_until == connected_until)
                .values(connected_until=self.now())
                .execution_options(synchronize_session=False)
            )

    # -- organizations and admins -----------------------------------------------------------
    def create_organization(
        self, name: str, admin_email: str, admin_password: str | None = None
    ) -> tuple[int, str]:
        """A new organization with its first admin, default storage, policy and group.
        Returns (org id, the admin's password)."""
        password = admin_password or new_password()
        with self.db.session() as s:
            if s.scalar(select(Organization).where(Organization.name == name)):
                raise ConflictError(f"organization {name!r} exists")
            if s.scalar(select(Admin).where(Admin.email == admin_email)):
                raise ConflictError(f"an admin with email {admin_email!r} exists")
            org = Organization(name=name, created=self.now(), repo_key_sealed=b"")
            s.add(org)
            s.flush()
            org.repo_key_sealed = self.kek.seal(os.urandom(32), f"org:{org.id}".encode())
            storage = s.scalar(select(Storage).order_by(Storage.id))
            if storage is None:
                storage = Storage(name="default", url=self.default_storage_url)
                s.add(storage)
                s.flush()
            admin = Admin(
                org_id=org.id,
                email=admin_email,
                password_hash=hash_password(password),
                role="org_admin",
                group_ids=[],
                created=self.now(),
            )
            s.add(admin)
            policy = BackupPolicy(
                org_id=org.id,
                name="default",
                days="daily",
                start_time="22:00",
                window_hours=0,
                max_retries=2,
                retry_interval_min=30,
                bandwidth_kib=0,
                retention=dict(DEFAULT_RETENTION),
                cold_after_days=90,
                next_run=schedule.next_fire("daily", "22:00", self.now()),
            )
            s.add(policy)
            s.flush()
            s.add(
                ServerGroup(
                    org_id=org.id, name="default", policy_id=policy.id, storage_id=storage.id
                )
            )
            self._audit(s, None, org.id, "organization.create", name, admin=admin_email)
            return org.id, password

    def organization_count(self) -> int:
        with self.db.session() as s:
            return len(s.scalars(select(Organization.id)).all())

    def login(self, email: str, password: str) -> str:
        with self.db.session() as s:
            admin = s.scalar(select(Admin).where(Admin.email == email))
            if admin is None or admin.disabled or not check_password(admin.password_hash, password):
                raise AuthError("wrong email or password")
            token = self._issue_token(s, admin.id, "login", "session", days=None)
            self._audit(s, Actor(admin.id, admin.org_id, admin.role), admin.org_id, "login", email)
            return token

    def login_actor(self, actor: Actor) -> str:
        """A session for an admin the caller already authenticated (the all-in-one start)."""
        with self.db.session() as s:
            return self._issue_token(s, actor.admin_id, "all-in-one", "personal", days=30)

    def _issue_token(
        self, s: Session, admin_id: int, name: str, kind: str, *, days: int | None
    ) -> str:
        """A new bearer token; only its hash is stored."""
        token = new_token("rks" if kind == "session" else "rkp")
        now = self.now()
        s.add(
            ApiToken(
                admin_id=admin_id,
                token_hash=token_hash(token),
                name=name,
                kind=kind,
                created=now,
                last_used=now,
                expires=None if days is None else now + timedelta(days=days),
            )
        )
        return token

    def list_admins_by_email(self, email: str) -> Admin:
        with self.db.session() as s:
            admin = s.scalar(select(Admin).where(Admin.email == email))
            if admin is None:
                raise NotFoundError(f"no admin {email}")
            return admin

    def create_api_token(self, actor: Actor, name: str, days: int) -> str:
        with self.db.session() as s:
            token = self._issue_token(s, actor.admin_id, name, "personal", days=days)
            self._audit(s, actor, actor.org_id, "api_token.create", name, days=days)
        return token

    def logout(self, token: str) -> None:
        with self.db.session() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
            if row is not None:
                s.delete(row)

    def authenticate(self, token: str) -> Actor:
        with self.db.session() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
            now = self.now()
            if row is None:
                raise AuthError("not logged in, or the token is unknown")
            if row.expires is not None and now > row.expires:
                raise AuthError("the token has expired")
            if row.kind == "session" and (now - row.last_used).total_seconds() > self.session_ttl_s:
                s.delete(row)
                raise AuthError("the session timed out: log in again")
            admin = s.get(Admin, row.admin_id)
            if admin is None or admin.disabled:
                raise AuthError("this admin is disabled")
            if (now - row.last_used).total_seconds() > 60:
                row.last_used = now
            return Actor(
                admin.id, admin.org_id, admin.role, frozenset(int(g) for g in admin.group_ids)
            )

    def create_admin(
        self, actor: Actor, email: str, role: str, group_ids: list[int]
    ) -> tuple[int, str]:
        actor.require_org_admin()
        if role not in ROLES:
            raise UsageError(f"role must be one of {', '.join(ROLES)}")
        password = new_password()
        with self.db.session() as s:
            if s.scalar(select(Admin).where(Admin.email == email)):
                raise ConflictError(f"an admin with email {email!r} exists")
            for g in group_ids:
                self._get(s, ServerGroup, g, actor)
            admin = Admin(
                org_id=actor.org_id,
                email=email,
                password_hash=hash_password(password),
                role=role,
                group_ids=[str(g) for g in group_ids],
                created=self.now(),
            )
            s.add(admin)
            s.flush()
            self._audit(s, actor, actor.org_id, "admin.create", email, role=role)
            return admin.id, password

    def update_admin(
        self,
        actor: Actor,
        admin_id: int,
        *,
        role: str | None = None,
        group_ids: list[int] | None = None,
        disabled: bool | None = None,
    ) -> Admin:
        """Change an admin's role, groups, or disable them (their sessions and API tokens stop
        working at once, as every request reads the admin). The organization always keeps an
        enabled organization admin, so nobody locks everyone out."""
        actor.require_org_admin()
        if role is not None and role not in ROLES:
            raise UsageError(f"role must be one of {', '.join(ROLES)}")
        with self.db.session() as s:
            # Changes to an organization's admins one at a time (on PostgreSQL two demotions
            # at once could otherwise both see the other as the remaining org admin).
            s.execute(
                select(Organization.id).where(Organization.id == actor.org_id).with_for_update()
            )
            admin = s.get(Admin, admin_id)
            if admin is None or admin.org_id != actor.org_id:
                raise NotFoundError(f"admin {admin_id} not found")
            for g in group_ids or []:
                self._get(s, ServerGroup, g, actor)
            was_org_admin = admin.role == "org_admin" and not admin.disabled
            if role is not None:
                admin.role = role
            if group_ids is not None:
                admin.group_ids = [str(g) for g in group_ids]
            if disabled is not None:
                admin.disabled = disabled
            if was_org_admin and (admin.role != "org_admin" or admin.disabled):
                others = s.scalar(
                    select(func.count())
                    .select_from(Admin)
                    .where(
                        Admin.org_id == actor.org_id,
                        Admin.role == "org_admin",
                        Admin.disabled.is_(False),
                        Admin.id != admin.id,
                    )
                )
                if not others:
                    raise ConflictError(
                        f"{admin.email} is the last enabled organization admin: "
                        "make another admin an organization admin first"
                    )
            self._audit(
                s,
                actor,
                actor.org_id,
                "admin.update",
                admin.email,
                role=admin.role,
                groups=admin.group_ids,
                disabled=admin.disabled,
            )
            return admin

    def list_admins(self, actor: Actor) -> list[Admin]:
        with self.db.session() as s:
            return list(s.scalars(select(Admin).where(Admin.org_id == actor.org_id)).all())

    # -- groups, policies, storages -----------------------------------------------------------
    def add_storage(self, name: str, url: str, capacity_bytes: int | None = None) -> Storage:
        """Register a storage node (an operator's action: storages serve every organization).
        Its TLS certificate must come from this cloud's CA (`storage-credentials`)."""
        if not url.startswith("https://") or len(url) > 500:
            raise UsageError("a storage node's URL is https://HOST:PORT")
        _check_capacity(capacity_bytes)
        with self.db.session() as s:
            if s.scalar(select(Storage).where(Storage.name == name)):
                raise ConflictError(f"a storage named {name!r} exists")
            storage = Storage(name=name, url=url.rstrip("/"), capacity_bytes=capacity_bytes)
            s.add(storage)
            s.flush()
            return storage

    def set_storage_capacity(self, storage_id: int, capacity_bytes: int | None) -> Storage:
        """The capacity the storage-full alert measures against (an operator's action; None:
        the node's filesystem)."""
        _check_capacity(capacity_bytes)
        with self.db.session() as s:
            storage = s.get(Storage, storage_id)
            if storage is None:
                raise NotFoundError(f"storage {storage_id} not found")
            storage.capacity_bytes = capacity_bytes
            storage.over_threshold = False  # measured afresh against the new capacity
            return storage

    def statistics(self, actor: Actor) -> dict[str, Any]:
        """What the organization has stored: in all, per server and per storage. Warm and cold
        bytes are those the last retention run measured on each storage (None before one
        ran); `stored_bytes` sums what each backup added."""
        points = self.list_restore_points(actor)
        raw = sum(p.bytes for p in points)
        stored = sum(p.bytes_added for p in points)
        storages = self.storage_usage(actor)
        measured = [x for x in storages if x["warm_bytes"] is not None]
        by_server: dict[int, list[RestorePoint]] = {}
        for rp in points:  # newest first
            by_server.setdefault(rp.server_id, []).append(rp)
        servers = []
        for server in self.list_servers(actor):
            mine = by_server.get(server.id, [])
            added = sum(p.bytes_added for p in mine)
            servers.append(
                {
                    "id": server.id,
                    "hostname": server.hostname,
                    "restore_points": len(mine),
                    "latest_bytes": mine[0].bytes if mine else 0,
                    "stored_bytes": added,
                    "dedup_ratio": _ratio(sum(p.bytes for p in mine), added),
                    "warm_bytes": server.warm_bytes,
                    "cold_bytes": server.cold_bytes,
                    "last_backup": mine[0].time if mine else None,
                }
            )
        return {
            "raw_bytes": raw,
            "stored_bytes": stored,
            "dedup_ratio": _ratio(raw, stored),
            "warm_bytes": sum(x["warm_bytes"] for x in measured) if measured else None,
            "cold_bytes": sum(x["cold_bytes"] for x in measured) if measured else None,
            "restore_points": len(points),
            "servers": servers,
            "storages": storages,
        }

    def storage_usage(self, actor: Actor) -> list[dict[str, Any]]:
        """The storages the organization uses, as last measured (Maintenance.check_storages)."""
        with self.db.session() as s:
            used_ids = set(
                s.scalars(
                    select(ServerGroup.storage_id).where(ServerGroup.org_id == actor.org_id)
                ).all()
            )
            tiers = {
                t.storage_id: t
                for t in s.scalars(select(StorageTier).where(StorageTier.org_id == actor.org_id))
            }
            raw: dict[int, int] = {}
            for rp_bytes, storage_id in s.execute(
                select(RestorePoint.bytes, ServerGroup.storage_id)
                .join(Server, RestorePoint.server_id == Server.id)
                .join(ServerGroup, Server.group_id == ServerGroup.id)
                .where(RestorePoint.org_id == actor.org_id)
            ):
                raw[storage_id] = raw.get(storage_id, 0) + rp_bytes
            out = []
            for x in s.scalars(select(Storage).order_by(Storage.id)):
                if x.id not in used_ids:
                    continue
                tier = tiers.get(x.id)
                out.append(
                    {
                        "id": x.id,
                        "name": x.name,
                        "warm_bytes": tier.warm_bytes if tier else None,
                        "cold_bytes": tier.cold_bytes if tier else None,
                        "tiers_measured": tier.measured if tier else None,
                        "dedup_ratio": _ratio(
                            raw.get(x.id, 0), tier.warm_bytes + tier.cold_bytes if tier else 0
                        ),
                        **self._capacity(x),
                    }
                )
            return out

    @staticmethod
    def _capacity(x: Storage) -> dict[str, Any]:
        return {
            "used_bytes": x.used_bytes,
            "total_bytes": x.total_bytes,
            "percent": round(100 * x.used_bytes / x.total_bytes, 1)
            if x.used_bytes is not None and x.total_bytes
            else None,
            "checked": x.checked,
        }

    def list_storages(self, actor: Actor) -> list[Storage]:
        del actor
        with self.db.session() as s:
            return list(s.scalars(select(Storage).order_by(Storage.id)).all())

    def create_policy(self, actor: Actor, name: str, **fields: Any) -> BackupPolicy:
        actor.require_org_admin()  # a policy may serve groups a group admin cannot see
        with self.db.session() as s:
            if s.scalar(
                select(BackupPolicy).where(
                    BackupPolicy.org_id == actor.org_id, BackupPolicy.name == name
                )
            ):
                raise ConflictError(f"a backup policy named {name!r} exists")
            policy = BackupPolicy(org_id=actor.org_id, name=name, **policy_fields(fields))
            policy.next_run = schedule.next_fire(policy.days, policy.start_time, self.now())
            s.add(policy)
            s.flush()
            self._audit(s, actor, actor.org_id, "policy.create", name, **_jsonable(fields))
            return policy

    def update_policy(
        self, actor: Actor, policy_id: int, *, confirm_removal: bool = False, **fields: Any
    ) -> BackupPolicy:
        """Change a policy. A retention change that removes restore points the saved rules
        keep is refused until the admin has seen them (`retention_preview`) and confirms;
        once saved, retention runs at once on the storages the policy's groups use."""
        actor.require_org_admin()
        checked = policy_fields(fields, partial=True)
        with self.db.session() as s:
            policy: BackupPolicy = self._get(s, BackupPolicy, policy_id, actor)
            doomed: list[RestorePoint] = []
            if "retention" in checked:
                doomed = retention.newly_expired(s, actor.org_id, policy.id, checked["retention"])
                if doomed and not confirm_removal:
                    raise ConflictError(
                        f"the new retention removes {len(doomed)} restore point(s) that are "
                        "kept now; look at them (retention preview) and confirm the removal"
                    )
            for k, v in checked.items():
                setattr(policy, k, v)
            policy.next_run = schedule.next_fire(policy.days, policy.start_time, self.now())
            self._audit(
                s,
                actor,
                actor.org_id,
                "policy.update",
                policy.name,
                removes=len(doomed),
                **_jsonable(fields),
            )
        if "retention" in checked:
            for hook in self.on_retention_changed:
                hook(actor.org_id, policy_id)
        return policy

    def retention_preview(
        self, actor: Actor, policy_id: int, new_retention: dict[str, Any]
    ) -> list[RestorePoint]:
        """The restore points saving `new_retention` would remove that are kept now."""
        rules = policy_fields({"retention": new_retention}, partial=True)["retention"]
        with self.db.session() as s:
            policy: BackupPolicy = self._get(s, BackupPolicy, policy_id, actor)
            doomed = retention.newly_expired(s, actor.org_id, policy.id, rules)
            visible = self._visible_servers(s, actor)
            return [rp for rp in doomed if rp.server_id in visible]

    def remove_policy(self, actor: Actor, policy_id: int) -> None:
        """Delete a policy no server group uses (a group without a policy backs up only on
        demand, so removing one in use would silently stop backups)."""
        actor.require_org_admin()
        with self.db.session() as s:
            policy: BackupPolicy = self._get(s, BackupPolicy, policy_id, actor)
            users = s.scalars(select(ServerGroup.name).where(ServerGroup.policy_id == policy.id))
            names = sorted(users.all())
            if names:
                raise ConflictError(
                    f"policy {policy.name!r} is used by server group(s) {', '.join(names)}: "
                    "give them another policy first"
                )
            name = policy.name
            s.delete(policy)
            self._audit(s, actor, actor.org_id, "policy.remove", name)

    def list_policies(self, actor: Actor) -> list[BackupPolicy]:
        with self.db.session() as s:
            return list(
                s.scalars(select(BackupPolicy).where(BackupPolicy.org_id == actor.org_id)).all()
            )

    def create_group(
        self, actor: Actor, name: str, policy_id: int | None, storage_id: int | None
    ) -> ServerGroup:
        actor.require_org_admin()
        with self.db.session() as s:
            if s.scalar(
                select(ServerGroup).where(
                    ServerGroup.org_id == actor.org_id, ServerGroup.name == name
                )
            ):
                raise ConflictError(f"a server group named {name!r} exists")
            if policy_id is not None:
                self._get(s, BackupPolicy, policy_id, actor)
            if storage_id is None:
                first = s.scalar(select(Storage).order_by(Storage.id))
                if first is None:
                    raise ConflictError("no storage is registered")
                storage_id = first.id
            elif s.get(Storage, storage_id) is None:
                raise NotFoundError(f"storage {storage_id} not found")
            group = ServerGroup(
                org_id=actor.org_id, name=name, policy_id=policy_id, storage_id=storage_id
            )
            s.add(group)
            s.flush()
            self._audit(s, actor, actor.org_id, "group.create", name, policy=policy_id)
            return group

    def set_group_policy(
        self,
        actor: Actor,
        group_id: int,
        policy_id: int | None,
        *,
        confirm_removal: bool = False,
    ) -> ServerGroup:
        """Give a group another policy (None: back up only on demand). Its next scheduled
        backups follow the new policy; running jobs keep the window they started with. When
        the new policy's retention keeps less, the change is refused until confirmed, as for a
        retention change."""
        actor.require_org_admin()
        with self.db.session() as s:
            group: ServerGroup = self._get(s, ServerGroup, group_id, actor)
            if policy_id is not None:
                self._get(s, BackupPolicy, policy_id, actor)
            before = {rp.id for rp in retention.expired(s, actor.org_id)}
            group.policy_id = policy_id
            s.flush()
            doomed = [rp for rp in retention.expired(s, actor.org_id) if rp.id not in before]
            if doomed and not confirm_removal:
                raise ConflictError(
                    f"the new policy's retention removes {len(doomed)} restore point(s) of "
                    f"group {group.name} that are kept now; confirm the removal"
                )
            self._audit(
                s,
                actor,
                actor.org_id,
                "group.set_policy",
                group.name,
                policy=policy_id,
                removes=len(doomed),
            )
        if doomed:
            for hook in self.on_retention_changed:
                hook(actor.org_id, policy_id)
        return group

    def list_groups(self, actor: Actor) -> list[ServerGroup]:
        with self.db.session() as s:
            rows = s.scalars(select(ServerGroup).where(ServerGroup.org_id == actor.org_id)).all()
            return [g for g in rows if actor.may_see_group(g.id)]

    def create_activation_token(
        self, actor: Actor, group_id: int, hours: int = 24, uses: int = 1
    ) -> str:
        actor.require_write()
        token = new_token("rka")
        with self.db.session() as s:
            group: ServerGroup = self._get(s, ServerGroup, group_id, actor)
            s.add(
                ActivationToken(
                    org_id=actor.org_id,
                    group_id=group.id,
                    token_hash=token_hash(token),
                    created=self.now(),
                    expires=self.now() + timedelta(hours=hours),
                    uses_left=uses,
                )
            )
            self._audit(s, actor, actor.org_id, "activation_token.create", group.name, uses=uses)
        return token

    # -- servers and backup sets ------------------------------------------------------------
    def list_servers(self, actor: Actor, group_id: int | None = None) -> list[Server]:
        with self.db.session() as s:
            q = select(Server).where(Server.org_id == actor.org_id)
            if group_id is not None:
                q = q.where(Server.group_id == group_id)
            return [
                x for x in s.scalars(q.order_by(Server.id)).all() if actor.may_see_group(x.group_id)
            ]

    def get_server(self, actor: Actor, server_id: int) -> Server:
        with self.db.session() as s:
            return self._server(s, server_id, actor)

    def remove_server(self, actor: Actor, server_id: int) -> None:
        """Forget a disabled server: its backup sets, jobs and restore points leave the
        catalog; events keep their text without the link. The data it backed up stays in the
        organization's repository (other servers may share it) until it is pruned."""
        actor.require_write()
        with self.db.session() as s:
            server = self._server(s, server_id, actor)
            if server.enabled:
                raise ConflictError(f"disable {server.hostname} before removing it")
            busy = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.server_id == server_id, Job.state == "running")
            )
            if busy:
                raise ConflictError(f"{server.hostname} is running a job: cancel it first")
            jobs = select(Job.id).where(Job.server_id == server_id)
            s.execute(
                update(Event)
                .where(or_(Event.server_id == server_id, Event.job_id.in_(jobs)))
                .values(server_id=None, job_id=None)
            )
            s.execute(delete(MissedFileRow).where(MissedFileRow.job_id.in_(jobs)))
            s.execute(delete(RestorePoint).where(RestorePoint.server_id == server_id))
            s.execute(delete(Job).where(Job.server_id == server_id))
            s.execute(delete(BackupSet).where(BackupSet.server_id == server_id))
            hostname = server.hostname
            s.delete(server)
            self._audit(s, actor, actor.org_id, "server.remove", hostname)
            self._event(
                s,
                actor.org_id,
                "info",
                "server.removed",
                f"server {hostname} was removed; its data stays in the repository until pruned",
            )

    def set_server_enabled(self, actor: Actor, server_id: int, enabled: bool) -> Server:
        actor.require_write()
        with self.db.session() as s:
            server = self._server(s, server_id, actor)
            server.enabled = enabled
            action = "server.enable" if enabled else "server.disable"
            self._audit(s, actor, actor.org_id, action, server.hostname)
            self._event(
                s,
                actor.org_id,
                "info",
                action,
                f"server {server.hostname} {action.split('.')[1]}d",
                server_id=server.id,
            )
            return server

    def create_backup_set(
        self, actor: Actor, server_id: int, name: str, include: list[str], exclude: list[str]
    ) -> BackupSet:
        actor.require_write()
        _check_paths(include, "include")
        _check_paths(exclude, "exclude", absolute=False)
        with self.db.session() as s:
            server = self._server(s, server_id, actor)
            if s.scalar(
                select(BackupSet).where(BackupSet.server_id == server.id, BackupSet.name == name)
            ):
                raise ConflictError(f"server {server.hostname} already has a backup set {name!r}")
            bs = BackupSet(
                org_id=actor.org_id,
                server_id=server.id,
                name=name,
                include=include,
                exclude=exclude,
            )
            s.add(bs)
            s.flush()
            self._audit(s, actor, actor.org_id, "backup_set.create", name, server=server.hostname)
            return bs

    def _backup_set(self, s: Session, backup_set_id: int, actor: Actor) -> BackupSet:
        bs = s.get(BackupSet, backup_set_id)
        if bs is None or bs.org_id != actor.org_id:
            raise NotFoundError(f"backup set {backup_set_id} not found")
        self._server(s, bs.server_id, actor)  # a group admin sees only their groups' sets
        return bs

    def update_backup_set(
        self,
        actor: Actor,
        backup_set_id: int,
        *,
        name: str | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> BackupSet:
        """Change a backup set; the next backup reads the new paths (restore points already
        made keep what they hold)."""
        actor.require_write()
        if include is not None:
            _check_paths(include, "include")
        if exclude is not None:
            _check_paths(exclude, "exclude", absolute=False)
        with self.db.session() as s:
            bs = self._backup_set(s, backup_set_id, actor)
            if name is not None and name != bs.name:
                if not name.strip():
                    raise UsageError("a backup set needs a name")
                if s.scalar(
                    select(BackupSet).where(
                        BackupSet.server_id == bs.server_id, BackupSet.name == name
                    )
                ):
                    raise ConflictError(f"the server already has a backup set {name!r}")
                bs.name = name
            if include is not None:
                bs.include = include
            if exclude is not None:
                bs.exclude = exclude
            self._audit(
                s,
                actor,
                actor.org_id,
                "backup_set.update",
                bs.name,
                include=bs.include,
                exclude=bs.exclude,
            )
            return bs

    def remove_backup_set(self, actor: Actor, backup_set_id: int) -> None:
        """Stop backing up a backup set. Its restore points stay (and stay restorable) until
        retention removes them; a queued or running job of the set must end first."""
        actor.require_write()
        with self.db.session() as s:
            bs = self._backup_set(s, backup_set_id, actor)
            busy = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.backup_set_id == bs.id, Job.state.in_(ACTIVE_JOB_STATES))
            )
            if busy:
                raise ConflictError(
                    f"backup set {bs.name!r} has a queued or running job: cancel it first"
                )
            s.execute(update(Job).where(Job.backup_set_id == bs.id).values(backup_set_id=None))
            s.execute(
                update(RestorePoint)
                .where(RestorePoint.backup_set_id == bs.id)
                .values(backup_set_id=None)
            )
            name = bs.name
            s.delete(bs)
            self._audit(s, actor, actor.org_id, "backup_set.remove", name)

    def list_backup_sets(self, actor: Actor, server_id: int) -> list[BackupSet]:
        with self.db.session() as s:
            self._server(s, server_id, actor)
            return list(s.scalars(select(BackupSet).where(BackupSet.server_id == server_id)).all())

    # -- jobs -----------------------------------------------------------------------------------
    def backup_now(self, actor: Actor, server_id: int, backup_set_id: int | None) -> Job:
        actor.require_write()
        with self.db.session() as s:
            server = self._server(s, server_id, actor)
            if not server.enabled:
                raise ConflictError(f"server {server.hostname} is disabled")
            sets = s.scalars(select(BackupSet).where(BackupSet.server_id == server.id)).all()
            chosen = [b for b in sets if backup_set_id is None or b.id == backup_set_id]
            if not chosen:
                raise NotFoundError("the server has no such backup set")
            bs = chosen[0]
            job = self._queue_backup(s, server, bs, "manual", window_end=None)
            self._audit(
                s, actor, actor.org_id, "job.backup_now", server.hostname, backup_set=bs.name
            )
            if not self.is_connected(server):
                self._event(
                    s,
                    server.org_id,
                    "info",
                    "job.queued",
                    f"Backup Now for {server.hostname} is queued: the agent is not connected; "
                    "it runs as soon as the agent connects",
                    server_id=server.id,
                    job_id=job.id,
                )
        self._wake(server_id)
        return job

    def _queue_backup(
        self,
        s: Session,
        server: Server,
        bs: BackupSet,
        trigger: str,
        *,
        window_end: datetime | None,
        attempt: int = 1,
        not_before: datetime | None = None,
    ) -> Job:
        return self._queue(
            s,
            server,
            "backup",
            trigger,
            backup_set_id=bs.id,
            params={},
            window_end=window_end,
            attempt=attempt,
            not_before=not_before,
        )

    def _queue(
        self,
        s: Session,
        server: Server,
        kind: str,
        trigger: str,
        *,
        backup_set_id: int | None,
        params: dict[str, Any],
        window_end: datetime | None = None,
        attempt: int = 1,
        not_before: datetime | None = None,
    ) -> Job:
        """A new queued job (flushed, so it has its id)."""
        job = Job(
            org_id=server.org_id,
            server_id=server.id,
            kind=kind,
            state="queued",
            trigger=trigger,
            backup_set_id=backup_set_id,
            params=params,
            attempt=attempt,
            created=self.now(),
            not_before=not_before,
            window_end=window_end,
            progress={},
            log="",
        )
        s.add(job)
        s.flush()
        return job

    def start_restore(
        self,
        actor: Actor,
        restore_point_id: int,
        *,
        target_server_id: int | None,
        target_path: str | None,
        include: list[str],
        existing: str,
    ) -> Job:
        """Restore a restore point, whole or `include` paths, to the original location
        (no target path), to another path, or to another server of the same OS family."""
        actor.require_write()
        if existing not in ("skip", "overwrite", "rename"):
            raise UsageError("existing must be skip, overwrite or rename")
        if target_path is not None:
            _check_paths([target_path], "target")
        with self.db.session() as s:
            rp: RestorePoint = self._get(s, RestorePoint, restore_point_id, actor)
            source = self._server(s, rp.server_id, actor)
            target = self._server(s, target_server_id or rp.server_id, actor)
            if _os_family(target.os) != _os_family(source.os):
                raise ConflictError(
                    f"cannot restore a {source.os} restore point to {target.hostname} "
                    f"({target.os}): choose a server of the same OS family"
                )
            if not target.enabled:
                raise ConflictError(f"server {target.hostname} is disabled")
            src = self._source_of(s, rp, source)
        # Outside the transaction: planning reads the repository over the network.
        plan = self._catalog().plan_restore(
            src.storage_url, src.org_id, src.repo_key, src.snapshot, include
        )
        with self.db.session() as s:
            rp = self._get(s, RestorePoint, restore_point_id, actor)
            target = self._server(s, target_server_id or rp.server_id, actor)
            params = {
                "restore_point_id": rp.id,
                "snapshot": rp.snapshot_id,
                "target": target_path or "/",
                "original": target_path is None,
                "original_paths": rp.paths,
                "include": include,
                "existing": existing,
                "storage_url": src.storage_url,
                "grant": plan.grant,
                "files": plan.files,
                "bytes": plan.bytes,
            }
            job = self._queue(
                s, target, "restore", "manual", backup_set_id=rp.backup_set_id, params=params
            )
            if plan.archived:
                # A cold restore point: the archived packs it needs are thawed first.
                job.state = "defreezing"
                job.params = {
                    **params,
                    "archived": plan.archived,
                    "archived_bytes": plan.archived_bytes,
                    "thaw_estimate_s": plan.thaw_estimate_s,
                }
                job.progress = {"thawed": 0, "to_thaw": len(plan.archived)}
                self._event(
                    s,
                    actor.org_id,
                    "info",
                    "defreeze.started",
                    f"restore job {job.id} to {target.hostname} needs "
                    f"{len(plan.archived)} pack(s) ({plan.archived_bytes} bytes) from archive "
                    f"storage: a defreeze is in progress; it takes about "
                    f"{duration_words(plan.thaw_estimate_s)}, and the restore starts when the data "
                    "is back",
                    server_id=target.id,
                    job_id=job.id,
                )
            self._audit(
                s,
                actor,
                actor.org_id,
                "job.restore",
                target.hostname,
                restore_point=rp.snapshot_id,
                destination=target_path or "(original location)",
            )
            if job.state == "queued" and not self.is_connected(target):
                self._event(
                    s,
                    actor.org_id,
                    "info",
                    "job.queued",
                    f"restore to {target.hostname} is queued until its agent connects",
                    server_id=target.id,
                    job_id=job.id,
                )
        if plan.archived:
            self.advance_defreezes(job.id)  # asks the node to start thawing
        else:
            self._wake(target.id)
        return job

    def _defreeze_failed(self, job_id: int, reason: str) -> None:
        with self.db.session() as s:
            moved = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "defreezing")
                .values(state="failed", finished=self.now(), error=reason)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                return
            job = _must(s.get(Job, job_id))
            self._event(
                s,
                job.org_id,
                "error",
                "defreeze.failed",
                f"restore job {job_id}: {reason}; start the restore again",
                server_id=job.server_id,
                job_id=job_id,
            )

    def advance_defreezes(self, job_id: int | None = None) -> int:
        """Move restores waiting for a defreeze along: ask the node to thaw their packs
        (idempotent, so a node that was down is asked again) and queue each restore whose
        packs are all back in warm storage. Returns how many were queued."""
        with self.db.session() as s:
            q = select(Job).where(Job.state == "defreezing")
            if job_id is not None:
                q = q.where(Job.id == job_id)
            waiting = [(j.id, j.org_id, j.created, dict(j.params)) for j in s.scalars(q)]
        ready = 0
        for jid, org_id, created, params in waiting:
            estimate = float(params.get("thaw_estimate_s") or 0)
            limit = max(DEFREEZE_TIMEOUT, timedelta(seconds=4 * estimate))
            try:
                states = self._catalog().thaw(
                    str(params["storage_url"]),
                    org_id,
                    list(params["archived"]),
                    self.defreeze_days,
                )
            except RekindleError as e:
                log.warning("defreeze of job %d: %s", jid, e)
                if self.now() - created > limit:
                    self._defreeze_failed(jid, f"the defreeze did not finish in time: {e}")
                continue
            thawed = sum(1 for state in states.values() if state in ("thawed", "warm"))
            if thawed < len(states) and self.now() - created > limit:
                self._defreeze_failed(
                    jid,
                    f"the defreeze did not finish in time: {thawed} of {len(states)} packs "
                    "came back from archive storage",
                )
                continue
            with self.db.session() as s:
                # compare-and-set: a cancel (or another cloud process) may have come first
                moved = s.execute(
                    update(Job)
                    .where(Job.id == jid, Job.state == "defreezing")
                    .values(
                        progress={"thawed": thawed, "to_thaw": len(states)},
                        state="queued" if thawed == len(states) else "defreezing",
                    )
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount != 1 or thawed < len(states):  # type: ignore[attr-defined]
                    continue
                job = _must(s.get(Job, jid))
                server = _must(s.get(Server, job.server_id))
                self._event(
                    s,
                    org_id,
                    "info",
                    "defreeze.ready",
                    f"the data of restore job {jid} is back from archive storage; the restore "
                    f"to {server.hostname} starts as soon as its agent takes it (the thawed "
                    f"copy stays {self.defreeze_days} days)",
                    server_id=server.id,
                    job_id=jid,
                )
                server_id = server.id
            ready += 1
            self._wake(server_id)
        return ready

    def list_jobs(
        self, actor: Actor, server_id: int | None = None, state: str | None = None, limit: int = 100
    ) -> list[Job]:
        with self.db.session() as s:
            q = select(Job).where(Job.org_id == actor.org_id)
            if server_id is not None:
                q = q.where(Job.server_id == server_id)
            if state is not None:
                q = q.where(Job.state == state)
            jobs = s.scalars(q.order_by(Job.id.desc()).limit(limit)).all()
            visible = self._visible_servers(s, actor)
            return [j for j in jobs if j.server_id in visible]

    def get_job(self, actor: Actor, job_id: int) -> tuple[Job, list[MissedFileRow]]:
        with self.db.session() as s:
            job: Job = self._get(s, Job, job_id, actor)
            self._server(s, job.server_id, actor)
            missed = list(s.scalars(select(MissedFileRow).where(MissedFileRow.job_id == job.id)))
            return job, missed

    def cancel_job(self, actor: Actor, job_id: int) -> Job:
        actor.require_write()
        with self.db.session() as s:
            job: Job = self._get(s, Job, job_id, actor)
            self._server(s, job.server_id, actor)
            if job.state in ("queued", "defreezing"):
                job.state = "cancelled"
                job.finished = self.now()
            elif job.state == "running":
                job.cancel_requested = True
            else:
                raise ConflictError(f"job {job.id} already ended ({job.state})")
            self._audit(s, actor, actor.org_id, "job.cancel", str(job.id))
            return job

    def _visible_servers(self, s: Session, actor: Actor) -> set[int]:
        rows = s.scalars(select(Server).where(Server.org_id == actor.org_id))
        return {x.id for x in rows if actor.may_see_group(x.group_id)}

    def list_restore_points(self, actor: Actor, server_id: int | None = None) -> list[RestorePoint]:
        with self.db.session() as s:
            q = select(RestorePoint).where(RestorePoint.org_id == actor.org_id)
            if server_id is not None:
                self._server(s, server_id, actor)
                q = q.where(RestorePoint.server_id == server_id)
            visible = self._visible_servers(s, actor)
            rows = s.scalars(q.order_by(RestorePoint.time.desc())).all()
            return [r for r in rows if r.server_id in visible]

    def list_events(
        self,
        actor: Actor,
        limit: int = 100,
        *,
        severity: str | None = None,
        server_id: int | None = None,
        alerts: bool = False,
    ) -> list[Event]:
        """Events newest first. `alerts`: only warnings and errors nobody has acknowledged
        yet (what needs an admin's attention)."""
        if severity is not None and severity not in SEVERITIES:
            raise UsageError(f"severity must be one of {', '.join(SEVERITIES)}")
        with self.db.session() as s:
            q = select(Event).where(*self._visible_events(s, actor, alerts=alerts))
            if severity is not None:
                q = q.where(Event.severity == severity)
            if server_id is not None:
                self._server(s, server_id, actor)
                q = q.where(Event.server_id == server_id)
            return list(s.scalars(q.order_by(Event.id.desc()).limit(limit)).all())

    def _visible_events(self, s: Session, actor: Actor, *, alerts: bool) -> list[Any]:
        """Conditions on Event: the actor's organization (a group admin: their servers'
        events only) and, with `alerts`, open alerts only."""
        conds: list[Any] = [Event.org_id == actor.org_id]
        if actor.role == "group_admin":
            conds.append(Event.server_id.in_(self._visible_servers(s, actor)))
        if alerts:
            conds += [Event.severity.in_(ALERT_SEVERITIES), Event.acknowledged.is_(None)]
        return conds

    def count_alerts(self, actor: Actor) -> int:
        with self.db.session() as s:
            conds = self._visible_events(s, actor, alerts=True)
            return int(s.scalar(select(func.count()).select_from(Event).where(*conds)) or 0)

    def acknowledge_alerts(self, actor: Actor, event_ids: list[int] | None) -> int:
        """Mark alerts as seen (None: all open ones the admin can see); returns how many.
        The events stay in the event list with who acknowledged them and when."""
        actor.require_write()
        with self.db.session() as s:
            open_alerts = select(Event.id).where(*self._visible_events(s, actor, alerts=True))
            if event_ids is None:
                ids = sorted(s.scalars(open_alerts).all())
            else:
                ids = sorted(set(event_ids))
                found: set[int] = set()
                for i in range(0, len(ids), 1000):  # bound the statement's parameters
                    chunk = open_alerts.where(Event.id.in_(ids[i : i + 1000]))
                    found.update(s.scalars(chunk).all())
                unknown = set(ids) - found
                if unknown:
                    raise NotFoundError(
                        f"no open alert {min(unknown)} (already acknowledged, not a warning or "
                        "error, or not yours to see)"
                    )
            if not ids:
                return 0
            for i in range(0, len(ids), 1000):
                s.execute(
                    update(Event)
                    .where(Event.id.in_(ids[i : i + 1000]), Event.acknowledged.is_(None))
                    .values(acknowledged=self.now(), acknowledged_by=actor.admin_id)
                )
            self._audit(
                s,
                actor,
                actor.org_id,
                "alert.acknowledge",
                f"{len(ids)} alert(s)",
                events=ids[:1000],
            )
        return len(ids)

    def list_audit(self, actor: Actor, limit: int = 100) -> list[AuditEntry]:
        actor.require_org_admin()
        with self.db.session() as s:
            q = select(AuditEntry).where(AuditEntry.org_id == actor.org_id)
            return list(s.scalars(q.order_by(AuditEntry.id.desc()).limit(limit)).all())

    # -- notifications ---------------------------------------------------------------------
    def notification_settings(self, actor: Actor) -> tuple[list[str], list[str], int]:
        """(recipients set, who actually gets mail, hours before an offline alert)."""
        with self.db.session() as s:
            org = _must(s.get(Organization, actor.org_id))
            return list(org.notify_emails), mailer.recipients(s, org), org.offline_after_hours

    def set_notifications(
        self, actor: Actor, *, recipients: list[str] | None, offline_after_hours: int | None
    ) -> None:
        actor.require_org_admin()
        for address in recipients or []:
            if not _EMAIL.fullmatch(address) or len(address) > 320:
                raise UsageError(f"{address!r} is not an email address")
        if offline_after_hours is not None and not 1 <= offline_after_hours <= 24 * 365:
            raise UsageError("offline_after_hours must be between 1 and 8760")
        with self.db.session() as s:
            org = _must(s.get(Organization, actor.org_id))
            if recipients is not None:
                org.notify_emails = sorted(set(recipients))
            if offline_after_hours is not None:
                org.offline_after_hours = offline_after_hours
            self._audit(
                s,
                actor,
                actor.org_id,
                "notifications.update",
                org.name,
                recipients=org.notify_emails,
                offline_after_hours=org.offline_after_hours,
            )

    def list_emails(self, actor: Actor, limit: int = 100) -> list[OutboundEmail]:
        """The organization's outbox, newest first: what was sent, what waits, what failed."""
        actor.require_org_admin()
        with self.db.session() as s:
            q = select(OutboundEmail).where(OutboundEmail.org_id == actor.org_id)
            return list(s.scalars(q.order_by(OutboundEmail.id.desc()).limit(limit)).all())

    def check_offline_agents(self) -> int:
        """Raise an alert (and a mail) for each enabled server whose agent has not been seen
        for its organization's offline_after_hours, once per silence; returns how many."""
        raised = 0
        now = self.now()
        with self.db.session() as s:
            limits = {o.id: o.offline_after_hours for o in s.scalars(select(Organization))}
            # Runs every scheduler pass: only servers silent for the shortest allowed limit
            # (an hour) are looked at, not every server.
            quiet = or_(Server.last_seen.is_(None), Server.last_seen <= now - timedelta(hours=1))
            q = select(Server).where(Server.enabled.is_(True), quiet)
            for candidate in s.scalars(q).all():
                seen = candidate.last_seen or candidate.created
                hours = limits.get(candidate.org_id, 24)
                if now - seen < timedelta(hours=hours):
                    continue
                # One cloud process at a time decides for a server (another one holding the
                # row skips it here and sees its event on its next pass).
                lock = select(Server).where(Server.id == candidate.id)
                if self.db.is_postgres:
                    lock = lock.with_for_update(skip_locked=True)
                server = s.scalar(lock)
                if server is None:
                    continue
                told = s.scalar(
                    select(func.count())
                    .select_from(Event)
                    .where(
                        Event.server_id == server.id,
                        Event.kind == "agent.offline",
                        Event.time > seen,
                    )
                )
                if told:
                    continue
                self._event(
                    s,
                    server.org_id,
                    "warning",
                    "agent.offline",
                    f"the agent of {server.hostname} has not connected since "
                    f"{seen:%Y-%m-%d %H:%M} UTC (more than {hours} hours)",
                    server_id=server.id,
                )
                raised += 1
        return raised

    # -- the scheduler -----------------------------------------------------------------------
    def fire_due_schedules(self) -> int:
        """Create the jobs of every schedule that is due; returns how many schedules fired.

        Exactly once across cloud processes: each due policy row is locked (FOR UPDATE SKIP
        LOCKED on PostgreSQL; SQLite serializes writers) and its next_run moved forward with
        a compare-and-set on the old value, in the same transaction that creates the jobs.
        """
        fired = 0
        now = self.now()
        with self.db.session() as s:
            q = select(BackupPolicy).where(BackupPolicy.next_run <= now).order_by(BackupPolicy.id)
            if self.db.is_postgres:
                q = q.with_for_update(skip_locked=True)
            due = list(s.scalars(q).all())
            woken: list[int] = []
            for policy in due:
                when = _must(policy.next_run)
                following = schedule.next_fire(policy.days, policy.start_time, max(now, when))
                moved = s.execute(
                    update(BackupPolicy)
                    .where(BackupPolicy.id == policy.id, BackupPolicy.next_run == when)
                    .values(next_run=following)
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # another process fired it
                fired += 1
                woken += self._fire_policy(s, policy, when)
        for server_id in woken:
            self._wake(server_id)
        return fired

    def _fire_policy(self, s: Session, policy: BackupPolicy, when: datetime) -> list[int]:
        woken: list[int] = []
        end = schedule.window_end(when, policy.window_hours)
        groups = s.scalars(select(ServerGroup).where(ServerGroup.policy_id == policy.id)).all()
        for group in groups:
            servers = s.scalars(
                select(Server).where(Server.group_id == group.id, Server.enabled.is_(True))
            ).all()
            for server in servers:
                for bs in s.scalars(select(BackupSet).where(BackupSet.server_id == server.id)):
                    job = self._queue_backup(s, server, bs, "scheduled", window_end=end)
                    if self.is_connected(server):
                        woken.append(server.id)
                        continue
                    job.state = "skipped"
                    job.finished = self.now()
                    job.error = "the agent was not connected when the schedule fired"
                    self._event(
                        s,
                        server.org_id,
                        "warning",
                        "job.skipped",
                        f"scheduled backup of {server.hostname} ({bs.name}) skipped: "
                        "the agent was not connected",
                        server_id=server.id,
                        job_id=job.id,
                    )
        return woken

    # -- agents ------------------------------------------------------------------------------
    def enroll(self, req: p.EnrollRequest) -> p.EnrollResponse:
        with self.db.session() as s:
            row = s.scalar(
                select(ActivationToken).where(ActivationToken.token_hash == token_hash(req.token))
            )
            if row is None or row.uses_left <= 0 or self.now() > row.expires:
                raise AuthError("the activation token is unknown, used up or expired")
            # Compare-and-set: two enrollments racing on the last use cannot both win.
            used = s.execute(
                update(ActivationToken)
                .where(ActivationToken.id == row.id, ActivationToken.uses_left > 0)
                .values(uses_left=ActivationToken.uses_left - 1)
                .execution_options(synchronize_session=False)
            )
            if used.rowcount != 1:  # type: ignore[attr-defined]
                raise AuthError("the activation token is unknown, used up or expired")
            server = Server(
                org_id=row.org_id,
                group_id=row.group_id,
                hostname=req.hostname,
                os=req.os,
                agent_version="",
                cert_fingerprint="pending-" + os.urandom(8).hex(),
                enabled=True,
                created=self.now(),
                last_seen=None,
            )
            s.add(server)
            s.flush()
            cert = self.ca.sign_client_csr(req.csr_pem.encode(), f"server-{server.id}")
            server.cert_fingerprint = fingerprint(cert)
            self._event(
                s,
                row.org_id,
                "info",
                "server.enrolled",
                f"server {req.hostname} enrolled",
                server_id=server.id,
            )
            self._audit(s, None, row.org_id, "server.enroll", req.hostname)
            return p.EnrollResponse(
                server_id=server.id,
                org_id=row.org_id,
                certificate_pem=cert_pem(cert).decode(),
                ca_pem=self.ca.pem.decode(),
            )

    def agent_server(self, fingerprint_hex: str) -> Server:
        """The enabled server a client certificate belongs to (revocation takes effect on the
        next request: nothing is cached)."""
        with self.db.session() as s:
            server = s.scalar(select(Server).where(Server.cert_fingerprint == fingerprint_hex))
            if server is None:
                raise AuthError("this client certificate belongs to no enrolled server")
            if not server.enabled:
                raise ForbiddenError("this server is disabled in the cloud")
            return server

    def heartbeat(self, server_id: int, hb: p.Heartbeat, poll_s: float = p.POLL_WAIT_S) -> datetime:
        """Record a poll; returns until when the agent counts as connected."""
        with self.db.session() as s:
            server = self._seen(s, server_id, poll_s + self.connected_grace_s)
            until = _must(server.connected_until)
            server.agent_version = hb.version
            server.os = hb.os
            server.hostname = hb.hostname
            server.free_bytes = hb.free_bytes
            q = select(Job).where(Job.server_id == server_id, Job.state == "running")
            if hb.running_job is not None:
                q = q.where(Job.id != hb.running_job)
            stale = s.scalars(q).all()
            for job in stale:
                job.state = "aborted"
                job.finished = self.now()
                job.error = "the agent stopped while the job ran (restart, reboot or kill)"
                self._event(
                    s,
                    job.org_id,
                    "error",
                    "job.aborted",
                    f"{job.kind} job {job.id} on {server.hostname} aborted: the agent restarted",
                    server_id=server_id,
                    job_id=job.id,
                )
        return until

    def runnable_since(self, last_id: int, since: datetime) -> tuple[int, set[int]]:
        """Servers with a job to hand out that appeared after job `last_id` (created by any
        cloud process) or whose retry delay ended after `since`; and the newest job id."""
        now = self.now()
        with self.db.session() as s:
            newest = s.scalar(select(func.max(Job.id))) or 0
            rows = s.execute(
                select(Job.server_id).where(
                    Job.state == "queued",
                    or_(
                        Job.id > last_id,
                        and_(Job.not_before > since, Job.not_before <= now),
                    ),
                )
            ).all()
            return newest, {r[0] for r in rows}

    def _catalog(self) -> StorageCatalog:
        if self.catalog is None:
            raise PlanningError("this cloud has no access to storage nodes to read restore points")
        return self.catalog

    def _source_of(self, s: Session, rp: RestorePoint, source: Server) -> _Source:
        """Where a restore point's data is (the storage of the source server's group) and
        how to open it."""
        group = _must(s.get(ServerGroup, source.group_id))
        org = _must(s.get(Organization, rp.org_id))
        return _Source(
            storage_url=_must(s.get(Storage, group.storage_id)).url,
            org_id=rp.org_id,
            repo_key=self.kek.open(org.repo_key_sealed, f"org:{org.id}".encode()),
            snapshot=rp.snapshot_id,
        )

    def _restore_source(self, actor: Actor, restore_point_id: int) -> _Source:
        with self.db.session() as s:
            rp: RestorePoint = self._get(s, RestorePoint, restore_point_id, actor)
            return self._source_of(s, rp, self._server(s, rp.server_id, actor))

    def get_restore_point(self, actor: Actor, restore_point_id: int) -> RestorePoint:
        with self.db.session() as s:
            rp: RestorePoint = self._get(s, RestorePoint, restore_point_id, actor)
            self._server(s, rp.server_id, actor)  # a group admin sees only their groups'
            return rp

    def browse_restore_point(self, actor: Actor, restore_point_id: int, path: str) -> list[Entry]:
        """One directory of a restore point, for choosing what to restore."""
        src = self._restore_source(actor, restore_point_id)
        return self._catalog().list_dir(
            src.storage_url, src.org_id, src.repo_key, src.snapshot, path
        )

    def restore_size(self, actor: Actor, restore_point_id: int, include: list[str]) -> RestorePlan:
        """What a restore of `include` (everything when empty) would write: files and bytes.
        Nothing is registered with the storage node: the restore, once started, plans again."""
        src = self._restore_source(actor, restore_point_id)
        return self._catalog().plan_restore(
            src.storage_url, src.org_id, src.repo_key, src.snapshot, include, register=False
        )

    @staticmethod
    def _parent_of(s: Session, job: Job) -> str | None:
        return s.scalar(
            select(RestorePoint.snapshot_id)
            .where(
                RestorePoint.server_id == job.server_id,
                RestorePoint.backup_set_id == job.backup_set_id,
            )
            .order_by(RestorePoint.time.desc(), RestorePoint.id.desc())
            .limit(1)
        )

    def claim_job(self, server_id: int) -> p.JobAssignment | None:
        """Hand the oldest runnable queued job of this server to its agent."""
        now = self.now()
        with self.db.session() as s:
            q = (
                select(Job)
                .where(
                    Job.server_id == server_id,
                    Job.state == "queued",
                    or_(Job.not_before.is_(None), Job.not_before <= now),
                )
                .order_by(Job.id)
                .limit(1)
            )
            if self.db.is_postgres:
                q = q.with_for_update(skip_locked=True)
            job = s.scalar(q)
            if job is None:
                return None
            if job.window_end is not None and now >= job.window_end:
                job.state = "skipped"
                job.finished = now
                job.error = "the backup window closed before the agent could start"
                return None
            claimed = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.state == "queued")
                .values(state="running", started=now)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return self._assignment(s, job)

    def _assignment(self, s: Session, job: Job) -> p.JobAssignment:
        server = _must(s.get(Server, job.server_id))
        group = _must(s.get(ServerGroup, server.group_id))
        storage = _must(s.get(Storage, group.storage_id))
        org = _must(s.get(Organization, job.org_id))
        policy = s.get(BackupPolicy, group.policy_id) if group.policy_id else None
        now = int(self.now().timestamp())
        restoring = job.kind == "restore"
        # A backup continues the newest restore point of this server's backup set in the
        # catalog (none for the first, which is full); the agent need not read any.
        parent = None if restoring else self._parent_of(s, job)
        claims = tokens.StorageClaims(
            org=job.org_id,
            server=server.id,
            job=job.id,
            access="restore" if restoring else "backup",
            snapshot=str(job.params.get("snapshot", "")) if restoring else "",
            iat=now,
            exp=now + self.token_ttl_s,
            grant=str(job.params.get("grant", "")) if restoring else "",
        )
        key = self.kek.open(org.repo_key_sealed, f"org:{org.id}".encode())
        a = p.JobAssignment(
            job_id=job.id,
            kind="restore" if restoring else "backup",
            org_id=job.org_id,
            storage_url=str(job.params.get("storage_url", storage.url)),
            storage_token=tokens.sign(self.token_key, claims),
            repo_key=base64.b64encode(key).decode(),
            bandwidth_kib=policy.bandwidth_kib if policy else 0,
        )
        if job.kind == "backup":
            bs = _must(s.get(BackupSet, job.backup_set_id))
            a.backup = p.BackupSpec(
                backup_set_id=bs.id,
                backup_set_name=bs.name,
                include=list(bs.include),
                exclude=list(bs.exclude),
                window_end=job.window_end,
                parent=parent,
            )
        else:
            prm = job.params
            a.restore = p.RestoreSpec(
                snapshot=prm["snapshot"],
                include=list(prm.get("include", [])),
                target=prm["target"],
                existing=prm.get("existing", "skip"),
                original_paths=list(prm.get("original_paths", [])) if prm.get("original") else [],
                size=int(prm.get("bytes", 0)),
            )
        return a

    def job_progress(self, server_id: int, job_id: int, prog: p.Progress) -> p.ProgressAck:
        with self.db.session() as s:
            job = self._agent_job(s, server_id, job_id)
            self._seen(s, server_id, self.connected_grace_s)
            job.progress = prog.model_dump(exclude={"log"})
            if prog.log:
                job.log = (job.log + "".join(line + "\n" for line in prog.log))[-200_000:]
            return p.ProgressAck(cancel=job.cancel_requested)

    def _agent_job(self, s: Session, server_id: int, job_id: int) -> Job:
        job = s.get(Job, job_id)
        if job is None or job.server_id != server_id:
            raise NotFoundError(f"job {job_id} not found")
        if job.state != "running":
            raise ConflictError(f"job {job_id} is not running ({job.state})")
        return job

    def finish_job(self, server_id: int, job_id: int, res: p.JobResult) -> None:
        with self.db.session() as s:
            job = self._agent_job(s, server_id, job_id)
            server = self._seen(s, server_id, self.connected_grace_s)
            job.state = res.state
            job.finished = self.now()
            job.error = res.error
            job.snapshot_id = res.snapshot_id
            # The final counts, so the job shows what it did even when it ended before its
            # first progress report; the estimate and rate stay as last reported.
            job.progress = {
                **(job.progress or {}),
                "phase": "done",
                "files_done": res.files,
                "bytes_done": res.bytes,
                "eta_s": None,
            }
            if res.log:
                job.log = (job.log + "".join(line + "\n" for line in res.log))[-200_000:]
            for m in res.missed:
                s.add(MissedFileRow(job_id=job.id, path=m.path, reason=m.reason))
            if job.kind == "backup" and res.snapshot_id and res.state in ("succeeded", "partial"):
                bs = s.get(BackupSet, job.backup_set_id)
                s.add(
                    RestorePoint(
                        org_id=job.org_id,
                        server_id=server_id,
                        backup_set_id=job.backup_set_id,
                        job_id=job.id,
                        snapshot_id=res.snapshot_id,
                        # the agent's clock, but never in the cloud's future: retention
                        # counts back from the newest restore point
                        time=min(res.snapshot_time or self.now(), self.now()),
                        paths=list(bs.include) if bs else [],
                        files=res.files,
                        bytes=res.bytes,
                        bytes_added=res.bytes_added,
                        partial=res.state == "partial",
                    )
                )
            severity = {"succeeded": "info", "partial": "warning", "stopped": "warning"}.get(
                res.state, "error"
            )
            what = f"{job.kind} job {job.id} on {server.hostname}: {res.state}"
            if res.missed:
                what += f", {len(res.missed)} missed files (tried again next backup)"
            if res.error:
                what += f": {res.error}"
            self._event(
                s,
                job.org_id,
                severity,
                f"job.{res.state}",
                what,
                server_id=server_id,
                job_id=job.id,
            )
            if res.state == "failed" and job.kind == "backup":
                self._maybe_retry(s, job, server)

    def _maybe_retry(self, s: Session, job: Job, server: Server) -> None:
        group = s.get(ServerGroup, server.group_id)
        policy = s.get(BackupPolicy, group.policy_id) if group and group.policy_id else None
        retries = policy.max_retries if policy else 0
        if job.attempt > retries:
            self._event(
                s,
                job.org_id,
                "error",
                "job.gave_up",
                f"backup of {server.hostname} failed after {job.attempt} attempts",
                server_id=server.id,
                job_id=job.id,
            )
            return
        bs = s.get(BackupSet, job.backup_set_id)
        if bs is None:
            return
        interval = timedelta(minutes=policy.retry_interval_min if policy else 30)
        retry = self._queue_backup(
            s,
            server,
            bs,
            "retry",
            window_end=job.window_end,
            attempt=job.attempt + 1,
            not_before=self.now() + interval,
        )
        self._event(
            s,
            job.org_id,
            "info",
            "job.retry",
            f"backup of {server.hostname} will be retried (attempt {retry.attempt}) "
            f"after {retry.not_before:%H:%M} UTC",
            server_id=server.id,
            job_id=retry.id,
        )


def _must(obj: T | None) -> T:
    """A row another row points at (foreign keys make its absence a bug, not user error)."""
    if obj is None:
        raise ConflictError("the catalog changed during the request; try again")
    return obj


def _os_family(os_name: str) -> str:
    return "windows" if os_name.lower().startswith("windows") else "linux"


def duration_words(seconds: float) -> str:
    """Seconds in words an admin reads at a glance: '40 seconds', '5 minutes', '12 hours'."""
    if seconds < 90:
        return f"{max(round(seconds), 1)} seconds"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


def _check_capacity(capacity_bytes: int | None) -> None:
    if capacity_bytes is not None and capacity_bytes <= 0:
        raise UsageError("a storage's capacity is a positive number of bytes")


def _check_paths(paths: list[str], what: str, *, absolute: bool = True) -> None:
    if what == "include" and not paths:
        raise UsageError("a backup set needs at least one include path")
    for path in paths:
        if not path or "\x00" in path or len(path) > 4096:
            raise UsageError(f"invalid {what} path {path!r}")
        if absolute and not path.startswith("/"):
            raise UsageError(f"{what} path {path!r} must be absolute")
        if absolute and ".." in path.split("/"):
            raise UsageError(f"{what} path {path!r} must not contain '..'")


_POLICY_FIELDS = {
    "days",
    "start_time",
    "window_hours",
    "max_retries",
    "retry_interval_min",
    "bandwidth_kib",
    "retention",
    "cold_after_days",
}


def _ratio(raw: int, stored: int) -> float | None:
    return round(raw / stored, 2) if stored else None


def policy_fields(fields: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    unknown = set(fields) - _POLICY_FIELDS
    if unknown:
        raise UsageError(f"unknown policy fields: {', '.join(sorted(unknown))}")
    out = {k: v for k, v in fields.items() if v is not None}
    if not partial:
        out.setdefault("days", "daily")
        out.setdefault("start_time", "22:00")
        out.setdefault("window_hours", 0)
        out.setdefault("max_retries", 2)
        out.setdefault("retry_interval_min", 30)
        out.setdefault("bandwidth_kib", 0)
        out.setdefault("retention", dict(DEFAULT_RETENTION))
        out.setdefault("cold_after_days", 90)
    if "retention" in out:
        out["retention"] = _retention_rules(out["retention"])
    if "days" in out:
        out["days"] = schedule.format_days(schedule.parse_days(out["days"]))
    if "start_time" in out:
        schedule.parse_time(out["start_time"])
    for k in ("window_hours", "max_retries", "retry_interval_min", "bandwidth_kib"):
        if k in out and not 0 <= int(out[k]) <= 1_000_000:
            raise UsageError(f"{k} must be between 0 and 1000000")
    if "window_hours" in out and out["window_hours"] > 168:
        raise UsageError("window_hours must be at most 168 (0 means no window)")
    if "cold_after_days" in out and not 1 <= int(out["cold_after_days"]) <= 36500:
        raise UsageError("cold_after_days must be between 1 and 36500")
    return out


def _retention_rules(rules: Any) -> dict[str, int]:
    if not isinstance(rules, dict):
        raise UsageError('retention is an object such as {"within_days": 60, "weekly": 24}')
    unknown = set(rules) - set(retention.RETENTION_FIELDS)
    if unknown:
        raise UsageError(
            f"unknown retention rules: {', '.join(sorted(unknown))} (known: "
            f"{', '.join(retention.RETENTION_FIELDS)})"
        )
    out = {}
    for k, v in rules.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100_000:
            raise UsageError(f"retention {k} must be a whole number from 0 to 100000")
        out[k] = v
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, str | int | float | bool | dict | list)}
