"""The cloud's own read access to the organizations' repositories on storage nodes.

It plans each restore before it is queued: it opens the restore point with the organization's
key, checks that the chosen paths are in it, counts its size, lists the packs it needs and
registers that list with the storage node as the restore's grant. The restore token the agent
gets names the grant by its SHA-256, so the node lets it read those packs and no others.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rekindle.core.errors import RekindleError, UsageError
from rekindle.format.registry import NodeType
from rekindle.format.snapshot import Snapshot
from rekindle.net import tokens
from rekindle.repository.browse import list_dir
from rekindle.repository.check import check
from rekindle.repository.forget import forget_ids
from rekindle.repository.prune import PruneReport, prune
from rekindle.repository.reach import restore_needs
from rekindle.repository.repo import Repository, Secret
from rekindle.repository.tiering import StoredUsage, TierReport, stored_usage, tier
from rekindle.store.http import HttpBackend
from rekindle.store.retry import RetryingBackend

#: A catalog token lives only as long as one planning needs.
CATALOG_TOKEN_TTL_S = 600
#: A maintenance token covers one retention run, prune and check included.
MAINTENANCE_TOKEN_TTL_S = 24 * 3600


class PlanningError(RekindleError):
    """The storage node could not be reached or the restore point could not be read."""


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # file, dir, symlink, ...
    size: int
    mtime: int | None  # Unix seconds


@dataclass(frozen=True)
class RestorePlan:
    grant: str  # SHA-256 (hex) of the registered grant
    packs: int
    files: int
    bytes: int
    #: Data packs the restore needs that are in the archive tier (not thawed): the restore
    #: waits for a defreeze; with their size and how long a thaw takes on that node.
    archived: list[str] = field(default_factory=list)
    archived_bytes: int = 0
    thaw_estimate_s: float = 0.0


class StorageCatalog:
    def __init__(self, token_key: Any, ca_file: Path, cache_dir: Path) -> None:
        self._token_key = token_key
        self._ca_file = ca_file
        self._cache_dir = cache_dir

    def _token(self, org: int, access: tokens.Access = "catalog", job: int = 0) -> str:
        now = int(time.time())
        ttl = MAINTENANCE_TOKEN_TTL_S if access == "maintenance" else CATALOG_TOKEN_TTL_S
        claims = tokens.StorageClaims(
            org=org,
            server=0,
            job=job,
            access=access,
            snapshot="",
            iat=now,
            exp=now + ttl,
        )
        return tokens.sign(self._token_key, claims)

    @contextlib.contextmanager
    def _repository(
        self,
        storage_url: str,
        org: int,
        repo_key: bytes,
        *,
        access: tokens.Access = "catalog",
        job: int = 0,
        what: str = "the restore point",
    ) -> Iterator[tuple[Repository, HttpBackend]]:
        token = self._token(org, access, job)
        http = HttpBackend(storage_url, org, token, ca_file=str(self._ca_file))
        try:
            with Repository.open(
                RetryingBackend(http, attempts=3),
                Secret(operator_key=repo_key),
                cache_root=self._cache_dir / f"org-{org}",
            ) as repo:
                yield repo, http
        except UsageError:
            raise
        except RekindleError as e:
            raise PlanningError(f"cannot read {what}: {e}") from e
        finally:
            http.close()

    def list_dir(
        self, storage_url: str, org: int, repo_key: bytes, snapshot: str, path: str
    ) -> list[Entry]:
        """One directory of a restore point, directories first (the restore wizard)."""
        with self._repository(storage_url, org, repo_key) as (repo, _http):
            nodes = list_dir(repo, repo.read_snapshot(snapshot), path)
        entries = [
            Entry(
                name=os.fsdecode(n.name),
                kind=n.type.name.lower(),
                size=n.size if n.type is NodeType.FILE else 0,
                mtime=n.mtime_ns // 1_000_000_000 if n.mtime_ns else None,
            )
            for n in nodes
        ]
        entries.sort(key=lambda e: (e.kind != "dir", e.name))
        return entries

    def plan_restore(
        self,
        storage_url: str,
        org: int,
        repo_key: bytes,
        snapshot: str,
        include: list[str],
        *,
        register: bool = True,
    ) -> RestorePlan:
        """Plan a restore of `include`; with `register`, tell the node its grant. Raises
        UsageError when a chosen path is not in the restore point, PlanningError when the
        repository cannot be read."""
        with self._repository(storage_url, org, repo_key) as (repo, http):
            needs = restore_needs(repo, repo.read_snapshot(snapshot), include)
            body = "\n".join(needs.packs).encode("ascii")
            digest = hashlib.sha256(body).hexdigest()
            if register:
                http.register_grant(digest, body)
            archived, estimate = self._archived(
                http, [p for p in needs.preferred if p.startswith("data/")]
            )
            size = sum(http.stat(name).size for name in archived)
        return RestorePlan(
            digest, len(needs.packs), needs.files, needs.bytes, archived, size, estimate
        )

    @staticmethod
    def _archived(http: HttpBackend, packs: list[str]) -> tuple[list[str], float]:
        """The packs among `packs` that are archived and not thawed, and the node's thaw
        time; none when the node has no archive tier."""
        info = http.tier_info()
        if not info.get("archive") or not packs:
            return [], 0.0
        states = http.tier("state", packs)
        cold = [p for p, state in states.items() if state in ("archived", "thawing")]
        return sorted(cold), float(str(info.get("thaw_estimate_s") or 0))

    @contextlib.contextmanager
    def _node(self, storage_url: str, org: int) -> Iterator[HttpBackend]:
        """The node's API for `org` with a catalog token (no repository opened)."""
        http = HttpBackend(storage_url, org, self._token(org), ca_file=str(self._ca_file))
        try:
            yield http
        except RekindleError as e:
            raise PlanningError(f"cannot reach the storage: {e}") from e
        finally:
            http.close()

    def thaw(self, storage_url: str, org: int, packs: list[str], days: int) -> dict[str, str]:
        """Ask the node to thaw `packs` (idempotent); their states afterwards."""
        with self._node(storage_url, org) as http:
            return http.tier("thaw", packs, days=days)

    def usage(self, storage_url: str, org: int) -> dict[str, Any]:
        """The organization's bytes on the node and the node's filesystem (None on S3)."""
        with self._node(storage_url, org) as http:
            return http.usage()

    def expire_and_prune(
        self,
        storage_url: str,
        org: int,
        repo_key: bytes,
        snapshots: list[str],
        *,
        run_id: int,
        grace: timedelta,
        progress: Callable[[str], None],
        forgotten: Callable[[], None],
        cold: Callable[[], set[str]] = set,
        server_of: Mapping[str, int] | None = None,
    ) -> MaintenanceReport:
        """Delete the restore points `snapshots` from the repository, call `forgotten` (the
        catalog drops them before anything else can fail), prune what no restore point uses
        any more, and check the repository's structure. On a node with an archive tier, move
        what only the restore points `cold()` names use there (tiering; asked after the
        restore points are deleted). Then measure warm and cold bytes, per server by
        `server_of` (snapshot id -> server id). Runs with a maintenance token whose job
        number (-run_id) owns the prune and tier locks on the node."""
        out = MaintenanceReport()
        with self._node(storage_url, org) as http:
            if not http.exists("config"):
                out.no_repository = True  # nothing was ever backed up there
                return out
        with self._repository(
            storage_url, org, repo_key, access="maintenance", job=-run_id, what="the repository"
        ) as (repo, node):
            if snapshots:
                progress(f"deleting {len(snapshots)} restore point(s)")
                out.removed = forget_ids(repo, snapshots)
                forgotten()
            progress("pruning")
            out.prune = prune(repo, grace=grace, progress=progress)
            progress("checking the repository's structure")
            out.check_errors = check(repo, read_data=False, progress=progress).errors
            if not out.check_errors and node.tier_info().get("archive"):
                progress("tiering")
                out.tier = tier(repo, _membership(cold), grace=grace, progress=progress)
            progress("measuring warm and cold bytes")
            servers = server_of or {}
            found = servers.get
            out.usage = stored_usage(
                repo, lambda snap: str(sid) if (sid := found(snap.id)) is not None else None
            )
        return out


def _membership(ids_now: Callable[[], set[str]]) -> Callable[[], Callable[[Snapshot], bool]]:
    """A cold rule for tiering: the restore points `ids_now()` names at each phase."""

    def rule() -> Callable[[Snapshot], bool]:
        ids = ids_now()
        return lambda snap: snap.id in ids

    return rule


@dataclass
class MaintenanceReport:
    removed: int = 0
    prune: PruneReport | None = None
    check_errors: list[str] = field(default_factory=list)
    no_repository: bool = False
    tier: TierReport | None = None
    usage: StoredUsage | None = None
