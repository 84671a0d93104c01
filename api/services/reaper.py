"""The reaper: re-queues jobs whose holder is gone and ends jobs that are out of attempts.

It needs only the database and the queue, so it runs in every worker's main process and in the API process
(`api_reaper`): a job is recovered even when no worker is alive to notice. Running it in several processes at
once is safe: re-sending a job is harmless because the task starts with an atomic claim.

A holder is gone when its lease expired, when it ran on this machine and its process no longer exists (seconds
after a kill), or when its heartbeat is older than `dead_worker_seconds` while this reaper could reach the
database all that time (after an outage every holder gets that long to write its heartbeat again, so a
database restart never takes a job away from a worker that is still running it).

A broker that lost its queues (Redis restarted without persistence) is noticed by its missing canary message
(`api.queue.CeleryQueue.broker_lost`): every job still queued and unclaimed is then sent again at once, instead
of after `queued_resend_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy.orm import Session

from api.services import jobs as job_service
from api.settings import Settings

log = logging.getLogger(__name__)
SessionFactory = Callable[[], AbstractContextManager[Session]]


class Reaper:
    """One reaper's state: since when it has reached the database without a failure."""

    def __init__(
        self,
        sessions: SessionFactory,
        settings: Settings,
        enqueue: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        broker_lost: Callable[[], bool] | None = None,
    ) -> None:
        self._sessions, self._settings, self._enqueue, self._clock = sessions, settings, enqueue, clock
        self._broker_lost = broker_lost
        self._reachable_since: float | None = None

    def reap_once(self, now: datetime | None = None) -> dict[str, list[str]]:
        """One pass: returns the ids it released (dead holders), re-queued, failed and cancelled."""
        started = self._clock()
        try:
            result = self._pass(now, heartbeats_trusted=self._heartbeats_trusted(started))
        except Exception:
            self._reachable_since = None
            raise
        if self._reachable_since is None:
            self._reachable_since = started
        return result

    def _heartbeats_trusted(self, now: float) -> bool:
        return (
            self._reachable_since is not None
            and now - self._reachable_since >= self._settings.dead_worker_seconds
        )

    def _pass(self, now: datetime | None, *, heartbeats_trusted: bool) -> dict[str, list[str]]:
        s = self._settings
        with self._sessions() as session:
            released = job_service.release_dead_leases(
                session,
                now=now,
                stale_heartbeat_seconds=s.dead_worker_seconds if heartbeats_trusted else None,
            )
            ended = job_service.end_exhausted_jobs(session, now=now)
            requeued = job_service.find_stale_jobs(
                session, now=now, queued_older_than=s.queued_resend_seconds
            )
            if self._lost_queue():
                lost = job_service.find_unclaimed_jobs(session)
                requeued += [job_id for job_id in lost if job_id not in requeued]
            job_service.mark_resent(session, requeued, now=now)
        for job_id in requeued:
            self._enqueue(job_id)
        if released or requeued or ended["failed"] or ended["cancelled"]:
            log.info("reaper: released %s, re-queued %s, ended %s", released, requeued, ended)
        return {"released": released, "requeued": requeued, **ended}

    def _lost_queue(self) -> bool:
        if self._broker_lost is None:
            return False
        try:
            return self._broker_lost()
        except Exception:  # broker down: its queue is checked again on the next pass
            log.warning("reaper: broker canary check failed", exc_info=True)
            return False


class ReaperThread(threading.Thread):
    def __init__(self, reaper: Reaper, interval: float) -> None:
        super().__init__(name="dskd-reaper", daemon=True)
        self.reaper, self.interval = reaper, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.reaper.reap_once()
            except Exception:
                log.warning("reaper pass failed; will retry", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
