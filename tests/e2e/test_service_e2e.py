"""The whole service with real processes: a Celery worker on Redis + PostgreSQL, and the embedded `dskd serve`."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.settings import Settings
from tests.e2e.conftest import client_flow, free_port, redis_db_or_skip, service_env, wait_http
from worker.serve import worker_command

# A Redis database of its own (flushed by the test); DSKD_TEST_REDIS_DB lets parallel checkouts use different ones.
REDIS_TEST_DB = int(os.environ.get("DSKD_TEST_REDIS_DB", "13"))


@pytest.fixture
def pg_database() -> Iterator[str]:
    from alembic import command

    from api.cli_support import alembic_config
    from tests.api.conftest import create_pg_database, drop_pg_database

    name, url = create_pg_database()
    try:
        command.upgrade(alembic_config(url), "head")
        yield url
    finally:
        drop_pg_database(name, url)


class ThreadedServer:
    """uvicorn in a background thread of the test process (stopped by the fixture)."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.mark.service
def test_celery_worker_on_redis_and_postgres(pg_database, toy_world, tmp_path: Path, processes):
    from api.db.session import session_scope
    from api.main import create_app
    from api.services.keys import create_api_key

    broker = redis_db_or_skip(REDIS_TEST_DB)
    data_dir = tmp_path / "data"
    settings = Settings(
        data_dir=data_dir, database_url=pg_database, broker_url=broker, models_root=toy_world.root
    )
    env = service_env(
        data_dir=str(data_dir),
        database_url=pg_database,
        broker_url=broker,
        models_root=str(toy_world.root),
        event_min_interval_seconds="0.2",
    )
    processes.start("celery-worker", worker_command(loglevel="INFO", hostname="e2e@%h"), env)
    with session_scope(pg_database) as session:
        _, secret = create_api_key(session, "e2e", "e2e-owner")
    port = free_port()
    with ThreadedServer(create_app(settings), port):
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=15)
        result = client_flow(f"http://127.0.0.1:{port}", secret, toy_world, tmp_path / "download")
    types = {e["type"] for e in result["events"]}
    assert {"status", "progress", "log", "artifact"} <= types
    statuses = [e["payload"]["status"] for e in result["events"] if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    redis_db_or_skip(REDIS_TEST_DB)  # leave the test database empty


def test_embedded_dskd_serve_on_sqlite(toy_world, tmp_path: Path, processes):
    """What a newcomer runs first: one command, SQLite database and SQLite broker, nothing else."""
    import subprocess

    data_dir = tmp_path / "dskd-data"
    env = service_env(
        data_dir=str(data_dir), models_root=str(toy_world.root), event_min_interval_seconds="0.2"
    )
    dskd = [sys.executable, "-m", "dskd_cli"]
    created = subprocess.run(
        [*dskd, "keys", "create", "newcomer"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("dskd_")
    port = free_port()
    server = processes.start("dskd-serve", [*dskd, "serve", "--port", str(port)], env)
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=server)
    result = client_flow(f"http://127.0.0.1:{port}", secret, toy_world, tmp_path / "download")
    assert {"dskd.db", "broker.db"} <= {p.name for p in data_dir.iterdir()}
    assert (data_dir / "runs" / result["job_id"] / "student.tar").is_file()
