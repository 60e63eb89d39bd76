"""HTTP routes of the storage node: a blob API per organization, guarded by storage tokens.

| method | path | meaning |
| --- | --- | --- |
| GET | /storage/v1/orgs/{org}/objects?prefix=P | list (JSON) |
| GET | /storage/v1/orgs/{org}/objects/{name} | read; ``Range: bytes=a-b`` reads a part |
| HEAD | /storage/v1/orgs/{org}/objects/{name} | size and mtime |
| PUT | /storage/v1/orgs/{org}/objects/{name}?replace=0 | write once (409 when it exists) |
| DELETE | /storage/v1/orgs/{org}/objects/{name} | delete |
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from rekindle import __version__
from rekindle.core.errors import (
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    RekindleError,
    StorageError,
    UsageError,
)
from rekindle.net.tokens import StorageClaims, TokenError, verify
from rekindle.storagenode.scope import Op, allowed
from rekindle.store.base import Backend, check_name

_bearer = HTTPBearer(auto_error=False)
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
#: Largest object accepted in one PUT (packs are 16 MiB by default; their maximum is 128).
MAX_OBJECT = 256 * 1024 * 1024
#: Offsets beyond any object (and beyond what the OS accepts) are refused up front.
MAX_RANGE = 2**53


class ScopeError(RekindleError):
    """A valid token used for something it was not issued for."""


class LockOwners(Protocol):
    def get(self, org: int, name: str) -> int | None: ...
    def set(self, org: int, name: str, job: int) -> None: ...
    def forget(self, org: int, name: str) -> None: ...


class MemoryLockOwners:
    """For tests and single-process use: forgotten on restart."""

    def __init__(self) -> None:
        self._owners: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def get(self, org: int, name: str) -> int | None:
        with self._lock:
            return self._owners.get((org, name))

    def set(self, org: int, name: str, job: int) -> None:
        with self._lock:
            self._owners[(org, name)] = job

    def forget(self, org: int, name: str) -> None:
        with self._lock:
            self._owners.pop((org, name), None)


class SqliteLockOwners:
    """Lock owners in a small SQLite file beside the repositories: shared by the node's
    worker processes and kept across restarts, so a running backup can still refresh and
    remove its lock."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS lock_owner "
                "(org INTEGER, name TEXT, job INTEGER, PRIMARY KEY (org, name))"
            )
        finally:
            db.close()

    def _db(self) -> sqlite3.Connection:
        # One connection per thread and process: worker processes fork after start-up.
        key = (os.getpid(), threading.get_ident())
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "key", None) != key:
            db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            self._local.db, self._local.key = db, key
        return db

    def get(self, org: int, name: str) -> int | None:
        row = (
            self._db()
            .execute("SELECT job FROM lock_owner WHERE org = ? AND name = ?", (org, name))
            .fetchone()
        )
        return int(row[0]) if row else None

    def set(self, org: int, name: str, job: int) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO lock_owner (org, name, job) VALUES (?, ?, ?)",
            (org, name, job),
        )

    def forget(self, org: int, name: str) -> None:
        self._db().execute("DELETE FROM lock_owner WHERE org = ? AND name = ?", (org, name))


class OrgBackends:
    """One backend per organization, opened on first use."""

    def __init__(
        self, factory: Callable[[int], Backend], lock_owner: LockOwners | None = None
    ) -> None:
        self._factory = factory
        self._open: dict[int, Backend] = {}
        self._lock = threading.Lock()
        #: Which job wrote each lock object: a token may refresh or delete only its own job's
        #: locks.
        self.lock_owner: LockOwners = lock_owner or MemoryLockOwners()

    def get(self, org: int) -> Backend:
        with self._lock:
            b = self._open.get(org)
            if b is None:
                b = self._open[org] = self._factory(org)
            return b

    def close(self) -> None:
        with self._lock:
            for b in self._open.values():
                b.close()
            self._open.clear()


def local_factory(root: Path) -> Callable[[int], Backend]:
    from rekindle.store.local import LocalBackend

    def make(org: int) -> Backend:
        path = root / "orgs" / str(int(org))
        path.mkdir(parents=True, exist_ok=True)
        return LocalBackend(path)

    return make


def local_node_app(data_dir: Path) -> FastAPI:
    """A node serving DATA_DIR/orgs/<id>, with the cloud's token key (token.pub) and the lock
    owners (lock-owners.sqlite) beside them."""
    from rekindle.net.tokens import load_public

    backends = OrgBackends(
        local_factory(data_dir), SqliteLockOwners(data_dir / "lock-owners.sqlite")
    )
    return create_app(backends, load_public((data_dir / "token.pub").read_bytes()))


