"""HTTP routes of the storage node: a blob API per organization, guarded by storage tokens.

| method | path | meaning |
| --- | --- | --- |
| GET | /storage/v1/orgs/{org}/objects?prefix=P | list (JSON) |
| GET | /storage/v1/orgs/{org}/objects/{name} | read; ``Range: bytes=a-b`` reads a part |
| HEAD | /storage/v1/orgs/{org}/objects/{name} | size and mtime |
| PUT | /storage/v1/orgs/{org}/objects/{name}?replace=0 | write once (409 when it exists) |
| DELETE | /storage/v1/orgs/{org}/objects/{name} | delete |
| PUT | /storage/v1/orgs/{org}/grants/{sha256} | register a restore's grant (cloud only) |
| POST | /storage/v1/orgs/{org}/tier | archive, thaw or ask the state of data packs (cloud) |
| GET | /storage/v1/orgs/{org}/usage | the organization's bytes and the node's disk (cloud) |
| GET | /storage/v1/tier | whether the node has an archive tier, and the thaw delay to expect |
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from rekindle import __version__
from rekindle.core.errors import (
    ArchivedError,
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    RekindleError,
    StorageError,
    UsageError,
)
from rekindle.net.tokens import StorageClaims, TokenError, verify
from rekindle.storagenode.ledger import NodeLedger
from rekindle.storagenode.scope import Op, allowed, is_pack
from rekindle.store.base import Backend, check_name
from rekindle.store.spool import Spool
from rekindle.store.tier import archive_of

_bearer = HTTPBearer(auto_error=False)
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: Largest object accepted in one PUT (packs are 16 MiB by default; their maximum is 128).
MAX_OBJECT = 256 * 1024 * 1024
SPOOL_RUN = 1024 * 1024
#: Offsets beyond any object (and beyond what the OS accepts) are refused up front.
MAX_RANGE = 2**53


class ScopeError(RekindleError):
    """A valid token used for something it was not issued for."""


@dataclass(frozen=True)
class TierInfo:
    """The node's archive tier as the cloud sees it."""

    kind: str = ""  # "" (none), "local" or the S3 storage class
    #: How long a thaw takes, for the admin's estimate (seconds).
    thaw_estimate_s: float = 0.0


class TierRequest(BaseModel):
    op: Literal["archive", "thaw", "state"]
    names: list[str] = Field(max_length=100_000)
    #: For a thaw: how many days the thawed copy stays readable.
    days: int = Field(default=7, ge=1, le=365)


class OrgBackends:
    """One backend per organization, opened on first use."""

    def __init__(
        self,
        factory: Callable[[int], Backend],
        ledger: NodeLedger | None = None,
        tier: TierInfo | None = None,
        root: Path | None = None,
    ) -> None:
        self.tier = tier or TierInfo()
        #: The directory the repositories live in (None on S3): its filesystem's usage.
        self.root: Path | None = root
        self._factory = factory
        self._open: dict[int, Backend] = {}
        self._lock = threading.Lock()
        #: Lock owners and grants (in memory unless given a file).
        self.ledger = ledger or NodeLedger(None)

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


def s3_factory(location: str, archive_class: str | None = None) -> Callable[[int], Backend]:
    """Each organization under LOCATION/orgs/<id> (``s3://bucket[/prefix]``), with retries;
    credentials and endpoint come from the usual AWS_* environment."""
    from rekindle.store.retry import RetryingBackend
    from rekindle.store.s3 import S3Backend

    if not location.startswith("s3://"):
        raise UsageError(f"a storage backend is s3://BUCKET[/PREFIX], not {location!r}")
    bucket, _, prefix = location[len("s3://") :].rstrip("/").partition("/")
    if not bucket:
        raise UsageError(f"no bucket in {location!r}: use s3://BUCKET[/PREFIX]")

    def make(org: int) -> Backend:
        org_prefix = f"{prefix}/orgs/{int(org)}" if prefix else f"orgs/{int(org)}"
        return RetryingBackend(
            S3Backend(bucket, org_prefix, archive_class=archive_class or "GLACIER")
        )

    return make


def local_archive_factory(
    root: Path, archive_dir: Path, thaw_delay: timedelta
) -> Callable[[int], Backend]:
    from rekindle.store.tier import LocalArchiveBackend

    def make(org: int) -> Backend:
        return LocalArchiveBackend(
            root / "orgs" / str(int(org)),
            archive_dir / "orgs" / str(int(org)),
            thaw_delay=thaw_delay,
        )

    return make


