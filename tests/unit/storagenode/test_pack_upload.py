"""Packs reach the storage node's disk by streaming into a spool file: stored byte for byte,
and a body that is too large or cut short leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rekindle.net import tokens
from rekindle.storagenode import app as node
from rekindle.storagenode.app import OrgBackends, create_app, local_factory

PACK = "data/ab/" + "ab" * 32


def _setup(tmp_path: Path) -> tuple[Any, dict[str, str]]:
    key = Ed25519PrivateKey.generate()
    app = create_app(OrgBackends(local_factory(tmp_path)), key.public_key())
    now = int(time.time())
    claims = tokens.StorageClaims(
        org=1, server=1, job=1, access="backup", snapshot="", iat=now, exp=now + 600
    )
    return app, {"Authorization": f"Bearer {tokens.sign(key, claims)}"}


def _files(tmp_path: Path) -> list[str]:
    root = tmp_path / "orgs" / "1"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def _put(app: Any, headers: dict[str, str], data: bytes) -> httpx.Response:
    async def pieces() -> Any:
        for i in range(0, len(data), 100_000):  # many pieces, as a network delivers them
            yield data[i : i + 100_000]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        return await client.put(
            f"/storage/v1/orgs/1/objects/{PACK}",
            content=pieces(),
            headers={**headers, "Content-Length": str(len(data))},
        )


def test_a_streamed_pack_is_stored_whole(tmp_path: Path) -> None:
    app, headers = _setup(tmp_path)
    data = os.urandom(3 * node.SPOOL_RUN + 4321)
    assert asyncio.run(_put(app, headers, data)).status_code == 201
    assert _files(tmp_path) == [PACK]
    assert (tmp_path / "orgs" / "1" / PACK).read_bytes() == data
    again = asyncio.run(_put(app, headers, os.urandom(100)))
    assert again.status_code == 409  # packs are written once
    assert _files(tmp_path) == [PACK]


def test_a_pack_over_the_limit_is_refused_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node, "MAX_OBJECT", 250_000)
    app, headers = _setup(tmp_path)
    resp = asyncio.run(_put(app, headers, os.urandom(300_000)))
    assert resp.status_code == 413
    assert _files(tmp_path) == []


def test_a_body_cut_short_leaves_nothing(tmp_path: Path) -> None:
    """The client goes away halfway through the body (raw ASGI: the server is told so)."""
    app, headers = _setup(tmp_path)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": os.urandom(node.SPOOL_RUN + 10), "more_body": True},
        {"type": "http.request", "body": os.urandom(1000), "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": f"/storage/v1/orgs/1/objects/{PACK}",
        "raw_path": f"/storage/v1/orgs/1/objects/{PACK}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", headers["Authorization"].encode()),
            (b"content-length", str(50 * node.SPOOL_RUN).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("node", 443),
    }
    with contextlib.suppress(Exception):  # how the framework ends a disconnected request
        asyncio.run(app(scope, receive, send))
    assert _files(tmp_path) == []
    assert not any(m.get("status") == 201 for m in sent)
