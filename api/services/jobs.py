"""The job state machine and the worker-facing lease operations. Status changes only through here."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, text, update
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import TERMINAL_STATUSES, Job, JobStatus
from api.services.events import add_event
from api.services.liveness import holder_is_dead

S = JobStatus
# Allowed status changes; terminal states have no way out.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.queued: frozenset({S.running, S.cancelled, S.failed}),
    S.running: frozenset({S.cancel_requested, S.succeeded, S.failed, S.cancelled}),
    S.cancel_requested: frozenset({S.cancelled, S.succeeded, S.failed}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
}
LEASED_STATUSES = (S.running, S.cancel_requested)


class InvalidTransition(Exception):
    def __init__(self, job_id: str, current: str, new: str) -> None:
        super().__init__(f"job {job_id}: cannot go from {current} to {new}")
        self.current = current
        self.new = new


def transition(
    session: Session, job: Job, new_status: str, *, error: dict[str, Any] | None = None, commit: bool = True
) -> Job:
    """Change a job's status, write its "status" event, and commit. Raises InvalidTransition."""
    new_status = JobStatus(new_status)
    # Lock the row (PostgreSQL) and re-read, so two concurrent transitions cannot both pass the check.
    session.refresh(job, with_for_update=session.get_bind().dialect.name != "sqlite")
    if new_status not in TRANSITIONS[job.status]:
        session.rollback()
        raise InvalidTransition(job.id, job.status, new_status)
    now = utcnow()
    job.status = new_status
    job.updated_at = now
    if error is not None:
        job.error = error
    if new_status in TERMINAL_STATUSES:
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None
    payload: dict[str, Any] = {"status": new_status.value, "attempt": job.attempt}
    if job.error is not None and new_status == S.failed:
        payload["error"] = job.error
    session.flush()
    add_event(session, job.id, "status", payload)
    if commit:
        session.commit()
    return job


