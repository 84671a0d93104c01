"""Recovery without waiting for leases: dead holders are recognised (their process is gone, or their heartbeat
stopped while the database was reachable), and the reaper runs in the API process too."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import Job
from api.db.session import session_scope
from api.main import create_app
from api.services import jobs as svc
from api.services.liveness import holder_id, holder_is_dead, machine_fingerprint
from api.services.reaper import Reaper
from tests.api.conftest import FakeQueue

pytestmark = pytest.mark.skipif(machine_fingerprint() is None, reason="needs /proc (Linux)")


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_killed_holder_is_dead_a_live_one_is_not() -> None:
    proc = _sleeper()
    try:
        holder = holder_id(proc.pid)
        assert not holder_is_dead(holder)
        assert not holder_is_dead(holder_id())  # this very process
    finally:
        proc.kill()
        proc.wait()
    assert holder_is_dead(holder)
    host, pid, start, rest = holder.split(":", 3)
    assert holder_is_dead(f"{host}:{pid}:{int(start) + 1}:{rest}")  # a recycled pid is another process
    other_machine = holder.rsplit("@", 1)[0] + "@000000000000"
    assert not holder_is_dead(other_machine)  # cannot be told from here: never judged
    for garbage in (None, "", "w", "a:b:c", "old-style:123:abcd"):
        assert not holder_is_dead(garbage)


def _job(session: Session) -> Job:
    job = svc.create_job(session, owner="alice", spec={"student": {}}, max_attempts=3)
    session.commit()
    return job


def test_a_dead_holders_lease_is_released_at_once(session: Session) -> None:
    job = _job(session)
    proc = _sleeper()
    holder = holder_id(proc.pid)
    assert svc.claim_job(session, job.id, holder, 600) is not None
    assert not svc.release_dead_lease(session, job.id)  # alive: the lease stands
    assert svc.claim_job(session, job.id, "redelivered", 600) is None
    proc.kill()
    proc.wait()
    assert svc.release_dead_lease(session, job.id)
    again = svc.claim_job(session, job.id, "redelivered", 600)
    assert again is not None and again.attempt == 2 and again.lease_owner == "redelivered"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stale_heartbeats_count_only_after_the_database_was_reachable_that_long(
    session: Session, db_url: str, settings
) -> None:
    settings.dead_worker_seconds = 15
    job = _job(session)
    svc.claim_job(session, job.id, "remote-host:1:1:abcd@ffffffffffff", 600)
    # The holder's last heartbeat was 60 s ago (another machine: its process cannot be checked from here).
    session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    session.commit()
    failing = {"on": False}

    @functools.wraps(session_scope)
    def sessions():
        if failing["on"]:
            raise ConnectionError("database down")
        return session_scope(db_url)

    clock, sent = Clock(), []
    reaper = Reaper(sessions, settings, sent.append, clock=clock)
    assert reaper.reap_once()["released"] == []  # just (re)connected: holders get time to beat again
    clock.now += 10
    assert reaper.reap_once()["released"] == []
    failing["on"] = True
    clock.now += 1
    with pytest.raises(ConnectionError):
        reaper.reap_once()
    failing["on"] = False
    clock.now += 10
    assert reaper.reap_once()["released"] == []  # the outage restarted the grace period
    clock.now += 15
    result = reaper.reap_once()
    assert result["released"] == [job.id] and result["requeued"] == [job.id] and sent == [job.id]


def test_the_api_process_runs_a_reaper(settings, session: Session) -> None:
    settings.api_reaper, settings.reaper_interval_seconds = True, 0.05
    job = _job(session)
    proc = _sleeper()
    svc.claim_job(session, job.id, holder_id(proc.pid), 600)
    proc.kill()
    proc.wait()
    queue = FakeQueue()
    with TestClient(create_app(settings, queue=queue)):
        deadline = time.monotonic() + 10
        while job.id not in queue.enqueued and time.monotonic() < deadline:
            time.sleep(0.05)
    assert queue.enqueued == [job.id]


def test_queued_jobs_are_sent_again_at_once_when_the_broker_lost_its_queues(
    session: Session, settings
) -> None:
    import os

    import redis

    from api.queue import CeleryQueue

    db = int(os.environ.get("DSKD_TEST_REDIS_DB", "13"))
    broker = redis.Redis(port=6379, db=db)
    try:
        broker.flushdb()
    except redis.RedisError:
        pytest.skip("needs Redis on 127.0.0.1:6379")
    queue = CeleryQueue(f"redis://127.0.0.1:6379/{db}")
    queued, running = _job(session), _job(session)
    svc.claim_job(session, running.id, holder_id(), 600)
    sent: list[str] = []
    reaper = Reaper(session_scope_for(settings), settings, sent.append, broker_lost=queue.broker_lost)
    assert settings.queued_resend_seconds >= 60  # the jobs are seconds old: only the canary can re-send them
    assert reaper.reap_once()["requeued"] == [queued.id]  # a broker never seen: its canary is planted
    assert reaper.reap_once()["requeued"] == [] and reaper.reap_once()["requeued"] == []
    assert sent == [queued.id]
    broker.flushdb()  # what a restart without persistence does to the queues
    assert reaper.reap_once()["requeued"] == [queued.id]
    assert reaper.reap_once()["requeued"] == []
    assert sent == [queued.id, queued.id]
    broker.flushdb()


def test_a_broker_that_cannot_be_reached_does_not_stop_the_reaper(session: Session, settings) -> None:
    job = _job(session)

    def unreachable() -> bool:
        raise ConnectionError("broker down")

    settings.queued_resend_seconds = 0.001
    time.sleep(0.01)
    sent: list[str] = []
    reaper = Reaper(session_scope_for(settings), settings, sent.append, broker_lost=unreachable)
    assert reaper.reap_once()["requeued"] == [job.id] and sent == [job.id]  # the age rule still works


def session_scope_for(settings):
    return functools.partial(session_scope, settings.database_url)