def create_app(backends: OrgBackends, token_public: Any) -> FastAPI:
    app = FastAPI(title="Rekindle storage node", version=__version__)

    def fail(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"detail": msg}, status_code=status)

    app.add_exception_handler(TokenError, lambda _r, e: fail(401, str(e)))
    app.add_exception_handler(ScopeError, lambda _r, e: fail(403, str(e)))
    app.add_exception_handler(ObjectNotFoundError, lambda _r, e: fail(404, str(e)))
    app.add_exception_handler(ObjectExistsError, lambda _r, e: fail(409, str(e)))
    app.add_exception_handler(NoSpaceError, lambda _r, e: fail(507, str(e)))
    app.add_exception_handler(UsageError, lambda _r, e: fail(400, str(e)))
    app.add_exception_handler(StorageError, lambda _r, e: fail(503, str(e)))

    def claims_for(org: int, creds: HTTPAuthorizationCredentials | None) -> StorageClaims:
        if creds is None:
            raise TokenError("a storage token is required")
        claims = verify(token_public, creds.credentials)
        if claims.org != org:
            raise ScopeError("this token is for another organization")
        return claims

    def check(claims: StorageClaims, op: Op, name: str) -> None:
        if not allowed(claims, op, name):
            raise ScopeError(f"a {claims.access} token may not {op} {name or 'objects'}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/storage/v1/orgs/{org}/objects")
    async def list_objects(org: int, creds: Creds, prefix: str = "") -> Any:
        claims = claims_for(org, creds)
        if prefix:
            check_name(prefix.rstrip("/"))
        check(claims, "list", prefix)
        backend = backends.get(org)

        def run() -> list[dict[str, Any]]:
            out = []
            for info in backend.list(prefix):
                if (
                    claims.access == "restore"
                    and info.name.startswith("snapshots/")
                    and (info.name != f"snapshots/{claims.snapshot}")
                ):
                    continue
                out.append(
                    {"name": info.name, "size": info.size, "modified": info.modified.timestamp()}
                )
            return out

        return await run_in_threadpool(run)

    @app.head("/storage/v1/orgs/{org}/objects/{name:path}")
    async def stat_object(org: int, name: str, creds: Creds) -> Response:
        claims = claims_for(org, creds)
        check(claims, "read", check_name(name))
        info = await run_in_threadpool(backends.get(org).stat, name)
        return Response(
            headers={
                "Content-Length": str(info.size),
                "X-Rekindle-Modified": repr(info.modified.timestamp()),
            }
        )

    @app.get("/storage/v1/orgs/{org}/objects/{name:path}")
    async def read_object(
        org: int,
        name: str,
        creds: Creds,
        range_: Annotated[str | None, Header(alias="Range")] = None,
    ) -> Response:
        claims = claims_for(org, creds)
        check(claims, "read", check_name(name))
        offset, length = 0, None
        if range_:
            m = _RANGE.match(range_)
            if not m:
                raise UsageError(f"unsupported Range {range_!r}")
            offset = int(m.group(1))
            if offset > MAX_RANGE or (m.group(2) and int(m.group(2)) > MAX_RANGE):
                raise UsageError(f"Range {range_!r} is out of bounds")
            if m.group(2):
                length = int(m.group(2)) - offset + 1
                if length < 0:
                    raise UsageError(f"bad Range {range_!r}")
        data = await run_in_threadpool(backends.get(org).read, name, offset, length)
        return Response(
            data,
            status_code=206 if range_ else 200,
            media_type="application/octet-stream",
        )

    @app.put("/storage/v1/orgs/{org}/objects/{name:path}", status_code=201)
    async def write_object(
        org: int, name: str, request: Request, creds: Creds, replace: int = 0
    ) -> Response:
        claims = claims_for(org, creds)
        check(claims, "replace" if replace else "write", check_name(name))
        if int(request.headers.get("content-length") or 0) > MAX_OBJECT:
            return fail(413, f"object larger than {MAX_OBJECT} bytes")
        parts: list[bytes] = []
        got = 0
        async for piece in request.stream():  # bounded even without a Content-Length
            got += len(piece)
            if got > MAX_OBJECT:
                return fail(413, f"object larger than {MAX_OBJECT} bytes")
            parts.append(piece)
        body = b"".join(parts)
        del parts
        backend = backends.get(org)
        if name.startswith("locks/"):
            owner = backends.lock_owner.get(org, name)
            if replace and owner != claims.job and await run_in_threadpool(backend.exists, name):
                raise ScopeError("a token may refresh only the locks its own job took")
        # Initialization only: a repository's config and keys are never replaced, and new
        # keys cannot be slipped into an existing repository by an agent.
        if (name == "config" or name.startswith("keys/")) and await run_in_threadpool(
            backend.exists, "config"
        ):
            raise ScopeError("the repository is initialized; its keys cannot be changed")
        await run_in_threadpool(lambda: backend.write(name, body, exclusive=not replace))
        if name.startswith("locks/"):
            backends.lock_owner.set(org, name, claims.job)  # only once the write succeeded
        return Response(status_code=201)

    @app.delete("/storage/v1/orgs/{org}/objects/{name:path}", status_code=204)
    async def delete_object(org: int, name: str, creds: Creds) -> Response:
        claims = claims_for(org, creds)
        check(claims, "delete", check_name(name))
        if backends.lock_owner.get(org, name) != claims.job:
            raise ScopeError("a token may delete only the locks its own job took")
        await run_in_threadpool(backends.get(org).delete, name)
        backends.lock_owner.forget(org, name)
        return Response(status_code=204)

    return app
