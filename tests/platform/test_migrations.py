"""Alembic: the baseline builds the schema the models describe, on PostgreSQL and SQLite, both ways."""

from __future__ import annotations

import secrets
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from jobs.migrate import downgrade, upgrade
from jobs.models import Base
from tests.support.services import PG_ADMIN_URL

TABLES = {"alembic_version", "api_keys", "artifacts", "datasets", "job_deps", "job_events", "jobs", "models", "workers"}


def _check_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("jobs")}
        assert {"ix_jobs_status_created_at", "ix_jobs_owner_created"} <= indexes
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_models_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    _check_schema(url)
    downgrade(url)
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()


def test_postgres_upgrade_on_an_empty_database_matches_models() -> None:
    name = f"facejobs_mig_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        _check_schema(url)
        downgrade(url)
        upgrade(url)
        _check_schema(url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
