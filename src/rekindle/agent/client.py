"""The agent's HTTPS client to the cloud: mutual TLS with the pinned CA."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import httpx
from pydantic import BaseModel

from rekindle.agent.state import AgentIdentity, AgentState
from rekindle.core.errors import RekindleError, UsageError
from rekindle.net import pki
from rekindle.net import protocol as p


class CloudError(RekindleError):
    """The cloud refused a request (the message says why)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 300:
        return
    try:
        detail = resp.json().get("detail", resp.text)
    except ValueError:
        detail = resp.text
    raise CloudError(f"cloud: {detail} (HTTP {resp.status_code})", resp.status_code)


def fetch_ca(cloud_url: str, expected_fingerprint: str) -> bytes:
    """Fetch the cloud's CA certificate and check it against the fingerprint the admin
    copied from the console: trust on first use, but only with the admin's confirmation."""
    with httpx.Client(verify=False, timeout=15.0) as c:  # noqa: S501 - checked below
        try:
            resp = c.get(f"{cloud_url.rstrip('/')}/agent/v1/ca")
        except httpx.TransportError as e:
            raise CloudError(f"cannot reach the cloud at {cloud_url}: {e}") from e
        _raise_for(resp)
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(resp.content)
    except ValueError as e:
        raise UsageError(f"the cloud sent no valid CA certificate: {e}") from e
    if len(certs) != 1:
        # One certificate exactly: a second one appended by someone in between would
        # otherwise be trusted too, since only the first is checked against the fingerprint.
        raise UsageError(f"the cloud sent {len(certs)} CA certificates, expected one")
    pem = pki.cert_pem(certs[0])
    got = pki.fingerprint(certs[0])
    want = expected_fingerprint.lower().replace(":", "")
    if got != want:
        raise UsageError(
            f"the cloud's CA fingerprint is {got}, not {want}: refusing to enroll "
            "(wrong URL, or someone in between)"
        )
    return pem


def enroll(
    state: AgentState,
    cloud_url: str,
    token: str,
    *,
    ca_pem: bytes,
    hostname: str | None = None,
    os_name: str | None = None,
) -> AgentIdentity:
    state.ensure_dir()
    key = pki.new_key()
    name = hostname or socket.gethostname()
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    req = p.EnrollRequest(
        token=token,
        hostname=name,
        os=os_name or platform_name(),
        csr_pem=pki.make_csr(key, name).decode(),
    )
    with httpx.Client(verify=ctx, timeout=30.0) as c:
        try:
            resp = c.post(f"{cloud_url.rstrip('/')}/agent/v1/enroll", json=req.model_dump())
        except httpx.TransportError as e:
            raise CloudError(f"cannot reach the cloud at {cloud_url}: {e}") from e
        _raise_for(resp)
    out = p.EnrollResponse.model_validate(resp.json())
    pki.write_private(state.ca_file, ca_pem)
    pki.write_private(state.key_file, pki.key_pem(key))
    pki.write_private(state.cert_file, out.certificate_pem.encode())
    ident = AgentIdentity(cloud_url.rstrip("/"), out.server_id, out.org_id)
    state.save_identity(ident)
    return ident


def platform_name() -> str:
    import platform

    return f"{platform.system()} {platform.release()}"


class CloudClient:
    def __init__(self, state: AgentState) -> None:
        self.ident = state.identity()
        ctx = ssl.create_default_context(cafile=str(state.ca_file))
        ctx.load_cert_chain(str(state.cert_file), str(state.key_file))
        self._http = httpx.Client(
            base_url=self.ident.cloud_url,
            verify=ctx,
            timeout=httpx.Timeout(p.POLL_WAIT_S + 30, connect=15.0),
        )

    def _post(self, path: str, body: BaseModel, **params: Any) -> httpx.Response:
        try:
            resp = self._http.post(
                path,
                content=body.model_dump_json(),
                params=params,
                headers={"Content-Type": "application/json"},
            )
        except httpx.TransportError as e:
            raise CloudError(f"cannot reach the cloud: {e}") from e
        _raise_for(resp)
        return resp

    def poll(self, hb: p.Heartbeat, wait: float = p.POLL_WAIT_S) -> p.JobAssignment | None:
        resp = self._post("/agent/v1/poll", hb, wait=wait)
        return p.PollResponse.model_validate(resp.json()).job

    def progress(self, job_id: int, prog: p.Progress) -> p.ProgressAck:
        resp = self._post(f"/agent/v1/jobs/{job_id}/progress", prog)
        return p.ProgressAck.model_validate(resp.json())

    def result(self, job_id: int, res: p.JobResult) -> None:
        self._post(f"/agent/v1/jobs/{job_id}/result", res)

    def close(self) -> None:
        self._http.close()
