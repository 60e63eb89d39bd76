"""A backend on a Rekindle storage node, over HTTPS with a storage token.

The node's certificate must chain to the installation's CA (pinned: the system roots are not
consulted). Status codes map back to the storage errors of `store.base`, so the engine above
behaves exactly as on a local or S3 backend; connection trouble and 5xx are transient, and
the retry wrapper handles them.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from rekindle.core.errors import (
    AccessDeniedError,
    ArchivedError,
    NoSpaceError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from rekindle.store.base import Backend, Buffer, ObjectInfo, check_name
from rekindle.store.spool import Spool

#: Pack names per tier request: bounded request bodies and answers; an archive request
#: copies every object (S3), so it takes fewer.
TIER_BATCH = 5000
ARCHIVE_BATCH = 200


class HttpBackend(Backend):
    def __init__(
        self,
        base_url: str,
        org: int,
        token: str | Callable[[], str],
        *,
        ca_file: str,
        timeout: float = 120.0,
    ) -> None:
        self.location = f"{base_url.rstrip('/')}/orgs/{org}"
        self._reopen = (base_url, org, ca_file, timeout)  # for `writer_factory`
        self._org_path = f"/storage/v1/orgs/{int(org)}"
        self._prefix = f"{self._org_path}/objects"
        self._token = token
        ctx = ssl.create_default_context(cafile=ca_file)
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            verify=ctx,
            timeout=httpx.Timeout(timeout, connect=15.0),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    def writer_factory(self) -> Callable[[], Backend] | None:
        """Backup's worker processes store their packs on the node themselves, each with a
        client of its own. The token goes with the factory, through the socket the worker
        gets its setup on; a token that is refreshed (a callable) stays here."""
        if callable(self._token):
            return None
        base_url, org, ca_file, timeout = self._reopen
        return functools.partial(
            HttpBackend, base_url, org, self._token, ca_file=ca_file, timeout=timeout
        )

    def _headers(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}"}

    def _request(
        self,
        method: str,
        name: str,
        *,
        params: dict[str, str] | None = None,
        content: Buffer | Spool | None = None,
        extra: dict[str, str] | None = None,
        url: str | None = None,
    ) -> httpx.Response:
        url = url or self._prefix + (f"/{quote(name)}" if name else "")
        headers = self._headers()
        if extra:
            headers.update(extra)
        body: bytes | Iterator[bytes] | None
        if isinstance(content, Spool):
            # Streamed from disk; a retry streams it again from the start.
            body = content.pieces()
            headers["Content-Length"] = str(content.size)
        else:
            body = bytes(content) if content is not None else None
        try:
            resp = self._client.request(method, url, params=params, content=body, headers=headers)
        except httpx.TransportError as e:
            raise TransientStorageError(f"storage node {self.location}: {e}") from e
        if resp.status_code < 300:
            return resp
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        msg = f"storage node: {detail} ({method} {name or 'list'}: HTTP {resp.status_code})"
        if resp.status_code == 404:
            raise ObjectNotFoundError(msg)
        if resp.status_code == 409:
            raise ObjectExistsError(msg)
        if resp.status_code == 507:
            raise NoSpaceError(msg)
        if resp.status_code == 423:
            raise ArchivedError(msg)
        if resp.status_code == 403:
            raise AccessDeniedError(msg)
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientStorageError(msg)
        raise StorageError(msg)

    def write(self, name: str, data: Buffer, *, exclusive: bool = True) -> None:
        check_name(name)
        self._request("PUT", name, params=None if exclusive else {"replace": "1"}, content=data)

    def write_spool(self, name: str, spool: Spool, *, exclusive: bool = True) -> None:
        check_name(name)
        self._request("PUT", name, params=None if exclusive else {"replace": "1"}, content=spool)

    def register_grant(self, digest: str, body: bytes) -> None:
        """Tell the node which packs a restore may read (needs the cloud's catalog token)."""
        self._request("PUT", "grant", content=body, url=f"{self._org_path}/grants/{digest}")

    def tier(self, op: str, names: list[str], days: int = 7) -> dict[str, str]:
        """Archive, thaw or ask the state of data packs (store/tier.py) on the node, in
        batches; returns each pack's state afterwards. Needs the cloud's maintenance
        (archive) or catalog token."""
        states: dict[str, str] = {}
        step = ARCHIVE_BATCH if op == "archive" else TIER_BATCH
        for i in range(0, len(names), step):
            body = json.dumps({"op": op, "names": names[i : i + step], "days": days}).encode()
            resp = self._request(
                "POST",
                "tier",
                content=body,
                extra={"Content-Type": "application/json"},
                url=f"{self._org_path}/tier",
            )
            states.update(resp.json()["states"])
        return states

    def archive_many(self, names: list[str]) -> None:
        """Move data packs to the node's archive tier (the cloud's maintenance token)."""
        self.tier("archive", names)

    def archive_states(self, names: list[str]) -> dict[str, str]:
        """The tier state of data packs on the node."""
        return self.tier("state", names)

    def usage(self) -> dict[str, Any]:
        """The organization's bytes on the node and the node's filesystem (None on S3)."""
        info: dict[str, Any] = self._request("GET", "usage", url=f"{self._org_path}/usage").json()
        return info

    def tier_info(self) -> dict[str, object]:
        """Whether the node has an archive tier, its kind and the thaw time to expect."""
        info: dict[str, object] = self._request("GET", "tier", url="/storage/v1/tier").json()
        return info

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        if length == 0:
            return b""
        extra = None
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            extra = {"Range": f"bytes={offset}-{end}"}
        data = self._request("GET", name, extra=extra).content
        if length is not None and len(data) != length:
            raise StorageError(f"short read of {name}: {len(data)} of {length} bytes")
        return data

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        resp = self._request("HEAD", name)
        return ObjectInfo(
            name,
            int(resp.headers["content-length"]),
            datetime.fromtimestamp(float(resp.headers["x-rekindle-modified"]), UTC),
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        resp = self._request("GET", "", params={"prefix": prefix})
        for row in resp.json():
            yield ObjectInfo(
                str(row["name"]), int(row["size"]), datetime.fromtimestamp(row["modified"], UTC)
            )

    def delete(self, name: str) -> None:
        check_name(name)
        self._request("DELETE", name)

    def close(self) -> None:
        self._client.close()
