"""The embedded default (SQLite database): the main flow and the atomic claim work there too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.cli_support import init_db
from api.db.models import Job
from api.db.session import dispose_engine, session_factory
from api.main import create_app
from api.services.jobs import claim_job, transition
from api.services.keys import create_api_key
from api.settings import Settings
from tests.api.conftest import FakeQueue, job_body, upload
from tests.api.test_sse import SSE, parse_sse


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(data_dir=tmp_path / "dskd", sse_keepalive_seconds=0.2, sse_poll_interval_seconds=0.05)
    assert settings.database_url.startswith("sqlite:///") and settings.broker_url.startswith(
        "sqla+sqlite:///"
    )
    init_db(settings)
    yield settings
    dispose_engine(settings.database_url)


def test_embedded_flow(embedded: Settings) -> None:
    sessions = session_factory(embedded.database_url)
    with sessions() as s:
        _, secret = create_api_key(s, "me", "me")
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(embedded, queue=FakeQueue())) as client:
        dataset = upload(client, headers).json()["id"]
        job_id = client.post("/v1/jobs", headers=headers, json=job_body(dataset)).json()["id"]

        results: list = [None] * 4
        barrier = threading.Barrier(4)

        def claim(i: int) -> None:
            with sessions() as s:
                barrier.wait()
                results[i] = claim_job(s, job_id, f"w{i}", 60)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sum(r is not None for r in results) == 1

        def finish() -> None:
            with sessions() as s:
                transition(s, s.get(Job, job_id), "succeeded")

        timer = threading.Timer(0.4, finish)
        timer.start()
        events, _ = parse_sse(client.get(f"/v1/jobs/{job_id}/events", headers={**headers, **SSE}).text)
        timer.join()
        assert [e["id"] for e in events] == ["1", "2", "3"] and events[-1]["event"] == "status"
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        assert body["status"] == "succeeded" and body["attempt"] == 1
        assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")
