"""Email, delivered to a real SMTP server (aiosmtpd on 127.0.0.1): what is mailed, to whom,
with STARTTLS and AUTH, and what happens when the mail server is down."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from fastapi.testclient import TestClient

from rekindle.cloud.mailer import RETRY_DELAYS, Mailer, SmtpSettings
from rekindle.cloud.models import OutboundEmail
from rekindle.net import pki
from rekindle.net import protocol as p
from tests.cloud.conftest import Cloud
from tests.conftest import _free_port
from tests.helpers import Sink, smtp_sink, start_smtp

PASSWORD = "s3cret-smtp-pass"


@pytest.fixture
def smtp() -> Iterator[Sink]:
    with smtp_sink() as sink:
        yield sink


@pytest.fixture
def smtp_tls(tmp_path: Path) -> Iterator[tuple[Sink, Path]]:
    """STARTTLS required, then AUTH (LOGIN or PLAIN) with one user."""
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "mail-ca")
    pki.ensure_server_cert(ca, tmp_path / "mail-tls", ["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "mail-tls" / "tls.pem", tmp_path / "mail-tls" / "tls.key")
    sink = Sink(_free_port())

    def authenticate(_server: Any, _session: Any, _envelope: Any, _mech: str, data: Any) -> Any:
        ok = isinstance(data, LoginPassword) and data.password == PASSWORD.encode()
        if ok:
            sink.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)

    controller = start_smtp(
        sink,
        tls_context=ctx,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )
    yield sink, tmp_path / "mail-ca" / "ca.pem"
    controller.stop()


def _mailer(cloud: Cloud, port: int, **kw: Any) -> Mailer:
    cloud.svc.email = True
    settings = SmtpSettings(host="127.0.0.1", port=port, **{"starttls": False, **kw})
    return Mailer(cloud.svc.db, cloud.clock, settings)


def _fail_for_good(cloud: Cloud, hostname: str) -> int:
    """A backup that fails on every attempt of the default policy (2 retries)."""
    server = cloud.enroll(hostname)
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    cloud.svc.backup_now(cloud.admin, server, None)
    for _ in range(3):
        cloud.connect(server)
        job = cloud.svc.claim_job(server)
        assert job is not None
        cloud.svc.finish_job(server, job.job_id, p.JobResult(state="failed", error="disk gone"))
        cloud.clock.advance(31 * 60)
    return server


def test_a_backup_that_fails_after_its_last_retry_is_mailed_to_the_admins(
    cloud: Cloud, smtp: Sink
) -> None:
    mailer = _mailer(cloud, smtp.port, sender="backup@acme.test")
    server = cloud.enroll("quiet")
    cloud.svc.create_backup_set(cloud.admin, server, "files", ["/srv"], [])
    cloud.backup_reported(server, p.JobResult(state="failed", error="one bad night"))
    assert mailer.deliver_due() == 0  # a failure that will be retried is not mailed
    _fail_for_good(cloud, "web1")
    assert mailer.deliver_due() == 1
    ((sender, rcpt, msg),) = smtp.messages
    assert sender == "backup@acme.test" and rcpt == ["admin@acme.test"]
    assert msg["Subject"] == "[Rekindle] acme: a backup failed after its last retry (h)"
    body = msg.get_payload()
    assert "failed after 3 attempts" in body and "Server: h" in body
    assert mailer.deliver_due() == 0  # sent once
    (row,) = cloud.svc.list_emails(cloud.admin)
    assert (row.state, row.attempts) == ("sent", 1)


def test_starttls_and_auth(cloud: Cloud, smtp_tls: tuple[Sink, Path]) -> None:
    sink, ca_file = smtp_tls
    cloud.svc.set_notifications(
        cloud.admin, recipients=["ops@acme.test", "oncall@acme.test"], offline_after_hours=None
    )
    mailer = _mailer(
        cloud, sink.port, starttls=True, user="rekindle", password=PASSWORD, ca_file=ca_file
    )
    _fail_for_good(cloud, "web2")
    assert mailer.deliver_due() == 1
    assert sink.logins == ["rekindle"]
    ((_sender, rcpt, _msg),) = sink.messages
    assert rcpt == ["oncall@acme.test", "ops@acme.test"]
    assert PASSWORD not in repr(mailer.smtp)


def test_a_wrong_password_or_an_unknown_certificate_is_retried_and_not_leaked(
    cloud: Cloud, smtp_tls: tuple[Sink, Path]
) -> None:
    sink, ca_file = smtp_tls
    mailer = _mailer(
        cloud, sink.port, starttls=True, user="rekindle", password="wrong", ca_file=ca_file
    )
    _fail_for_good(cloud, "web3")
    assert mailer.deliver_due() == 0
    (row,) = cloud.svc.list_emails(cloud.admin)
    assert row.state == "queued" and row.attempts == 1
    assert row.last_error is not None and "SMTPAuthenticationError" in row.last_error
    assert "wrong" not in row.last_error
    # the system's CAs do not know the test server's certificate: refused, kept for later
    mailer.smtp = SmtpSettings(host="127.0.0.1", port=sink.port, user="x", password=PASSWORD)
    cloud.clock.advance(RETRY_DELAYS[0].total_seconds())
    assert mailer.deliver_due() == 0
    (row,) = cloud.svc.list_emails(cloud.admin)
    assert row.attempts == 2 and "CERTIFICATE_VERIFY_FAILED" in (row.last_error or "")
    assert sink.messages == []


def test_a_mail_server_that_is_down_delays_mail_until_it_gives_up(cloud: Cloud) -> None:
    mailer = _mailer(cloud, _free_port())  # nobody listens there
    _fail_for_good(cloud, "web4")
    for delay in RETRY_DELAYS:
        assert mailer.deliver_due() == 0
        assert mailer.deliver_due() == 0  # not due again before its delay
        cloud.clock.advance(delay.total_seconds())
    assert mailer.deliver_due() == 0
    (row,) = cloud.svc.list_emails(cloud.admin)
    assert (row.state, row.attempts) == ("failed", len(RETRY_DELAYS) + 1)
    assert "ConnectionRefusedError" in (row.last_error or "")


def test_an_agent_not_seen_for_the_set_hours_raises_one_alert_and_one_mail(
    cloud: Cloud, smtp: Sink
) -> None:
    mailer = _mailer(cloud, smtp.port)
    cloud.svc.set_notifications(cloud.admin, recipients=None, offline_after_hours=6)
    server = cloud.enroll("laptop")
    cloud.connect(server)
    cloud.clock.advance(5 * 3600)
    assert cloud.svc.check_offline_agents() == 0
    cloud.clock.advance(3600 + 1)
    assert cloud.svc.check_offline_agents() == 1
    assert cloud.svc.check_offline_agents() == 0  # once per silence
    (alert,) = cloud.svc.list_events(cloud.admin, alerts=True)
    assert alert.kind == "agent.offline" and "more than 6 hours" in alert.message
    assert mailer.deliver_due() == 1
    assert "an agent is not connecting (h)" in smtp.messages[0][2]["Subject"]
    # back, then silent again: a new alert
    cloud.connect(server)
    cloud.clock.advance(7 * 3600)
    assert cloud.svc.check_offline_agents() == 1
    # a disabled server raises nothing
    cloud.svc.set_server_enabled(cloud.admin, server, False)
    cloud.clock.advance(7 * 3600)
    assert cloud.svc.check_offline_agents() == 0


def test_notification_settings(api: TestClient, cloud: Cloud) -> None:
    r = api.get("/api/v1/notifications")
    assert r.json() == {
        "recipients": [],
        "effective_recipients": ["admin@acme.test"],
        "offline_after_hours": 24,
        "email_enabled": False,
    }
    r = api.put("/api/v1/notifications", json={"recipients": ["ops@acme.test"]})
    assert r.status_code == 200 and r.json()["effective_recipients"] == ["ops@acme.test"]
    r = api.put("/api/v1/notifications", json={"recipients": ["not an address"]})
    assert r.status_code == 422 and "not an email address" in r.json()["detail"]
    r = api.put("/api/v1/notifications", json={"offline_after_hours": 0})
    assert r.status_code == 422
    cloud.svc.create_admin(cloud.admin, "ro@acme.test", "read_only", [])
    with cloud.svc.db.session() as s:
        assert s.query(OutboundEmail).count() == 0  # SMTP is not configured: nothing queued
    assert "notifications.update" in [a["action"] for a in api.get("/api/v1/audit").json()]


def test_one_mail_that_cannot_be_built_does_not_hold_up_the_others(
    cloud: Cloud, smtp: Sink
) -> None:
    from datetime import timedelta as td

    mailer = _mailer(cloud, smtp.port)
    now = cloud.clock.now()
    with cloud.svc.db.session() as s:
        for to, subject in (
            (["ops@acme.test\r\nBcc: evil@example.com"], "injected"),
            (["ops@acme.test"], "line\r\nbreak"),
        ):
            s.add(
                OutboundEmail(
                    org_id=cloud.admin.org_id,
                    recipients=to,
                    subject=subject,
                    body="x\n",
                    created=now - td(minutes=1),
                    state="queued",
                    next_try=now,
                )
            )
    assert mailer.deliver_due() == 1
    bad, good = sorted(cloud.svc.list_emails(cloud.admin), key=lambda m: m.id)
    assert bad.state == "failed" and bad.attempts == 1 and "ValueError" in (bad.last_error or "")
    assert good.state == "sent"
    ((_sender, rcpt, msg),) = smtp.messages
    assert rcpt == ["ops@acme.test"] and msg["Subject"] == "line break"


def test_a_hostname_with_a_line_break_is_refused_at_enrollment(cloud: Cloud) -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        p.EnrollRequest(token="rka_" + "x" * 20, hostname="web\nBcc: x", os="Linux", csr_pem="x")