def create_job(
    session: Session,
    *,
    owner: str,
    spec: dict[str, Any],
    max_attempts: int,
    dataset_id: str | None = None,
    dev_dataset_id: str | None = None,
    name: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Job:
    """Insert a queued job with its first "status" event; the caller commits (and then enqueues)."""
    now = utcnow()
    job = Job(
        owner=owner,
        name=name,
        spec=spec,
        status=S.queued,
        attempt=0,
        max_attempts=max_attempts,
        progress={},
        dataset_id=dataset_id,
        dev_dataset_id=dev_dataset_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        last_seq=0,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", {"status": S.queued.value, "attempt": 0})
    return job


def lock_owner(session: Session, owner: str) -> None:
    """Serialise one tenant's quota checks until the transaction ends (PostgreSQL advisory lock; SQLite
    transactions already run one writer at a time)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"dskd-owner:{owner}"})


def count_jobs(session: Session, owner: str, statuses: tuple[str, ...]) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Job).where(Job.owner == owner, Job.status.in_(statuses))
        )
        or 0
    )


def request_cancel(session: Session, job: Job) -> Job:
    """queued → cancelled now; running → cancel_requested (the loop stops cooperatively); else unchanged."""
    if job.status == S.queued:
        return transition(session, job, S.cancelled)
    if job.status == S.running:
        return transition(session, job, S.cancel_requested)
    return job


def claim_job(
    session: Session, job_id: str, worker_id: str, lease_seconds: float, now: datetime | None = None
) -> Job | None:
    """Atomically take the job for this worker. None if it is held under a live lease, finished or exhausted."""
    now = now or utcnow()
    claimable = and_(
        Job.id == job_id,
        Job.attempt < Job.max_attempts,
        or_(Job.status == S.queued, and_(Job.status.in_(LEASED_STATUSES), Job.lease_expires_at < now)),
    )
    # One UPDATE ... WHERE: the database serialises competing claims on the row; only one matches.
    result = session.execute(
        update(Job)
        .where(claimable)
        .values(
            status=case((Job.status == S.cancel_requested, S.cancel_requested.value), else_=S.running.value),
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempt=Job.attempt + 1,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    add_event(session, job_id, "status", {"status": job.status, "attempt": job.attempt, "worker": worker_id})
    session.commit()
    return job


def renew_lease(
    session: Session, job_id: str, worker_id: str, lease_seconds: float, now: datetime | None = None
) -> bool:
    """Extend our lease and beat our heart; False when another worker has claimed the job or it has left the
    running states."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id, Job.status.in_(LEASED_STATUSES))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def find_stale_jobs(
    session: Session, now: datetime | None = None, *, queued_older_than: float = 600.0
) -> list[str]:
    """Jobs to re-send: expired leases with attempts left, and queued jobs never claimed for a while.

    A job already re-sent (`mark_resent` moves its `updated_at` past the lease expiry) is not re-sent again
    before `queued_older_than` seconds, so a long queue does not fill with duplicate messages.
    """
    now = now or utcnow()
    resend_before = now - timedelta(seconds=queued_older_than)
    expired = and_(
        Job.status.in_(LEASED_STATUSES),
        Job.lease_expires_at < now,
        Job.attempt < Job.max_attempts,
        or_(Job.updated_at <= Job.lease_expires_at, Job.updated_at < resend_before),
    )
    forgotten = and_(Job.status == S.queued, Job.lease_owner.is_(None), Job.updated_at < resend_before)
    return list(session.scalars(select(Job.id).where(or_(expired, forgotten)).order_by(Job.created_at)))


def find_unclaimed_jobs(session: Session) -> list[str]:
    """Queued jobs no worker holds, oldest first: what a broker that lost its queues must be sent again."""
    query = select(Job.id).where(Job.status == S.queued, Job.lease_owner.is_(None)).order_by(Job.created_at)
    return list(session.scalars(query))


def mark_resent(session: Session, job_ids: list[str], now: datetime | None = None) -> None:
    """Record that these jobs were just re-sent to the queue (see `find_stale_jobs`)."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids))
            .values(updated_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )
        session.commit()


def release_dead_lease(session: Session, job_id: str, now: datetime | None = None) -> bool:
    """End the live lease of a job whose holder is provably dead (api.services.liveness), so it can be claimed
    now rather than when the lease runs out. True if a lease was released."""
    now = now or utcnow()
    row = session.execute(
        select(Job.lease_owner).where(
            Job.id == job_id, Job.status.in_(LEASED_STATUSES), Job.lease_expires_at >= now
        )
    ).first()
    if row is None or not holder_is_dead(row.lease_owner):
        session.rollback()
        return False
    return _expire_lease(session, job_id, row.lease_owner, now)


def _expire_lease(session: Session, job_id: str, holder: str | None, now: datetime) -> bool:
    # Conditional on the same holder: a job that was meanwhile claimed again keeps its new lease.
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == holder, Job.status.in_(LEASED_STATUSES))
        .values(lease_expires_at=now - timedelta(microseconds=1), updated_at=now - timedelta(seconds=1))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def release_dead_leases(
    session: Session, now: datetime | None = None, *, stale_heartbeat_seconds: float | None = None
) -> list[str]:
    """End the live leases whose holder is gone: its process is dead on this machine, or (when the caller can
    vouch that the database was reachable all along) its heartbeat is older than stale_heartbeat_seconds."""
    now = now or utcnow()
    rows = session.execute(
        select(Job.id, Job.lease_owner, Job.heartbeat_at).where(
            Job.status.in_(LEASED_STATUSES), Job.lease_expires_at >= now
        )
    ).all()
    session.rollback()
    stale_before = now - timedelta(seconds=stale_heartbeat_seconds) if stale_heartbeat_seconds else None
    released = []
    for job_id, holder, heartbeat in rows:
        stale = stale_before is not None and heartbeat is not None and heartbeat < stale_before
        if (stale or holder_is_dead(holder)) and _expire_lease(session, job_id, holder, now):
            released.append(job_id)
    return released


def end_exhausted_jobs(session: Session, now: datetime | None = None) -> dict[str, list[str]]:
    """Jobs whose lease expired on their last allowed attempt: failed (attempts_exhausted), or cancelled when
    the user had asked to cancel (a cancel wins over the lost attempt). Returns both lists of ids."""
    now = now or utcnow()
    ids = list(
        session.scalars(
            select(Job.id).where(
                Job.status.in_(LEASED_STATUSES), Job.lease_expires_at < now, Job.attempt >= Job.max_attempts
            )
        )
    )
    ended: dict[str, list[str]] = {"failed": [], "cancelled": []}
    for job_id in ids:
        job = session.get(Job, job_id, populate_existing=True)
        if job is None:
            continue
        try:
            if job.status == S.cancel_requested:
                transition(session, job, S.cancelled)
                ended["cancelled"].append(job_id)
            else:
                error = {"code": "attempts_exhausted", "message": f"the worker was lost {job.attempt} times"}
                transition(session, job, S.failed, error=error)
                ended["failed"].append(job_id)
        except InvalidTransition:
            continue
    return ended


def update_progress(session: Session, job_id: str, progress: dict[str, Any], *, commit: bool = True) -> None:
    """Merge a progress snapshot (step, total_steps, epoch, metrics, elapsed_seconds, eta_seconds) into the job row."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return
    job.progress = {**(job.progress or {}), **progress}
    job.updated_at = utcnow()
    if commit:
        session.commit()


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """For the worker's cancel token: cancel_requested (or already cancelled) means stop."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status in (S.cancel_requested, S.cancelled)
