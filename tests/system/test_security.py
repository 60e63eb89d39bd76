"""Security at the edges, against real processes over TLS: agents need a certificate from
the cloud's own CA and an enabled server; storage tokens must be genuine, fresh, for the
right organization and used only for their access."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rekindle.net import pki, tokens
from tests.system.conftest import Product


@pytest.fixture(scope="module")
def enrolled(product: Product) -> Path:
    """One agent, enrolled and with one backup done (so packs exist)."""
    group = product.admin_json("groups")[0]["id"]
    sid = product.enroll("sec", group)
    src = product.root / "src-sec"
    src.mkdir()
    (src / "secret.txt").write_text("only for org 1\n")
    product.admin("backup-set-add", str(sid), "files", "--include", str(src))
    product.start_agent("sec")
    product.wait_connected("sec")
    assert (b := product.backup_now("sec"))["state"] == "succeeded", b
    product.stop("agent-sec")
    return product.agent_dir("sec")


def _agent_client(product: Product, agent: Path | None, ca: Path | None = None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(ca or product.ca))
    if agent is not None:
        ctx.load_cert_chain(str(agent / "client.pem"), str(agent / "client.key"))
    return httpx.Client(base_url=product.cloud_url, verify=ctx, timeout=10)


HB = {"version": "t", "os": "Linux", "hostname": "sec"}


def test_agent_endpoints_need_a_client_certificate(product: Product, enrolled: Path) -> None:
    with _agent_client(product, None) as c:
        r = c.post("/agent/v1/poll?wait=0", json=HB)
    assert r.status_code == 401
    assert "client certificate" in r.json()["detail"]
    with _agent_client(product, enrolled) as c:
        assert c.post("/agent/v1/poll?wait=0", json=HB).status_code == 200


def test_a_certificate_from_another_ca_is_refused(product: Product, tmp_path: Path) -> None:
    rogue = pki.CertificateAuthority.create("rogue")
    key = pki.new_key()
    cert = rogue.sign_client_csr(pki.make_csr(key, "x"), "server-1")
    (tmp_path / "client.pem").write_bytes(pki.cert_pem(cert))
    (tmp_path / "client.key").write_bytes(pki.key_pem(key))
    with pytest.raises(httpx.TransportError), _agent_client(product, tmp_path) as c:
        c.post("/agent/v1/poll?wait=0", json=HB)


def test_disabling_a_server_revokes_its_agent_at_once(product: Product, enrolled: Path) -> None:
    sid = product.servers["sec"]
    product.admin("server-disable", str(sid))
    try:
        with _agent_client(product, enrolled) as c:
            r = c.post("/agent/v1/poll?wait=0", json=HB)
        assert r.status_code == 403
        assert "disabled" in r.json()["detail"]
    finally:
        product.admin("server-enable", str(sid))
    with _agent_client(product, enrolled) as c:
        assert c.post("/agent/v1/poll?wait=0", json=HB).status_code == 200


def test_malformed_agent_input_gets_a_4xx(product: Product, enrolled: Path) -> None:
    with _agent_client(product, None) as c:
        r = c.post(
            "/agent/v1/enroll",
            json={
                "token": "rka_unknown-token",
                "hostname": "h",
                "os": "Linux",
                "csr_pem": "garbage",
            },
        )
        assert r.status_code == 401
        r = c.post(
            "/agent/v1/enroll", content=b"\xff\x00", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422
    with _agent_client(product, enrolled) as c:
        r = c.post("/agent/v1/jobs/999999/result", json={"state": "succeeded"})
        assert r.status_code == 404
        r = c.post("/agent/v1/jobs/1/result", json={"state": "exploded"})
        assert r.status_code == 422


def _token(product: Product, *, key: Ed25519PrivateKey | None = None, **over: object) -> str:
    real = tokens.load_or_create_signing_key(product.root / "cloud" / "keys" / "token.key")
    now = int(time.time())
    claims = {
        "org": 1,
        "server": 1,
        "job": 1,
        "access": "backup",
        "snapshot": "",
        "iat": now,
        "exp": now + 600,
        **over,
    }
    return tokens.sign(key or real, tokens.StorageClaims(**claims))  # type: ignore[arg-type]


def _storage(product: Product, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ctx = ssl.create_default_context(cafile=str(product.ca))
    return httpx.Client(
        base_url=f"{product.storage_url}/storage/v1/orgs", verify=ctx, headers=headers, timeout=10
    )


def _a_pack(product: Product) -> str:
    root = product.root / "storage" / "orgs" / "1"
    pack = next(p for p in (root / "data").rglob("*") if p.is_file())
    return str(pack.relative_to(root))


def test_storage_tokens_must_be_genuine_and_fresh(product: Product, enrolled: Path) -> None:
    del enrolled
    with _storage(product, None) as c:
        assert c.get("/1/objects/config").status_code == 401
    with _storage(product, _token(product, key=Ed25519PrivateKey.generate())) as c:
        r = c.get("/1/objects/config")
        assert r.status_code == 401 and "signature" in r.json()["detail"]
    expired = _token(product, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    with _storage(product, expired) as c:
        r = c.get("/1/objects/config")
        assert r.status_code == 401 and "expired" in r.json()["detail"]
    body = json.dumps({"org": 1}).encode()
    with _storage(product, "rkt1." + body.hex() + ".AAAA") as c:
        assert c.get("/1/objects/config").status_code == 401
    with _storage(product, _token(product)) as c:
        assert c.get("/1/objects/config").status_code == 200


def test_a_backup_token_cannot_read_list_or_delete_data(product: Product, enrolled: Path) -> None:
    del enrolled
    pack = _a_pack(product)
    with _storage(product, _token(product)) as c:
        assert c.get(f"/1/objects/{pack}").status_code == 403
        assert c.get("/1/objects", params={"prefix": "data/"}).status_code == 403
        assert c.delete(f"/1/objects/{pack}").status_code == 403
        assert c.put(f"/1/objects/{pack}?replace=1", content=b"x").status_code == 403
        assert c.put("/1/objects/config", content=b"x").status_code == 403  # no re-keying
        # nor read or list restore points: the cloud names the parent in the job
        snap = _objects(product, "snapshots")[0]
        assert c.get(f"/1/objects/{snap}").status_code == 403
        assert c.get("/1/objects", params={"prefix": "snapshots/"}).status_code == 403
        # what it may do: see which chunks exist (index) and add data
        assert c.get("/1/objects", params={"prefix": "index/"}).status_code == 200
    with _storage(product, _token(product, access="restore", snapshot="00" * 32)) as c:
        assert c.put("/1/objects/data/00/" + "00" * 32, content=b"x").status_code == 403
        snaps = c.get("/1/objects", params={"prefix": "snapshots/"}).json()
        assert snaps == []  # it sees only the restore point it was issued for
        assert c.get("/1/objects", params={"prefix": "data/"}).status_code == 403


def test_a_restore_token_reads_only_the_packs_its_restore_needs(
    product: Product, enrolled: Path
) -> None:
    """The cloud plans each restore and registers its grant with the node; the agent's token
    reads those packs and no others, and only the cloud can register a grant."""
    del enrolled
    first_packs = set(_objects(product, "data"))
    first_rp = product.admin_json("restore-points", "--server", str(product.servers["sec"]))[0]
    (product.root / "src-sec" / "later.bin").write_bytes(os.urandom(300_000))
    product.start_agent("sec")
    product.wait_connected("sec")
    try:
        assert (b := product.backup_now("sec"))["state"] == "succeeded", b
    finally:
        product.stop("agent-sec")
    later_packs = set(_objects(product, "data")) - first_packs
    assert first_packs and later_packs

    # A path the restore point does not hold is refused before anything is queued.
    bad = product.admin("restore", str(first_rp["id"]), "--include", "/nope", check=False)
    assert bad.returncode != 0 and "does not hold /nope" in bad.stderr
    job = product.admin_json("restore", str(first_rp["id"]), "--to-path", "/tmp/never")
    with _agent_client(product, product.agent_dir("sec")) as c:
        got = c.post("/agent/v1/poll?wait=0", json=HB).json()["job"]
        assert got is not None, product.admin("jobs").stdout
        assert got["job_id"] == job["id"]
        claims = tokens.verify(_public(product), got["storage_token"])
        assert claims.access == "restore" and len(claims.grant) == 64
        with _storage(product, got["storage_token"]) as s:
            for pack in first_packs:
                assert s.get(f"/1/objects/{pack}").status_code == 200
            for pack in later_packs:
                r = s.get(f"/1/objects/{pack}")
                assert r.status_code == 403 and "not part of" in r.json()["detail"]
            # agents cannot widen a grant: only the cloud's catalog token registers one
            body = "\n".join(sorted(later_packs)).encode()
            digest = hashlib.sha256(body).hexdigest()
            assert s.put(f"/1/grants/{digest}", content=body).status_code == 403
        r = c.post(f"/agent/v1/jobs/{job['id']}/result", json={"state": "failed", "error": "t"})
        assert r.status_code == 204
    with _storage(product, _token(product, access="catalog")) as cat:
        assert cat.put(f"/1/grants/{'0' * 64}", content=body).status_code == 400  # digest
        assert cat.put(f"/1/grants/{digest}", content=b"../config").status_code == 400
    unknown = _token(product, access="restore", grant="ab" * 32)
    with _storage(product, unknown) as s:
        r = s.get(f"/1/objects/{next(iter(first_packs))}")
        assert r.status_code == 403 and "start the restore again" in r.json()["detail"]


def _objects(product: Product, kind: str) -> list[str]:
    root = product.root / "storage" / "orgs" / "1"
    return [str(p.relative_to(root)) for p in (root / kind).rglob("*") if p.is_file()]


def _public(product: Product) -> Any:
    return tokens.load_public((product.root / "cloud" / "keys" / "token.pub").read_bytes())


def test_one_organization_cannot_touch_anothers_data(product: Product, enrolled: Path) -> None:
    del enrolled
    pack = _a_pack(product)
    with _storage(product, _token(product, org=2, access="restore")) as c:
        r = c.get(f"/1/objects/{pack}")
        assert r.status_code == 403 and "another organization" in r.json()["detail"]
        assert c.get("/1/objects", params={"prefix": "index/"}).status_code == 403


def test_hostile_object_names_are_refused(product: Product) -> None:
    with _storage(product, _token(product, access="restore")) as c:
        # httpx removes literal dot segments itself; encoded ones reach the server as '..'
        for name in (
            "../../cloud/keys/token.key",
            "%2e%2e/%2e%2e/etc/passwd",
            "data/%2e%2e/config",
            "data/%2e%2e/%2e%2e/%2e%2e/cloud/keys/token.key",
        ):
            r = c.get(f"/1/objects/{name}")
            assert r.status_code in (400, 403, 404), (name, r.status_code)
            assert b"PRIVATE KEY" not in r.content
        r = c.get("/1/objects/data/%2e%2e/config")
        assert r.status_code == 400 and "invalid object name" in r.json()["detail"]


def test_out_of_range_numbers_and_limits_get_a_4xx(product: Product) -> None:
    cfg = json.loads((product.root / "admin.json").read_text())
    ctx = ssl.create_default_context(cafile=str(product.ca))
    with httpx.Client(
        base_url=product.cloud_url,
        verify=ctx,
        timeout=10,
        headers={"Authorization": f"Bearer {cfg['token']}"},
    ) as c:
        assert c.get("/api/v1/jobs/99999999999999999999").status_code == 422
        assert c.get("/api/v1/jobs", params={"limit": -1}).status_code == 422
        assert c.get("/api/v1/events", params={"limit": 10**9}).status_code == 422
    with _storage(product, _token(product, access="restore")) as c:
        r = c.get("/1/objects/config", headers={"Range": "bytes=0-99999999999999999999"})
        assert r.status_code == 400


def test_a_lock_written_by_another_job_cannot_be_taken_over(product: Product) -> None:
    name = "locks/" + "ab" * 32
    with _storage(product, _token(product, job=101)) as owner:
        assert owner.put(f"/1/objects/{name}", content=b"lock").status_code == 201
    with _storage(product, _token(product, job=102)) as other:
        assert other.put(f"/1/objects/{name}", content=b"x").status_code == 409
        assert other.put(f"/1/objects/{name}?replace=1", content=b"x").status_code == 403
        assert other.delete(f"/1/objects/{name}").status_code == 403
    with _storage(product, _token(product, job=101)) as owner:
        assert owner.delete(f"/1/objects/{name}").status_code == 204


def test_lock_ownership_survives_a_storage_node_restart(product: Product) -> None:
    from tests.system.conftest import _wait_healthy

    name = "locks/" + "cd" * 32
    with _storage(product, _token(product, job=201)) as owner:
        assert owner.put(f"/1/objects/{name}", content=b"lock").status_code == 201
    product.stop("storage")
    proc = product.start(
        "storage",
        "storage",
        "serve",
        "--data-dir",
        str(product.root / "storage"),
        "--port",
        product.storage_url.rsplit(":", 1)[1],
    )
    _wait_healthy(product.storage_url, product.ca, proc, product.root / "storage.log")
    with _storage(product, _token(product, job=202)) as other:
        assert other.delete(f"/1/objects/{name}").status_code == 403
    with _storage(product, _token(product, job=201)) as owner:
        assert owner.put(f"/1/objects/{name}?replace=1", content=b"lock2").status_code == 201
        assert owner.delete(f"/1/objects/{name}").status_code == 204
