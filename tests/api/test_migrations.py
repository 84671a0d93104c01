"""Alembic: upgrade from empty, downgrade to base, upgrade again, and the models match head — on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool

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
