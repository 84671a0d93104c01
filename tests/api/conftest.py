"""Service test fixtures: a PostgreSQL database per run (migrated with Alembic), truncated after each test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.cli_support import alembic_config
from api.db.session import dispose_engine, session_factory
from api.main import create_app
from api.services.keys import create_api_key
from api.settings import Settings

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
TABLES = "job_events, artifacts, jobs, datasets, api_keys"


def pg_admin_or_skip() -> psycopg.Connection:
    """An autocommit connection to the postgres database; skip locally, fail in CI, when unreachable."""
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as e:
        reason = f"PostgreSQL at 127.0.0.1:5432 (user postgres, trust) is unreachable: {e}".strip()
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{reason} — CI requires it (scripts/services.sh starts it)")
        pytest.skip(reason)


def create_pg_database() -> tuple[str, str]:
    name = f"dskd_test_{uuid.uuid4().hex[:12]}"
    with pg_admin_or_skip() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(name: str, url: str) -> None:
    dispose_engine(url)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name, url = create_pg_database()
    try:
        command.upgrade(alembic_config(url), "head")
        yield url
    finally:
        drop_pg_database(name, url)


@pytest.fixture
def db_url(pg_url: str) -> Iterator[str]:
    yield pg_url
    with session_factory(pg_url)() as session:
        # DELETE beats TRUNCATE on tables this small (TRUNCATE rewrites files and takes exclusive locks).
        for table in TABLES.split(", "):
            session.execute(text(f"DELETE FROM {table}"))
        session.commit()


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with session_factory(db_url)() as s:
        yield s


class FakeQueue:
    """Records what the API would send to the broker; no worker needed."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []
        self.revoked: list[str] = []

    def enqueue_job(self, job_id: str, countdown: float | None = None) -> None:
        self.enqueued.append(job_id)

    def revoke(self, job_id: str) -> None:
        self.revoked.append(job_id)

    def ping(self, timeout: float) -> None:
        return None


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        broker_url="memory://",
        max_upload_bytes=4096,
        sse_keepalive_seconds=0.2,
        sse_poll_interval_seconds=0.05,
        api_reaper=False,  # tests that want the API's reaper turn it on
    )


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
def client(settings: Settings, queue: FakeQueue) -> Iterator[TestClient]:
    with TestClient(create_app(settings, queue=queue)) as c:
        yield c


@pytest.fixture
def alice(session: Session) -> dict[str, str]:
    _, secret = create_api_key(session, "alice laptop", "alice")
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def bob(session: Session) -> dict[str, str]:
    _, secret = create_api_key(session, "bob laptop", "bob")
    return {"Authorization": f"Bearer {secret}"}


GOOD_LINES = [
    '{"prompt": "2+2?", "response": "4"}',
    '{"instruction": "Name a colour.", "context": "", "response": "red"}',
    '{"question": "Capital of France?", "answer": "Paris"}',
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}',
]


def upload(
    client: TestClient, headers: dict[str, str], lines: list[str] | None = None, name: str = "toy.jsonl"
) -> Any:
    body = ("\n".join(GOOD_LINES if lines is None else lines) + "\n").encode()
    return client.post("/v1/datasets", headers=headers, files={"file": (name, body, "application/jsonl")})


def job_body(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "toy sft",
        "student": {"name_or_path": "org/tiny-student"},
        "data": {"dataset_id": dataset_id},
        "distill": {"method": "sft"},
        "training": {"max_steps": 3, "batch_size": 2, "max_length": 64, "max_prompt_length": 32},
    }
    for key, value in overrides.items():
        body[key] = value
    return body


@pytest.fixture
def dataset_id(client: TestClient, alice: dict[str, str]) -> str:
    response = upload(client, alice)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def job_id(client: TestClient, alice: dict[str, str], dataset_id: str) -> str:
    response = client.post("/v1/jobs", headers=alice, json=job_body(dataset_id))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """A problem+json body with the RFC 9457 members (and, for validation, the named field)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:dskd:problem:")
    assert body["title"] and body["detail"]
    if field is not None:
        fields = [e["field"] for e in body["errors"]]
        assert field in fields, (field, fields)
    return body
