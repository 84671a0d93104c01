"""Job events: per-job, gap-free sequence numbers assigned under the job row's lock.

Every event also announces itself, so SSE streams never poll per subscriber (api/streaming.py): on PostgreSQL
with `NOTIFY dskd_events '<job_id>'` in the same transaction (delivered on commit, to every API process), and to
listeners in this process once the session commits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from api.db.base import utcnow
from api.db.models import TERMINAL_STATUSES, Job, JobEvent

EVENT_TYPES: frozenset[str] = frozenset({"status", "progress", "eval", "checkpoint", "log", "artifact"})
NOTIFY_CHANNEL = "dskd_events"
_PENDING = "dskd_event_jobs"  # session.info key: jobs with events in the open transaction
log = logging.getLogger(__name__)
_listeners: list[Callable[[set[str]], bool]] = []
_listeners_lock = threading.Lock()


def add_local_listener(listener: Callable[[set[str]], bool]) -> None:
    """Call `listener(job_ids)` after each commit that added events; it returns False to be removed."""
    with _listeners_lock:
        _listeners.append(listener)


@sa_event.listens_for(Session, "after_commit")
def _announce(session: Session) -> None:
    job_ids = session.info.pop(_PENDING, None)
    if not job_ids:
        return
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            alive = listener(job_ids)
        except Exception:  # a listener's failure must never fail the writer's commit path
            log.exception("event listener failed")
            continue
        if not alive:
            with _listeners_lock:
                if listener in _listeners:
                    _listeners.remove(listener)


@sa_event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)


class UnknownJob(LookupError):
    pass


def add_event(session: Session, job_id: str, type: str, payload: dict[str, Any]) -> JobEvent:
    """Assign the next seq and add the event without committing (for callers that own the transaction)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    # The UPDATE takes the job row's write lock until commit, so concurrent writers get 1, 2, 3... in
    # commit order and a poller reading "seq > last seen" never skips a row committed later.
    seq = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(last_seq=Job.last_seq + 1)
        .returning(Job.last_seq)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if seq is None:
        raise UnknownJob(job_id)
    event = JobEvent(job_id=job_id, seq=seq, type=type, payload=payload, created_at=utcnow())
    session.add(event)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        # Delivered when (and only if) this transaction commits; identical payloads in one transaction merge.
        session.execute(text("SELECT pg_notify(:channel, :job)"), {"channel": NOTIFY_CHANNEL, "job": job_id})
    session.info.setdefault(_PENDING, set()).add(job_id)
    return event


def append_event(session: Session, job_id: str, type: str, payload: dict[str, Any]) -> JobEvent:
    """Append one event and commit."""
    try:
        event = add_event(session, job_id, type, payload)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return event


def list_events(session: Session, job_id: str, after_seq: int = 0, limit: int = 100) -> list[JobEvent]:
    """Events with seq > after_seq, oldest first (uses the unique (job_id, seq) index)."""
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
        .limit(limit)
    )
    return list(rows)


def max_seq(session: Session, job_id: str) -> int:
    return session.scalar(select(Job.last_seq).where(Job.id == job_id)) or 0


def is_terminal_event(event_type: str, payload: dict[str, Any]) -> bool:
    """The stream's last event: a status event whose status is terminal."""
    return event_type == "status" and payload.get("status") in TERMINAL_STATUSES
