"""A cold restore for real: an agent's backup on a storage node with a local archive tier
(a thaw takes a few seconds there); its data packs are archived (what the tiering job will
do); restoring it goes through the defreeze: the job waits (`defreezing`), the admins get a
mail with the estimate, then one when the data is back, and the restore runs and gives the
files back byte for byte. Mail goes to a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rekindle.net import tokens
from rekindle.store.http import HttpBackend
from tests.helpers import smtp_sink, tree_differences
from tests.system.conftest import Product, installation

THAW_S = 4


def _archive_all_data_packs(product: Product) -> list[str]:
    """With a maintenance token from the cloud's own key, as the cloud's tiering job will."""
    key = tokens.load_or_create_signing_key(product.root / "cloud" / "keys" / "token.key")
    now = int(time.time())
    claims = tokens.StorageClaims(
        org=1, server=0, job=-1, access="maintenance", snapshot="", iat=now, exp=now + 600
    )
    http = HttpBackend(product.storage_url, 1, tokens.sign(key, claims), ca_file=str(product.ca))
    try:
        packs = [i.name for i in http.list("data/")]
        states = http.tier("archive", packs)
    finally:
        http.close()
    assert packs and set(states.values()) == {"archived"}
    return packs


def test_a_cold_restore_goes_through_a_defreeze(tmp_path: Path) -> None:
    with smtp_sink() as sink:
        env = {
            "REKINDLE_CLOUD_SMTP_HOST": "127.0.0.1",
            "REKINDLE_CLOUD_SMTP_PORT": str(sink.port),
            "REKINDLE_CLOUD_SMTP_STARTTLS": "false",
            "REKINDLE_CLOUD_SMTP_FROM": "rekindle@test.example",
            "REKINDLE_CLOUD_MAIL_POLL_S": "0.5",
        }
        storage = ("--archive-dir", str(tmp_path / "archive"), "--thaw-delay-s", str(THAW_S))
        with installation(storage, env) as product:
            src = tmp_path / "src"
            (src / "docs").mkdir(parents=True)
            (src / "docs" / "report.bin").write_bytes(os.urandom(400_000))
            (src / "notes.txt").write_text("cold but not lost\n" * 100)
            product.add_agent("coldhost", src)
            backup = product.backup_now("coldhost")
            assert backup["state"] == "succeeded", backup
            (point,) = product.admin_json("restore-points")
            packs = _archive_all_data_packs(product)

            dest = tmp_path / "restored"
            started = time.monotonic()
            job = product.admin_json("restore", str(point["id"]), "--to-path", str(dest))
            assert job["state"] == "defreezing", job
            detail = product.admin_json("job", str(job["id"]))
            assert detail["params"]["archived"] == sorted(packs)
            assert detail["progress"] == {"thawed": 0, "to_thaw": len(packs)}
            done = product.wait_job(job["id"], timeout=120)
            assert done["state"] == "succeeded", done
            assert time.monotonic() - started >= THAW_S  # it did wait for the thaw
            restored = dest / str(src).lstrip("/")
            assert tree_differences(src, restored) == []

            kinds = [e["kind"] for e in product.admin_json("events")]
            assert kinds.index("defreeze.ready") < kinds.index("defreeze.started")  # newest first
            deadline = time.monotonic() + 30
            while len(sink.messages) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            subjects = [m["Subject"] for _f, _to, m in sink.messages]
            assert subjects == [
                "[Rekindle] default: a defreeze is in progress (coldhost)",
                "[Rekindle] default: the data of a defreeze is ready (coldhost)",
            ]
            started_mail = sink.messages[0]
            assert started_mail[0] == "rekindle@test.example"
            assert started_mail[1] == ["admin@localhost"]
            body = started_mail[2].get_payload()
            assert f"needs {len(packs)} pack(s)" in body
            assert f"takes about {THAW_S} seconds" in body