def node_app(
    data_dir: Path,
    backend: str | None = None,
    *,
    archive_dir: Path | None = None,
    archive_class: str | None = None,
    thaw_delay_s: float = 0.0,
) -> FastAPI:
    """A node serving DATA_DIR/orgs/<id> (or BACKEND/orgs/<id> on S3), with the cloud's token
    key (token.pub) and the ledger (ledger.sqlite) in DATA_DIR. An archive tier: ARCHIVE_DIR
    for local disks (a thaw takes THAW_DELAY_S), or ARCHIVE_CLASS on S3."""
    from rekindle.net.tokens import load_public

    tier = TierInfo()
    if archive_class and archive_class not in S3_THAW_ESTIMATE_S:
        raise UsageError(f"archive class must be one of {', '.join(S3_THAW_ESTIMATE_S)}")
    if backend:
        factory = s3_factory(backend, archive_class)
        if archive_class:
            tier = TierInfo(archive_class, thaw_delay_s or S3_THAW_ESTIMATE_S[archive_class])
    elif archive_dir is not None:
        factory = local_archive_factory(data_dir, archive_dir, timedelta(seconds=thaw_delay_s))
        tier = TierInfo("local", thaw_delay_s)
    else:
        factory = local_factory(data_dir)
    backends = OrgBackends(
        factory, NodeLedger(data_dir / "ledger.sqlite"), tier, None if backend else data_dir
    )
    return create_app(backends, load_public((data_dir / "token.pub").read_bytes()))


#: What S3 documents for a Standard retrieval: up to 5 hours (GLACIER), 12 (DEEP_ARCHIVE).
S3_THAW_ESTIMATE_S = {"GLACIER": 5 * 3600.0, "DEEP_ARCHIVE": 12 * 3600.0}


