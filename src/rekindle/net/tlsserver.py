"""Serve an ASGI app over HTTPS with uvicorn, telling the app which client certificate the
connection presented.

The protocol is uvicorn's httptools one (a C parser): packs of many MiB go through these
servers, and the pure-Python h11 parser costs a visible share of a backup's CPU.

uvicorn verifies client certificates against the CA (``ssl_cert_reqs``) but does not hand the
certificate to the application. The cloud needs it: an agent is identified, and can be
revoked at once, by its certificate's fingerprint. `PeerCertProtocol` puts the DER bytes into
``scope["extensions"]["tls"]["client_cert_der"]`` (the shape of the ASGI TLS extension).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class PeerCertProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        inner: ASGIApp = self.app

        async def with_peer(scope: Scope, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = {"client_cert_der": der}
            await inner(scope, receive, send)

        self.app = with_peer


def client_cert_der(scope: Scope) -> bytes | None:
    ext = scope.get("extensions") or {}
    tls = ext.get("tls") or {}
    der = tls.get("client_cert_der")
    return der if isinstance(der, bytes) else None


def make_server(
    app: Any,
    *,
    host: str,
    port: int,
    certfile: Path,
    keyfile: Path,
    client_ca: Path | None = None,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn server on TLS. With `client_ca`, clients may present a certificate, which
    must then chain to that CA (the handshake fails otherwise); endpoints that need one
    check it themselves."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        ssl_ca_certs=str(client_ca) if client_ca else None,
        ssl_cert_reqs=ssl.CERT_OPTIONAL if client_ca else ssl.CERT_NONE,
        http=PeerCertProtocol,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=75,
        lifespan="on",
    )
    return uvicorn.Server(config)
