"""Health, readiness against real and unreachable brokers, and the OpenAPI document."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.queue import CeleryQueue
from tests.api.conftest import assert_problem


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
        return True
    except OSError:
        return False


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.skipif(not _redis_up(), reason="Redis at 127.0.0.1:6379 is not running")
def test_readyz_with_real_redis(settings) -> None:
    settings.broker_url = "redis://127.0.0.1:6379/15"
    with TestClient(create_app(settings, queue=CeleryQueue(settings.broker_url))) as client:
        response = client.get("/readyz")
    assert response.status_code == 200 and response.json() == {
        "status": "ready",
        "database": "ok",
        "broker": "ok",
    }


def test_readyz_503_when_broker_unreachable(settings) -> None:
    settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.broker_check_timeout_seconds = 0.5
    with TestClient(create_app(settings, queue=CeleryQueue(settings.broker_url))) as client:
        body = assert_problem(client.get("/readyz"), 503)
    assert "broker" in body["detail"] and "database" not in body["detail"]


def test_readyz_503_when_database_unreachable(settings, queue) -> None:
    settings.database_url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1"
    with TestClient(create_app(settings, queue=queue)) as client:
        body = assert_problem(client.get("/readyz"), 503)
    assert "database" in body["detail"]


def test_openapi_has_tags_and_job_example(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {t["name"] for t in spec["tags"]} == {
        "jobs",
        "events",
        "metrics",
        "artifacts",
        "datasets",
        "health",
    }
    create = spec["paths"]["/v1/jobs"]["post"]
    example = create["requestBody"]["content"]["application/json"]["examples"]["dskd_eta"]["value"]
    assert example["distill"]["method"] == "dskd_eta" and "dataset_id" in example["data"]
    assert (
        "422" in create["responses"] and "application/problem+json" in create["responses"]["422"]["content"]
    )
    from dskd_core.spec import JobSpec

    JobSpec.model_validate(example)  # the documented example is a valid spec
