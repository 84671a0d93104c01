"""SSE: replay from Last-Event-ID, keep-alive comments, the stream ends after the terminal status event."""

from __future__ import annotations

import json
import threading
import time

from fastapi.testclient import TestClient

from api.db.models import Job
from api.db.session import session_factory
from api.services.events import append_event
from api.services.jobs import claim_job, transition
from tests.api.conftest import assert_problem

SSE = {"Accept": "text/event-stream"}


def parse_sse(text: str) -> tuple[list[dict[str, str]], int]:
    """(events as {id, event, data}, number of comment lines such as keep-alive pings)."""
    events, comments = [], 0
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments += 1
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.lstrip(" ")
        if "id" in fields or "event" in fields:
            events.append(fields)
    return events, comments


def _finish_later(db_url: str, job_id: str, delay: float, status: str = "succeeded") -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        with session_factory(db_url)() as s:
            append_event(s, job_id, "progress", {"step": 2, "total_steps": 3})
            transition(s, s.get(Job, job_id), status)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_stream_replays_tails_pings_and_ends(client: TestClient, alice, job_id: str, db_url: str) -> None:
    with session_factory(db_url)() as s:
        claim_job(s, job_id, "w1", 60)  # seq 2: status running
        append_event(s, job_id, "progress", {"step": 1, "total_steps": 3})  # seq 3
    # The terminal event is written by another thread while the request is streaming; the response
    # finishes only because the stream ends after it (a 0.7 s wait spans several 0.2 s keep-alives).
    writer = _finish_later(db_url, job_id, 0.7)
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}/events", headers={**alice, **SSE, "Last-Event-ID": "1"})
    writer.join()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert time.monotonic() - started >= 0.7
    events, comments = parse_sse(response.text)
    assert [int(e["id"]) for e in events] == [2, 3, 4, 5]
    assert [e["event"] for e in events] == ["status", "progress", "progress", "status"]
    last = json.loads(events[-1]["data"])
    assert last == {**last, "seq": 5, "type": "status", "payload": {"status": "succeeded", "attempt": 1}}
    assert json.loads(events[1]["data"])["payload"] == {"step": 1, "total_steps": 3}
    assert comments >= 2, response.text  # keep-alive pings while waiting


def test_stream_of_finished_job_replays_and_closes(client: TestClient, alice, job_id: str, session) -> None:
    transition(session, session.get(Job, job_id), "cancelled")
    response = client.get(f"/v1/jobs/{job_id}/events", headers={**alice, **SSE})
    events, _ = parse_sse(response.text)
    assert [(e["id"], e["event"]) for e in events] == [("1", "status"), ("2", "status")]
    assert json.loads(events[-1]["data"])["payload"]["status"] == "cancelled"
    # Resuming after the terminal event: nothing to send, the stream closes at once.
    again = client.get(f"/v1/jobs/{job_id}/events", headers={**alice, **SSE, "Last-Event-ID": "2"})
    assert again.status_code == 200 and parse_sse(again.text)[0] == []


def test_after_seq_query_and_bad_last_event_id(client: TestClient, alice, job_id: str, session) -> None:
    transition(session, session.get(Job, job_id), "cancelled")
    events, _ = parse_sse(client.get(f"/v1/jobs/{job_id}/events?after_seq=1", headers={**alice, **SSE}).text)
    assert [e["id"] for e in events] == ["2"]
    bad = client.get(f"/v1/jobs/{job_id}/events", headers={**alice, **SSE, "Last-Event-ID": "x"})
    assert_problem(bad, 422, "Last-Event-ID")


def test_many_subscribers_share_one_poller(client: TestClient, alice, job_id: str, db_url: str) -> None:
    results: list[list[str]] = []

    def subscribe() -> None:
        response = client.get(f"/v1/jobs/{job_id}/events", headers={**alice, **SSE})
        results.append([e["id"] for e in parse_sse(response.text)[0]])

    readers = [threading.Thread(target=subscribe) for _ in range(8)]
    for reader in readers:
        reader.start()
    writer = _finish_later(db_url, job_id, 0.5, "cancelled")
    for thread in [*readers, writer]:
        thread.join(timeout=20)
    assert results == [["1", "2", "3"]] * 8
    hub = client.app.state.event_hubs.current_hubs()
    assert [h.pollers_started for h in hub] == [1]


def test_json_page(client: TestClient, alice, job_id: str, session) -> None:
    for step in range(1, 4):
        append_event(session, job_id, "progress", {"step": step})
    page = client.get(f"/v1/jobs/{job_id}/events?after_seq=1&limit=2", headers=alice).json()
    assert [e["seq"] for e in page["items"]] == [2, 3]
    assert page["next_after_seq"] == 3 and page["job_status"] == "queued"
    assert page["items"][0] == {**page["items"][0], "type": "progress", "payload": {"step": 1}}
    assert_problem(client.get(f"/v1/jobs/{job_id}/events?limit=0", headers=alice), 422, "limit")
