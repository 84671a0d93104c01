"""The API's only link to the workers: send a task by name. Never imports worker/ (or torch)."""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from celery import Celery

from api.settings import Settings

RUN_JOB_TASK = "dskd.run_job"
# A queue no worker consumes, holding one message: when it is empty the broker has lost its queues (a Redis
# restart without persistence, a flushed database), so the jobs still queued must be sent again.
CANARY_QUEUE = "dskd.broker-canary"


class JobQueue(Protocol):
    def enqueue_job(self, job_id: str, countdown: float | None = None) -> None: ...

    def revoke(self, job_id: str) -> None: ...

    def ping(self, timeout: float) -> None: ...


@lru_cache(maxsize=8)
def celery_client(broker_url: str) -> Celery:
    """A producer-only Celery app: no result backend, the database is the source of truth."""
    app = Celery("dskd", broker=broker_url)
    app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=False)
    return app


class CeleryQueue:
    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url

    @property
    def app(self) -> Celery:
        return celery_client(self.broker_url)

    def enqueue_job(self, job_id: str, countdown: float | None = None) -> None:
        # task_id = job id, so revoke() can address the message by job id alone.
        self.app.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, countdown=countdown)

    def revoke(self, job_id: str) -> None:
        # Cooperative: a revoked message is skipped when delivered; never terminate a running task from code.
        self.app.control.revoke(job_id, terminate=False)

    def ping(self, timeout: float) -> None:
        """Raise if the broker cannot be reached within timeout seconds."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)

    def broker_lost(self, timeout: float = 2.0) -> bool:
        """True when the broker no longer holds the canary message (it lost its queues since the last call,
        or this is its first use); the canary is put back. Raises if the broker cannot be reached."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            canary = conn.SimpleQueue(CANARY_QUEUE, serializer="json")
            try:
                # Declared (not passively): after a data loss the queue itself is gone; a new one holds nothing.
                _, size, _ = canary.queue.queue_declare()
                if size > 0:
                    return False
                canary.put({"canary": True})
                return True
            finally:
                canary.close()


def queue_from_settings(settings: Settings) -> JobQueue:
    return CeleryQueue(settings.broker_url)


def enqueue_job(job_id: str, settings: Settings | None = None) -> None:
    """Module-level helper for scripts (the reaper re-sends stale jobs through it)."""
    from api.settings import get_settings

    queue_from_settings(settings or get_settings()).enqueue_job(job_id)


def revoke(job_id: str, settings: Settings | None = None) -> None:
    from api.settings import get_settings

    queue_from_settings(settings or get_settings()).revoke(job_id)
