"""The reaper in every worker's main process (started when the worker is ready, stopped at shutdown).

The logic lives in api/services/reaper.py, which the API process runs too: recovering a job needs only the
database and the queue, not a live worker.
"""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutdown

from api.services.reaper import Reaper, ReaperThread
from api.settings import get_settings

_reaper: ReaperThread | None = None


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    global _reaper
    from api.queue import enqueue_job, queue_from_settings
    from worker.tasks import session_factory_for

    settings = get_settings()
    queue = queue_from_settings(settings)
    _reaper = ReaperThread(
        Reaper(session_factory_for(settings), settings, enqueue_job, broker_lost=queue.broker_lost),
        settings.reaper_interval_seconds,
    )
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    if _reaper is not None:
        _reaper.stop()
