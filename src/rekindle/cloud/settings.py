"""Cloud settings: defaults, then a TOML-free env file, then environment variables
(``REKINDLE_CLOUD_*``). Everything needed to run lives under `data_dir`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REKINDLE_CLOUD_", env_file=None)

    data_dir: Path = Path("var/cloud")
    #: SQLAlchemy URL; empty means SQLite at data_dir/cloud.sqlite.
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8443
    #: Names the TLS certificate is valid for (besides `host`).
    hostnames: list[str] = ["localhost", "127.0.0.1"]
    #: Where agents reach the storage node the cloud assigns.
    storage_url: str = "https://127.0.0.1:8444"
    #: Storage tokens live this long (seconds); a job asks again for a long backup.
    token_ttl_s: int = 6 * 3600
    #: How often the scheduler looks for schedules due (seconds).
    scheduler_interval_s: float = 15.0
    #: How often the cloud looks for jobs queued by other cloud processes (seconds).
    queue_watch_s: float = 1.0
    #: An agent counts as connected this long after its last poll ended or its last report
    #: (seconds); a poll connection that drops disconnects it at once.
    connected_grace_s: float = 15.0
    #: Admin session tokens expire after this long idle (seconds).
    session_ttl_s: int = 12 * 3600
    #: Retention (expire, prune, check) runs on each storage this often (hours).
    retention_interval_h: float = 24.0
    #: Prune deletes the packs it condemned only after this long (seconds; docs/FORMAT.md
    #: section 12: longer than any clock difference between the machines).
    prune_grace_s: float = 3600.0
    #: How often the cloud looks for queued retention runs (seconds).
    maintenance_poll_s: float = 10.0
    #: How long the thawed copy of a cold restore's data stays in warm storage (days).
    defreeze_days: int = Field(default=7, ge=1, le=365)
    #: How often the cloud measures each storage's usage (seconds).
    storage_check_s: float = 600.0

    #: Where admins reach the console (links in emails); default: https://HOST:PORT.
    public_url: str = ""
    #: SMTP server for email; empty: no email is sent (events and alerts still are kept).
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_starttls: bool = True
    smtp_user: str = ""
    #: The SMTP password: this variable, or better a file readable by the cloud only.
    smtp_password: SecretStr = SecretStr("")
    smtp_password_file: Path | None = None
    smtp_from: str = "rekindle@localhost"
    #: CA certificates to verify the SMTP server's certificate (default: the system's).
    smtp_ca_file: Path | None = None
    #: How often the cloud sends the emails that are due (seconds).
    mail_poll_s: float = 5.0

    def smtp_secret(self) -> str:
        if self.smtp_password_file is not None:
            return self.smtp_password_file.read_text().strip()
        return self.smtp_password.get_secret_value()

    def console_url(self) -> str:
        return self.public_url or f"https://{self.host}:{self.port}"

    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cloud.sqlite').resolve()}"
