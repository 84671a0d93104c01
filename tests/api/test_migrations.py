"""Alembic: upgrade from empty, downgrade to base, upgrade again, and the models match head — on both backends;
revision 0003 keeps the jobs already stored, up and down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool, text

from api.cli_support import alembic_config, init_db
from api.db.models import Base
from api.settings import Settings
from tests.api.conftest import create_pg_database, drop_pg_database

TABLES = {"api_keys", "datasets", "jobs", "job_events", "artifacts"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name, url)


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diffs(url: str) -> list:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_and_models_match(empty_db: str) -> None:
    config = alembic_config(empty_db)
    command.upgrade(config, "head")
    assert _tables(empty_db) == TABLES
    assert _diffs(empty_db) == []
    command.downgrade(config, "base")
    assert _tables(empty_db) == set()
    command.upgrade(config, "head")
    assert _tables(empty_db) == TABLES
    assert _diffs(empty_db) == []


def test_init_db_creates_embedded_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    init_db(settings)
    init_db(settings)  # idempotent
    assert _tables(settings.database_url) == TABLES
    assert settings.models_root.is_dir() and settings.runs_dir.is_dir() and settings.datasets_dir.is_dir()


def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return {c["name"] for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_0003_adds_the_dev_dataset_reference_and_keeps_existing_jobs(empty_db: str) -> None:
    config = alembic_config(empty_db)
    command.upgrade(config, "0002")
    engine = create_engine(empty_db, poolclass=pool.NullPool)
    now = "2026-12-01 10:00:00+00:00"
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO datasets (id, owner, name, stored_path, size_bytes, sha256, row_count, created_at) "
                    "VALUES ('d1', 'alice', 'train.jsonl', 'd1.jsonl', 10, :sha, 1, :now)"
                ),
                {"sha": "0" * 64, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO jobs (id, owner, spec, status, attempt, max_attempts, progress, last_seq, "
                    "dataset_id, created_at, updated_at) VALUES ('j1', 'alice', '{}', 'succeeded', 1, 3, '{}', 0, "
                    "'d1', :now, :now)"
                ),
                {"now": now},
            )
        command.upgrade(config, "head")
        assert "dev_dataset_id" in _columns(empty_db, "jobs")
        with engine.connect() as conn:
            row = conn.execute(text("SELECT dataset_id, dev_dataset_id FROM jobs WHERE id = 'j1'")).one()
        assert tuple(row) == ("d1", None)
        command.downgrade(config, "0002")
        assert "dev_dataset_id" not in _columns(empty_db, "jobs")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT dataset_id FROM jobs WHERE id = 'j1'")).scalar_one() == "d1"
    finally:
        engine.dispose()
