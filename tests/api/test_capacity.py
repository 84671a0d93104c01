"""Capacity: a database that is down or a pool that stays empty is a 503 with Retry-After (never a 500), a
saturated API answers 503 instead of hanging, and a tenant's jobs beyond its running limit wait in the queue."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.admission import AdmissionMiddleware
from api.db.session import dispose_engine
from api.main import create_app
from api.services import jobs as job_service
from api.settings import Settings
from tests.api.conftest import FakeQueue, assert_problem, job_body


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_down_is_503_and_the_connection_stays_usable(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/nothing"
    settings = Settings(data_dir=tmp_path / "d", database_url=url, broker_url="memory://", sse_listen=False)
    try:
        with TestClient(create_app(settings, queue=FakeQueue())) as client:
            for _ in range(2):  # the same client connection answers again: nothing was torn down
                response = client.get("/v1/jobs", headers={"Authorization": "Bearer dskd_x"})
                problem = assert_problem(response, 503)
                assert response.headers["retry-after"] == "5" and "database" in problem["detail"]
            assert client.get("/healthz").status_code == 200
    finally:
        dispose_engine(url)


def test_pool_exhaustion_is_503(settings, alice, job_id: str) -> None:
    settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_seconds = 1, 0, 0.2
    settings.database_url += "?application_name=tiny_pool"  # a separate engine with this tiny pool
    app = create_app(settings, queue=FakeQueue())
    engine = app.state.session_factory.kw["bind"]
    held = engine.connect()  # the only connection is taken
    try:
        with TestClient(app) as client:
            response = client.get(f"/v1/jobs/{job_id}", headers=alice)
            assert_problem(response, 503)
            assert response.headers["retry-after"]
        held.close()
        with TestClient(app) as client:
            assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    finally:
        dispose_engine(settings.database_url)


def test_saturation_is_503_not_a_hang() -> None:
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = AdmissionMiddleware(slow_app, max_active=2, max_waiting=1, wait_seconds=0.3)

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            tasks = [asyncio.create_task(client.get("/x")) for _ in range(5)]
            await asyncio.sleep(0.1)
            # Two in progress, one waiting, two refused at once (no room to wait).
            assert app.slots.active == 2 and app.slots.waiting == 1
            await asyncio.sleep(0.4)  # the waiting one gives up after 0.3 s
            release.set()
            responses = await asyncio.gather(*tasks)
        problem = next(r for r in responses if r.status_code == 503)
        assert (
            problem.headers["retry-after"] and problem.headers["content-type"] == "application/problem+json"
        )
        assert app.slots.active == 0 and app.slots.waiting == 0  # every slot given back
        return sorted(r.status_code for r in responses)

    assert asyncio.run(scenario()) == [200, 200, 503, 503, 503]


def test_a_waiting_request_gets_the_next_free_slot() -> None:
    gate = asyncio.Event()

    async def app_body(scope, receive, send) -> None:
        if scope["path"] == "/slow":
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = AdmissionMiddleware(app_body, max_active=1, max_waiting=10, wait_seconds=5)

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            slow = asyncio.create_task(client.get("/slow"))
            await asyncio.sleep(0.05)
            fast = asyncio.create_task(client.get("/fast"))
            await asyncio.sleep(0.1)
            assert not fast.done()  # waits its turn instead of failing
            gate.set()
            return [r.status_code for r in await asyncio.gather(slow, fast)]

    assert asyncio.run(scenario()) == [200, 200]


@pytest.fixture
def worker_bits():
    pytest.importorskip("worker.tasks")
    from worker import tasks

    return tasks


def test_running_limit_defers_a_tenants_extra_job(
    client: TestClient, alice, dataset_id: str, settings, session, worker_bits
) -> None:
    settings.max_running_jobs_per_key = 1
    first, second = (
        client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).json()["id"] for _ in range(2)
    )
    job_service.claim_job(session, first, "busy-worker", 600)
    queue = FakeQueue()
    deferred: list[tuple[str, float | None]] = []
    queue.enqueue_job = lambda job_id, countdown=None: deferred.append((job_id, countdown))  # type: ignore[method-assign]
    outcome = worker_bits.execute_job(second, settings=settings, queue=queue, worker_id="w2")
    assert outcome == "deferred" and deferred == [(second, worker_bits.RUNNING_QUOTA_RETRY_SECONDS)]
    assert client.get(f"/v1/jobs/{second}", headers=alice).json()["status"] == "queued"
