"""Operators' view: /metrics parses as Prometheus text with the job gauges; logs carry the request id."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.db.base import utcnow
from api.db.models import Job
from api.logs import configure_logging
from api.services.events import append_event
from api.settings import Settings


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_is_prometheus_text_with_job_gauges(client: TestClient, session, alice, job_id) -> None:
    assert client.get("/v1/jobs", headers=alice).status_code == 200
    job = session.get(Job, job_id)
    job.status, job.lease_owner = "running", "host:1:abc"
    job.lease_expires_at = utcnow() + timedelta(seconds=117)
    job.heartbeat_at = utcnow() - timedelta(seconds=6)  # the worker's last heartbeat
    job.progress = {"step": 40, "total_steps": 100}
    session.commit()
    for step in (20, 40):
        append_event(session, job_id, "progress", {"step": step, "total_steps": 100, "metrics": {}})

    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("dskd_database_up", ())] == 1
    assert samples[("dskd_jobs", (("status", "running"),))] == 1
    assert samples[("dskd_jobs", (("status", "queued"),))] == 0
    assert samples[("dskd_queue_depth", ())] == 0
    assert samples[("dskd_job_step", (("job_id", job_id),))] == 40
    assert samples[("dskd_job_steps_per_second", (("job_id", job_id),))] > 0
    age = samples[("dskd_worker_heartbeat_age_seconds", (("job_id", job_id), ("worker", "host:1:abc")))]
    assert 5 <= age < 15
    requests = [
        v
        for (name, labels), v in samples.items()
        if name == "dskd_http_requests_total" and {("handler", "/v1/jobs"), ("method", "GET")} <= set(labels)
    ]
    assert requests == [1.0]
    assert any(name == "dskd_http_request_duration_seconds_count" for name, _ in samples)


def test_queue_depth_counts_queued_jobs(client: TestClient, job_id) -> None:
    samples = _samples(client.get("/metrics").text)
    assert samples[("dskd_queue_depth", ())] == 1
    assert samples[("dskd_jobs", (("status", "queued"),))] == 1


def test_request_id_in_header_and_json_logs(client: TestClient, settings: Settings, alice) -> None:
    stream = io.StringIO()
    handler = configure_logging(settings.model_copy(update={"log_format": "json"}), stream=stream)
    try:
        given = client.get("/v1/jobs", headers={**alice, "X-Request-ID": "abc-123"})
        fresh = client.get("/v1/jobs/nope", headers=alice)
    finally:
        logging.getLogger().removeHandler(handler)
    assert given.headers["x-request-id"] == "abc-123"
    assert len(fresh.headers["x-request-id"]) == 32
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "dskd.access"]
    assert {"request_id": "abc-123", "path": "/v1/jobs", "status": 200, "method": "GET"}.items() <= access[
        0
    ].items()
    assert access[1]["status"] == 404 and access[1]["request_id"] == fresh.headers["x-request-id"]
    assert {"time", "level", "message"} <= access[0].keys()


def test_a_malformed_request_id_is_replaced(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"
