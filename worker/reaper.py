"""Re-queues jobs whose worker died (lease expired) and gives up on jobs that exhausted their attempts.

Runs as a daemon thread inside every worker process (started when the worker is ready). Running it in
several workers at once is safe: re-sending a job is harmless because the task starts with an atomic claim.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from celery.signals import worker_ready, worker_shutdown

from api.services import jobs as job_service
from api.settings import Settings, get_settings
from worker.progress import SessionFactory

log = logging.getLogger(__name__)


def reap_once(
    sessions: SessionFactory,
    *,
    enqueue: Callable[[str], None],
    settings: Settings,
    now: datetime | None = None,
) -> dict[str, list[str]]:
    """One pass: returns the ids it re-queued and the ids it failed."""
    with sessions() as session:
        failed = job_service.fail_exhausted_jobs(session, now=now)
        requeued = job_service.find_stale_jobs(
            session, now=now, queued_older_than=settings.queued_resend_seconds
        )
        job_service.mark_resent(session, requeued, now=now)
    for job_id in requeued:
        enqueue(job_id)
    if requeued or failed:
        log.info("reaper: re-queued %s, failed %s", requeued, failed)
    return {"requeued": requeued, "failed": failed}


class ReaperThread(threading.Thread):
    def __init__(self, sessions: SessionFactory, settings: Settings, enqueue: Callable[[str], None]) -> None:
        super().__init__(name="dskd-reaper", daemon=True)
        self._sessions, self._settings, self._enqueue = sessions, settings, enqueue
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self._settings.reaper_interval_seconds):
            try:
                reap_once(self._sessions, enqueue=self._enqueue, settings=self._settings)
            except Exception:
                log.exception("reaper pass failed; will retry")


_reaper: ReaperThread | None = None


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    global _reaper
    from api.queue import enqueue_job
    from worker.tasks import session_factory_for

    settings = get_settings()
    _reaper = ReaperThread(session_factory_for(settings), settings, enqueue_job)
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    if _reaper is not None:
        _reaper.stopped.set()