def create_app(backends: OrgBackends, token_public: Any) -> FastAPI:
    app = FastAPI(title="Rekindle storage node", version=__version__)

    def fail(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"detail": msg}, status_code=status)

    app.add_exception_handler(TokenError, lambda _r, e: fail(401, str(e)))
    app.add_exception_handler(ScopeError, lambda _r, e: fail(403, str(e)))
    app.add_exception_handler(ObjectNotFoundError, lambda _r, e: fail(404, str(e)))
    app.add_exception_handler(ObjectExistsError, lambda _r, e: fail(409, str(e)))
    app.add_exception_handler(NoSpaceError, lambda _r, e: fail(507, str(e)))
    app.add_exception_handler(ArchivedError, lambda _r, e: fail(423, str(e)))
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
        def granted(pack: str) -> bool:
            packs = backends.ledger.grant(claims.org, claims.grant)
            if packs is None:
                raise ScopeError(
                    "this restore's grant is not known to the storage node (it expired or the "
                    "node's ledger was lost): start the restore again"
                )
            return pack in packs

        if not allowed(claims, op, name, granted):
            if claims.access == "restore" and name.startswith(("data/", "tree/")):
                raise ScopeError(f"{name} is not part of what this restore needs")
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
        backend = backends.get(org)
        if is_pack(name):
            # Packs (16 MiB and more) stream into the backend's spool file, never whole
            # into memory; a local one is then linked into place without another copy.
            spool = await _spooled_body(request, backend)
            if spool is None:
                return fail(413, f"object larger than {MAX_OBJECT} bytes")
            try:
                await run_in_threadpool(
                    lambda: backend.write_spool(name, spool, exclusive=not replace)
                )
            finally:
                spool.close()
            return Response(status_code=201)
        body = await _bounded_body(request)
        if body is None:
            return fail(413, f"object larger than {MAX_OBJECT} bytes")
        if name.startswith("locks/"):
            owner = backends.ledger.lock_owner(org, name)
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
            backends.ledger.set_lock_owner(org, name, claims.job)  # only once the write succeeded
        return Response(status_code=201)

    @app.put("/storage/v1/orgs/{org}/grants/{digest}", status_code=201)
    async def register_grant(org: int, digest: str, request: Request, creds: Creds) -> Response:
        claims = claims_for(org, creds)
        if claims.access != "catalog":
            raise ScopeError("only the cloud registers grants")
        if not _DIGEST.match(digest):
            raise UsageError("a grant digest is 64 lowercase hexadecimal digits")
        body = await _bounded_body(request)
        if body is None:
            return fail(413, f"grant larger than {MAX_OBJECT} bytes")
        await run_in_threadpool(backends.ledger.add_grant, org, digest, body)
        return Response(status_code=201)

    @app.get("/storage/v1/orgs/{org}/usage")
    async def usage(org: int, creds: Creds) -> dict[str, Any]:
        """Bytes the organization's repository takes, and the node's filesystem (none on S3),
        for the cloud's statistics and its storage-full alert (cloud tokens only)."""
        claims = claims_for(org, creds)
        if claims.access not in ("catalog", "maintenance"):
            raise ScopeError(f"a {claims.access} token may not ask for usage")
        backend = backends.get(org)

        def run() -> dict[str, Any]:
            org_bytes = sum(info.size for info in backend.list(""))
            fs = None
            if backends.root is not None:
                du = shutil.disk_usage(backends.root)
                fs = {"total": du.total, "used": du.used, "free": du.free}
            return {"org_bytes": org_bytes, "filesystem": fs}

        return await run_in_threadpool(run)

    @app.get("/storage/v1/tier")
    async def tier_info() -> dict[str, Any]:
        info = backends.tier
        return {
            "archive": bool(info.kind),
            "kind": info.kind,
            "thaw_estimate_s": info.thaw_estimate_s,
        }

    @app.post("/storage/v1/orgs/{org}/tier")
    async def tier(org: int, body: TierRequest, creds: Creds) -> dict[str, Any]:
        """Archive (maintenance token), thaw or ask the state of (catalog or maintenance
        token) data packs; answers the state of each afterwards."""
        claims = claims_for(org, creds)
        allowed_access = ("maintenance",) if body.op == "archive" else ("catalog", "maintenance")
        if claims.access not in allowed_access:
            raise ScopeError(f"a {claims.access} token may not {body.op} packs")
        if not backends.tier.kind:
            raise UsageError("this storage node has no archive tier")
        for name in body.names:
            if not (is_pack(check_name(name)) and name.startswith("data/")):
                raise UsageError(f"{name!r} is not a data pack: only data packs are archived")
        store = archive_of(backends.get(org))
        if store is None:
            raise UsageError("this storage node has no archive tier")

        def run() -> dict[str, str]:
            states = {}
            for name in body.names:
                if body.op == "archive":
                    store.archive(name)
                elif body.op == "thaw":
                    store.thaw(name, body.days)
                states[name] = store.tier_state(name).value
            return states

        return {"states": await run_in_threadpool(run)}

    @app.delete("/storage/v1/orgs/{org}/objects/{name:path}", status_code=204)
    async def delete_object(org: int, name: str, creds: Creds) -> Response:
        claims = claims_for(org, creds)
        check(claims, "delete", check_name(name))
        is_lock = name.startswith("locks/")
        if is_lock and backends.ledger.lock_owner(org, name) != claims.job:
            raise ScopeError("a token may delete only the locks its own job took")
        await run_in_threadpool(backends.get(org).delete, name)
        if is_lock:
            backends.ledger.forget_lock(org, name)
        return Response(status_code=204)

    return app


async def _spooled_body(request: Request, backend: Backend) -> Spool | None:
    """The request body in a spool file of `backend`, or None when it is larger than
    MAX_OBJECT. Written in runs of SPOOL_RUN bytes, each in a worker thread."""
    if int(request.headers.get("content-length") or 0) > MAX_OBJECT:
        return None
    spool = await run_in_threadpool(backend.new_spool)
    try:
        run = bytearray()
        got = 0
        async for piece in request.stream():
            got += len(piece)
            if got > MAX_OBJECT:
                spool.close()
                return None
            run += piece
            if len(run) >= SPOOL_RUN:
                await run_in_threadpool(spool.write, run)
                run = bytearray()
        if run:
            await run_in_threadpool(spool.write, run)
    except BaseException:
        spool.close()  # a dropped connection leaves nothing behind
        raise
    return spool


async def _bounded_body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than MAX_OBJECT (bounded even without a
    Content-Length)."""
    if int(request.headers.get("content-length") or 0) > MAX_OBJECT:
        return None
    parts: list[bytes] = []
    got = 0
    async for piece in request.stream():
        got += len(piece)
        if got > MAX_OBJECT:
            return None
        parts.append(piece)
    return b"".join(parts)
