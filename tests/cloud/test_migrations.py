"""The Alembic migrations, on SQLite and PostgreSQL: they build exactly the schema the models
describe, go down and up again, and an upgrade keeps the rows already there."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from rekindle.cloud.db import Database, alembic_config
from rekindle.cloud.models import Base


def _upgrade(db: Database, revision: str) -> None:
    cfg = alembic_config(db.engine.url.render_as_string(hide_password=False))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _downgrade(db: Database, revision: str) -> None:
    cfg = alembic_config(db.engine.url.render_as_string(hide_password=False))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_the_migrations_build_the_models_schema(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.migrate()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        _downgrade(db, "base")
        db.migrate()
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        db.close()


def test_an_upgrade_keeps_the_rows_and_fills_new_columns(database_url: str) -> None:
    db = Database(database_url)
    try:
        _upgrade(db, "0003")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO organizations (id, name, created, repo_key_sealed) "
                    "VALUES (1, 'acme', :t, :k)"
                ),
                {"t": datetime(2026, 1, 1, tzinfo=UTC), "k": b"sealed"},
            )
        db.migrate()
        with db.engine.connect() as conn:
            row = conn.execute(
                text("SELECT name, notify_emails, offline_after_hours FROM organizations")
            ).one()
        assert row[0] == "acme" and row[2] == 24
        assert row[1] in ([], "[]")
    finally:
        db.close()
