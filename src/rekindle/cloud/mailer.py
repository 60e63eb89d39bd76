"""Email: the outbox and its delivery over SMTP.

Events worth a mail (a backup that failed after its last retry, an agent not seen for a
while, a failed retention run, and later defreezes and full storage) put a row in
`outbound_emails` in the same transaction as the event. The cloud's mail task delivers due
rows with smtplib (STARTTLS and AUTH when configured), and on failure tries again later with
a growing delay, so a mail server that is down loses nothing and holds up nothing. Delivery
is at least once: a cloud process that dies between sending and recording sends again.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from rekindle.cloud.db import Database
from rekindle.cloud.models import Admin, Organization, OutboundEmail
from rekindle.core.clock import Clock

log = logging.getLogger(__name__)

#: Delays before the 2nd, 3rd, ... attempt; after the last one the mail is given up.
RETRY_DELAYS = [timedelta(minutes=m) for m in (1, 5, 15, 60, 180, 720)]
#: A claimed mail is tried again after this long if its process died while sending.
LEASE = timedelta(minutes=5)

#: Event kinds that are mailed, with the subject line's words.
MAILED_EVENTS = {
    "job.gave_up": "a backup failed after its last retry",
    "agent.offline": "an agent is not connecting",
    "retention.failed": "a retention run failed",
    "storage.full": "a storage is nearly full",
    "defreeze.started": "a defreeze is in progress",
    "defreeze.ready": "the data of a defreeze is ready",
    "defreeze.failed": "a defreeze failed",
}


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    starttls: bool = True
    user: str = ""
    password: str = ""
    sender: str = "rekindle@localhost"
    #: CA certificates to check the mail server's with (default: the system's).
    ca_file: Path | None = None
    timeout_s: float = 30.0

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return f"SmtpSettings(host={self.host!r}, port={self.port}, user={self.user!r})"


def one_line(text: str) -> str:
    """Header text without line breaks (a hostname an agent sent ends up in subjects)."""
    return " ".join(text.split())


def recipients(s: Session, org: Organization) -> list[str]:
    """The organization's recipients, or its enabled organization admins when none is set."""
    if org.notify_emails:
        return list(org.notify_emails)
    admins = s.scalars(
        select(Admin.email).where(
            Admin.org_id == org.id, Admin.role == "org_admin", Admin.disabled.is_(False)
        )
    )
    return sorted(admins.all())


def enqueue(s: Session, org_id: int, now: datetime, subject: str, body: str) -> None:
    org = s.get(Organization, org_id)
    if org is None:
        return
    to = recipients(s, org)
    if not to:
        log.warning("organization %s has nobody to email: %s", org.name, subject)
        return
    s.add(
        OutboundEmail(
            org_id=org_id,
            recipients=to,
            subject=one_line(f"[Rekindle] {org.name}: {subject}")[:300],
            body=body,
            created=now,
            state="queued",
            next_try=now,
        )
    )


class Mailer:
    def __init__(self, db: Database, clock: Clock, smtp: SmtpSettings) -> None:
        self.db = db
        self.clock = clock
        self.smtp = smtp

    def deliver_due(self, limit: int = 20) -> int:
        """Send the mails that are due; returns how many were sent."""
        sent = 0
        for mail_id in self._claim(limit):
            if self._deliver(mail_id):
                sent += 1
        return sent

    def _claim(self, limit: int) -> list[int]:
        now = self.clock.now()
        claimed = []
        with self.db.session() as s:
            due = s.scalars(
                select(OutboundEmail)
                .where(OutboundEmail.state == "queued", OutboundEmail.next_try <= now)
                .order_by(OutboundEmail.id)
                .limit(limit)
            ).all()
            for mail in due:
                # a lease: another cloud process skips it; a crash retries after LEASE
                moved = s.execute(
                    update(OutboundEmail)
                    .where(OutboundEmail.id == mail.id, OutboundEmail.next_try == mail.next_try)
                    .values(next_try=now + LEASE)
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(mail.id)
        return claimed

    def _deliver(self, mail_id: int) -> bool:
        error: str | None = None
        final = False
        with self.db.session() as s:
            mail = s.get(OutboundEmail, mail_id)
            if mail is None:
                return False
            try:
                msg = self._message(mail)
            except (ValueError, TypeError) as e:  # a mail that cannot be built never will be
                error, final = f"{type(e).__name__}: {e}", True
        if error is None:
            try:
                self._send(msg)
            except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
                error = f"{type(e).__name__}: {e}"
                log.warning("email %d not sent: %s", mail_id, error)
            except Exception as e:  # anything else: this mail only, not the whole batch
                error = f"{type(e).__name__}: {e}"
                log.exception("email %d not sent", mail_id)
        now = self.clock.now()
        with self.db.session() as s:
            mail = s.get(OutboundEmail, mail_id)
            if mail is None:
                return False
            mail.attempts += 1
            if error is None:
                mail.state, mail.sent, mail.last_error = "sent", now, None
                return True
            mail.last_error = error
            if final or mail.attempts > len(RETRY_DELAYS):
                mail.state = "failed"
                log.error("email %d given up after %d attempts: %s", mail_id, mail.attempts, error)
            else:
                mail.next_try = now + RETRY_DELAYS[mail.attempts - 1]
            return False

    def _message(self, mail: OutboundEmail) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.smtp.sender
        msg["To"] = ", ".join(mail.recipients)
        msg["Subject"] = one_line(mail.subject)
        msg["Date"] = format_datetime(mail.created)
        msg["Message-ID"] = make_msgid(domain="rekindle")
        msg.set_content(mail.body)
        return msg

    def _send(self, msg: EmailMessage) -> None:
        cfg = self.smtp
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
            if cfg.starttls:
                ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
                smtp.starttls(context=ctx)
            if cfg.user:
                smtp.login(cfg.user, cfg.password)
            smtp.send_message(msg)
