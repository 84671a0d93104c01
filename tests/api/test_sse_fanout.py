"""SSE fan-out from one source: PostgreSQL LISTEN/NOTIFY wakes the streams (events written by another process),
in-process writes wake them directly, one read serves every subscriber; revoked keys' streams close; limits on
open streams per key (429) and per process (503)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import sqlalchemy
from fastapi.testclient import TestClient

from api.db.models import Job
from api.db.session import get_engine, session_factory
from api.services.events import append_event
from api.services.jobs import transition
from api.services.keys import create_api_key, find_key, revoke_api_key
from tests.api.conftest import assert_problem, job_body
from tests.api.test_sse import SSE, parse_sse


def _in_background(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def _stream_ids(client: TestClient, headers: dict[str, str], job_id: str) -> list[int]:
    response = client.get(f"/v1/jobs/{job_id}/events", headers={**headers, **SSE})
    assert response.status_code == 200, response.text
    return [int(e["id"]) for e in parse_sse(response.text)[0]]


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _hub(client: TestClient):
    _wait_for(lambda: bool(client.app.state.event_hubs.current_hubs()))
    return client.app.state.event_hubs.current_hubs()[0]


WRITER = """
import sys
from api.db.models import Job
import sqlalchemy

from api.db.session import get_engine, session_factory
from api.services.events import append_event
from api.services.jobs import transition
url, job_id = sys.argv[1:]
with session_factory(url)() as s:
    append_event(s, job_id, "progress", {"step": 1})
    transition(s, s.get(Job, job_id), "cancelled")
"""


def test_another_processs_events_arrive_by_listen_notify(
    client: TestClient, alice, job_id: str, db_url: str, settings
) -> None:
    # Polling is made too slow to matter: only a notification can deliver within the test's bound.
    settings_hubs = client.app.state.event_hubs
    settings_hubs._settings = type(settings_hubs._settings)(
        poll_interval=60,
        safety_poll_interval=60,
        key_check_interval=60,
        listen_dsn=settings_hubs._settings.listen_dsn,
    )
    assert settings_hubs._settings.listen_dsn is not None
    reader, out = _in_background(lambda: _stream_ids(client, alice, job_id))
    hub = _hub(client)
    _wait_for(lambda: hub.listening)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", WRITER, db_url, job_id], check=True, timeout=120)
    reader.join(timeout=10)
    assert out == [[1, 2, 3]]
    assert time.monotonic() - started < 30  # the writer's start-up included; polling would take 60 s


def test_one_read_serves_every_subscriber(client: TestClient, alice, job_id: str, db_url: str) -> None:
    event_reads = []

    def count(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM job_events" in statement:
            event_reads.append(statement)

    engine = get_engine(db_url)
    sqlalchemy.event.listen(engine, "before_cursor_execute", count)
    try:
        readers = [_in_background(lambda: _stream_ids(client, alice, job_id)) for _ in range(20)]
        hub = _hub(client)
        _wait_for(lambda: sum(len(w.subscribers) for w in hub._watches.values()) == 20)
        with session_factory(db_url)() as s:
            for step in range(5):
                append_event(s, job_id, "progress", {"step": step})
            transition(s, s.get(Job, job_id), "cancelled")
        for thread, _ in readers:
            thread.join(timeout=20)
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", count)
    assert [out for _, out in readers] == [[[1, 2, 3, 4, 5, 6, 7]]] * 20
    # 20 replays on connect, then six commits each announced twice (in-process and by NOTIFY): a handful of
    # shared reads, where reading per subscriber would take 20 × 6 more.
    assert len(event_reads) <= 20 + 15, len(event_reads)


def test_revoking_a_key_closes_its_open_streams(
    client: TestClient, alice, bob, job_id: str, session, settings
) -> None:
    hubs = client.app.state.event_hubs
    hubs._settings = type(hubs._settings)(
        poll_interval=0.05,
        safety_poll_interval=0.05,
        key_check_interval=0.2,
        listen_dsn=hubs._settings.listen_dsn,
    )
    _, second = create_api_key(session, "alice tablet", "alice")
    tablet = {"Authorization": f"Bearer {second}"}
    reader, out = _in_background(lambda: _stream_ids(client, tablet, job_id))
    other, other_out = _in_background(lambda: _stream_ids(client, alice, job_id))
    _wait_for(lambda: hubs.open_streams() == 2)
    revoked_at = time.monotonic()
    assert revoke_api_key(session, find_key(session, "alice tablet").id)
    reader.join(timeout=10)
    assert not reader.is_alive() and out == [[1]]
    assert time.monotonic() - revoked_at < 3
    assert other.is_alive()  # the tenant's other key keeps streaming
    transition(session, session.get(Job, job_id), "cancelled")
    other.join(timeout=10)
    assert other_out == [[1, 2]]
    assert_problem(client.get(f"/v1/jobs/{job_id}/events", headers={**tablet, **SSE}), 401)


def test_open_stream_limits(client: TestClient, alice, bob, job_id: str, session, settings) -> None:
    hubs = client.app.state.event_hubs
    hubs.max_streams_per_key, hubs.max_streams = 2, 3
    bob_job = client.post(
        "/v1/jobs",
        headers=bob,
        json=job_body(
            client.post(
                "/v1/datasets",
                headers=bob,
                files={"file": ("x.jsonl", b'{"prompt": "a", "response": "b"}\n')},
            ).json()["id"]
        ),
    ).json()["id"]
    readers = [_in_background(lambda: _stream_ids(client, alice, job_id)) for _ in range(2)]
    _wait_for(lambda: hubs.open_streams("x") == 0 and hubs.open_streams() == 2)
    third = client.get(f"/v1/jobs/{job_id}/events", headers={**alice, **SSE})
    problem = assert_problem(third, 429)
    assert "2 open event streams" in problem["detail"] and third.headers["retry-after"]
    readers.append(_in_background(lambda: _stream_ids(client, bob, bob_job)))
    _wait_for(lambda: hubs.open_streams() == 3)
    refused = client.get(f"/v1/jobs/{bob_job}/events", headers={**bob, **SSE})
    assert "limit of 3 open event streams" in assert_problem(refused, 503)["detail"]
    assert (
        client.get(f"/v1/jobs/{job_id}/events", headers=alice).status_code == 200
    )  # JSON pages are not streams
    transition(session, session.get(Job, job_id), "cancelled")
    transition(session, session.get(Job, bob_job), "cancelled")
    for thread, _ in readers:
        thread.join(timeout=10)
    _wait_for(lambda: hubs.open_streams() == 0)
