"""Verified keys are kept in memory (no key lookup per request), yet a revocation made elsewhere (another
session, another process) is refused on the very next request; the revocation-version reads are shared."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

import api.auth
from api.db.session import session_scope
from api.key_cache import SharedRead
from api.services.keys import create_api_key, revoke_api_key


def test_a_cached_key_is_refused_at_once_after_a_revocation_elsewhere(
    client: TestClient, session: Session, db_url: str, monkeypatch
) -> None:
    _, secret = create_api_key(session, "cached laptop", "carol")
    _, other = create_api_key(session, "other laptop", "carol")
    headers = {"Authorization": f"Bearer {secret}"}
    lookups: list[str] = []
    real = api.auth.find_active_key
    monkeypatch.setattr(api.auth, "find_active_key", lambda s, t: lookups.append(t) or real(s, t))
    for _ in range(3):
        assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert lookups == [secret]  # verified once, then served from memory
    with session_scope(db_url) as elsewhere:  # what `dskd keys revoke` does from its own process
        assert revoke_api_key(elsewhere, "cached laptop")
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    # The other key of the tenant is verified again (the version changed) and still works.
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_the_cache_can_be_turned_off(settings, queue, session: Session, monkeypatch) -> None:
    from api.main import create_app

    settings.key_cache = False
    _, secret = create_api_key(session, "uncached", "dave")
    lookups: list[str] = []
    real = api.auth.find_active_key
    monkeypatch.setattr(api.auth, "find_active_key", lambda s, t: lookups.append(t) or real(s, t))
    with TestClient(create_app(settings, queue=queue)) as c:
        for _ in range(2):
            assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert lookups == [secret, secret]


def _pile_up(call, begun: list, gate: threading.Event, waiters: int) -> float:
    """One caller starts a read that blocks on `gate`; once it has begun, `waiters` more callers arrive and pile
    up behind it; then the gate opens and everyone finishes. Returns when the waiters started arriving."""
    first = threading.Thread(target=lambda: call("first"))
    first.start()
    while not begun:
        time.sleep(0.001)
    arrived = time.monotonic()
    late = [threading.Thread(target=lambda i=i: call(i)) for i in range(waiters)]
    for t in late:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in [first, *late]:
        t.join(5)
    return arrived


def test_shared_reads_begin_after_the_caller_arrived_and_are_shared() -> None:
    gate, begun = threading.Event(), []
    counter = iter(range(100))

    def read():
        n = next(counter)
        begun.append(time.monotonic())
        if n == 0:
            gate.wait(5)  # the first read is slow: callers pile up behind it
        return (n, None)

    shared = SharedRead(read)
    results: dict[str, tuple] = {}
    arrived = _pile_up(lambda who: results.__setitem__(who, shared.get()), begun, gate, 20)
    assert results["first"] == (0, None)
    # Every late caller got a read that began after it arrived (not read 0), and they shared one read.
    assert {results[i] for i in range(20)} == {(1, None)} and begun[1] > arrived
    assert shared.reads == 2


def test_a_failed_shared_read_fails_only_its_caller() -> None:
    gate, begun = threading.Event(), []

    def read():
        begun.append(len(begun))
        if len(begun) == 1:
            gate.wait(5)
            raise RuntimeError("pool timeout")
        return (7, None)

    shared = SharedRead(read)
    errors: list[str] = []
    results: list[tuple] = []

    def call(_who) -> None:
        try:
            results.append(shared.get())
        except RuntimeError as e:
            errors.append(str(e))

    _pile_up(call, begun, gate, 10)
    # The caller that made the failing read gets its error; the ten waiting share one fresh read.
    assert errors == ["pool timeout"] and results == [(7, None)] * 10 and shared.reads == 2
