"""Service functions on PostgreSQL: the transition table, atomic claims, leases, gap-free event seqs."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import Job, JobEvent, JobStatus
from api.db.session import session_factory
from api.services import jobs as svc
from api.services.events import append_event, list_events

STATUSES = [s.value for s in JobStatus]
ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "cancel_requested"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("cancel_requested", "cancelled"),
    ("cancel_requested", "succeeded"),
    ("cancel_requested", "failed"),
}


def new_job(session: Session, status: str = "queued", **values) -> Job:
    job = svc.create_job(
        session, owner="alice", spec={"student": {}}, max_attempts=values.pop("max_attempts", 3)
    )
    session.commit()
    if status != "queued" or values:
        session.execute(update(Job).where(Job.id == job.id).values(status=status, **values))
        session.commit()
        session.refresh(job)
    return job


@pytest.mark.parametrize(("current", "new"), list(itertools.product(STATUSES, STATUSES)))
def test_transition_table(session: Session, current: str, new: str) -> None:
    job = new_job(session, current)
    if (current, new) in ALLOWED:
        svc.transition(session, job, new, error={"code": "x", "message": "y"} if new == "failed" else None)
        session.expire_all()
        stored = session.get(Job, job.id)
        assert stored.status == new
        last = list_events(session, job.id)[-1]
        assert last.type == "status" and last.payload["status"] == new
        assert (stored.finished_at is not None) == (new in {"succeeded", "failed", "cancelled"})
    else:
        with pytest.raises(svc.InvalidTransition):
            svc.transition(session, job, new)
        session.expire_all()
        assert session.get(Job, job.id).status == current
    assert svc.TRANSITIONS[current] == {n for c, n in ALLOWED if c == current}


def test_request_cancel(session: Session) -> None:
    assert svc.request_cancel(session, new_job(session, "queued")).status == "cancelled"
    assert svc.request_cancel(session, new_job(session, "running")).status == "cancel_requested"
    assert svc.request_cancel(session, new_job(session, "succeeded")).status == "succeeded"


def _race(db_url: str, n: int, fn) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        with session_factory(db_url)() as s:
            barrier.wait()
            results[i] = fn(s, i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_claim_is_atomic(session: Session, db_url: str) -> None:
    job = new_job(session)
    results = _race(db_url, 6, lambda s, i: svc.claim_job(s, job.id, f"worker-{i}", 60))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    session.expire_all()
    stored = session.get(Job, job.id)
    assert (stored.status, stored.attempt, stored.lease_owner) == ("running", 1, winners[0].lease_owner)
    # A duplicate delivery while the lease is live does nothing.
    assert svc.claim_job(session, job.id, "late", 60) is None


def test_expired_lease_is_reclaimed_and_attempts_are_capped(session: Session) -> None:
    job = new_job(session, max_attempts=2)
    t0 = utcnow()
    assert svc.claim_job(session, job.id, "a", 10, now=t0).attempt == 1
    assert svc.claim_job(session, job.id, "b", 10, now=t0 + timedelta(seconds=5)) is None
    again = svc.claim_job(session, job.id, "b", 10, now=t0 + timedelta(seconds=11))
    assert again is not None and (again.attempt, again.lease_owner) == (2, "b")
    assert svc.claim_job(session, job.id, "c", 10, now=t0 + timedelta(seconds=30)) is None  # attempt cap
    assert svc.find_stale_jobs(session, t0 + timedelta(seconds=30)) == []
    ended = svc.end_exhausted_jobs(session, t0 + timedelta(seconds=30))
    assert ended == {"failed": [job.id], "cancelled": []}
    session.expire_all()
    stored = session.get(Job, job.id)
    assert stored.status == "failed" and stored.error["code"] == "attempts_exhausted"


def test_cancel_wins_over_attempt_exhaustion(session: Session) -> None:
    # The worker died on the last attempt, then the user cancelled: the job ends cancelled, not failed.
    job = new_job(session, max_attempts=1)
    t0 = utcnow()
    svc.claim_job(session, job.id, "a", 10, now=t0)
    svc.request_cancel(session, session.get(Job, job.id))
    ended = svc.end_exhausted_jobs(session, t0 + timedelta(seconds=11))
    assert ended == {"failed": [], "cancelled": [job.id]}
    session.expire_all()
    stored = session.get(Job, job.id)
    assert stored.status == "cancelled" and stored.error is None


def test_claim_keeps_cancel_requested(session: Session) -> None:
    job = new_job(session, "cancel_requested", lease_expires_at=utcnow() - timedelta(seconds=1), attempt=1)
    claimed = svc.claim_job(session, job.id, "w", 60)
    assert claimed is not None and claimed.status == "cancel_requested" and claimed.attempt == 2
    assert svc.is_cancel_requested(session, job.id)
    assert svc.claim_job(session, new_job(session, "succeeded").id, "w", 60) is None


def test_renew_lease_lost_after_another_claim(session: Session) -> None:
    job = new_job(session)
    t0 = utcnow()
    svc.claim_job(session, job.id, "a", 10, now=t0)
    assert svc.renew_lease(session, job.id, "a", 10, now=t0 + timedelta(seconds=5))
    assert svc.find_stale_jobs(session, t0 + timedelta(seconds=30)) == [job.id]
    svc.claim_job(session, job.id, "b", 10, now=t0 + timedelta(seconds=30))
    assert not svc.renew_lease(session, job.id, "a", 10)
    assert svc.renew_lease(session, job.id, "b", 10)


def test_find_stale_includes_forgotten_queued_jobs(session: Session) -> None:
    hour_ago = utcnow() - timedelta(hours=1)
    old = new_job(session, created_at=hour_ago, updated_at=hour_ago)
    new_job(session)
    assert svc.find_stale_jobs(session, queued_older_than=600) == [old.id]
    svc.mark_resent(session, [old.id])
    assert svc.find_stale_jobs(session, queued_older_than=600) == []  # not re-sent on every pass
    assert old.id in svc.find_stale_jobs(session, utcnow() + timedelta(seconds=601), queued_older_than=600)


def test_an_expired_lease_is_resent_once_per_interval(session: Session) -> None:
    job = new_job(session)
    t0 = utcnow()
    svc.claim_job(session, job.id, "a", 10, now=t0)
    later = t0 + timedelta(seconds=30)
    assert svc.find_stale_jobs(session, later, queued_older_than=600) == [job.id]
    svc.mark_resent(session, [job.id], now=later)
    assert svc.find_stale_jobs(session, later + timedelta(seconds=60), queued_older_than=600) == []
    assert svc.find_stale_jobs(session, later + timedelta(seconds=601), queued_older_than=600) == [job.id]


def test_append_event_seq_under_concurrent_writers(session: Session, db_url: str) -> None:
    job = new_job(session)  # seq 1: queued

    def write(s: Session, i: int) -> list[int]:
        return [append_event(s, job.id, "log", {"writer": i, "n": n}).seq for n in range(10)]

    results = _race(db_url, 5, write)
    seqs = sorted(itertools.chain.from_iterable(results))
    assert seqs == list(range(2, 52))
    for per_writer in results:
        assert per_writer == sorted(per_writer)  # each writer sees its own seqs increase
    stored = session.scalars(
        select(JobEvent.seq).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)
    ).all()
    assert stored == list(range(1, 52))
    session.expire_all()
    assert session.get(Job, job.id).last_seq == 51


def test_update_progress_merges(session: Session) -> None:
    job = new_job(session, "running")
    svc.update_progress(session, job.id, {"step": 1, "total_steps": 10})
    svc.update_progress(session, job.id, {"step": 2, "metrics": {"loss": 1.5}})
    session.expire_all()
    assert session.get(Job, job.id).progress == {"step": 2, "total_steps": 10, "metrics": {"loss": 1.5}}
