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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rekindle.core.errors import RekindleError, UsageError
from rekindle.format.registry import NodeType
from rekindle.net import tokens
from rekindle.repository.browse import list_dir
from rekindle.repository.reach import restore_needs
from rekindle.repository.repo import Repository, Secret
from rekindle.store.http import HttpBackend
from rekindle.store.retry import RetryingBackend

#: A catalog token lives only as long as one planning needs.
CATALOG_TOKEN_TTL_S = 600


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


class StorageCatalog:
    def __init__(self, token_key: Any, ca_file: Path, cache_dir: Path) -> None:
        self._token_key = token_key
        self._ca_file = ca_file
        self._cache_dir = cache_dir

    def _token(self, org: int) -> str:
        now = int(time.time())
        claims = tokens.StorageClaims(
            org=org,
            server=0,
            job=0,
            access="catalog",
            snapshot="",
            iat=now,
            exp=now + CATALOG_TOKEN_TTL_S,
        )
        return tokens.sign(self._token_key, claims)

    @contextlib.contextmanager
    def _repository(
        self, storage_url: str, org: int, repo_key: bytes
    ) -> Iterator[tuple[Repository, HttpBackend]]:
        http = HttpBackend(storage_url, org, self._token(org), ca_file=str(self._ca_file))
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
            raise PlanningError(f"cannot read the restore point: {e}") from e
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
        return RestorePlan(digest, len(needs.packs), needs.files, needs.bytes)
