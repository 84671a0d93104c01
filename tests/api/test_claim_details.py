"""Claim details that mutation testing found unasserted: when a job first started, and who claimed it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import Job
from api.services import jobs as svc
from api.services.events import list_events
from tests.api.test_services import new_job


def test_started_at_is_the_first_claim_and_survives_a_reclaim(session: Session) -> None:
    job = new_job(session)
    assert session.get(Job, job.id).started_at is None
    t0 = utcnow()
    first = svc.claim_job(session, job.id, "a", 10, now=t0)
    assert first.started_at == t0
    again = svc.claim_job(session, job.id, "b", 10, now=t0 + timedelta(seconds=11))  # the lease expired
    assert again.attempt == 2 and again.started_at == t0


def test_each_claim_records_the_worker_in_its_status_event(session: Session) -> None:
    job = new_job(session)
    t0 = utcnow()
    svc.claim_job(session, job.id, "worker-a", 10, now=t0)
    svc.claim_job(session, job.id, "worker-b", 10, now=t0 + timedelta(seconds=11))
    claims = [e.payload for e in list_events(session, job.id) if e.payload.get("status") == "running"]
    assert claims == [
        {"status": "running", "attempt": 1, "worker": "worker-a"},
        {"status": "running", "attempt": 2, "worker": "worker-b"},
    ]
