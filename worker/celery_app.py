"""The Celery application of the GPU workers.

Reliability settings (architecture.md): only the job id crosses the broker; late acks with
reject-on-worker-lost so a killed worker's message is redelivered; prefetch 1 and one job at a time per
worker process; a visibility timeout longer than any job (Redis redelivers unacked messages after it).
Because a message can still arrive twice, the task itself starts with an atomic database claim.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging

from api.settings import get_settings
from worker.joblog import setup_worker_logging

# Connected before any worker starts: Celery then leaves logging to us (text or JSON, ids on every line).
setup_logging.connect(setup_worker_logging, weak=False)

# Longer than any distillation job we expect (Redis re-delivers unacked messages after this).
VISIBILITY_TIMEOUT_SECONDS = 7 * 24 * 3600


def transport_options(broker_url: str) -> dict[str, object]:
    """Redis (and SQS) re-deliver unacked messages after the visibility timeout; the SQLAlchemy transport
    passes its options to create_engine, which refuses unknown keywords, so it gets none."""
    if broker_url.split("://", 1)[0] in {"redis", "rediss", "sqs"}:
        return {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    return {}


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery(
        "dskd", broker=settings.broker_url, include=["worker.tasks", "worker.reaper", "worker.parent_watch"]
    )
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,  # a fresh process per job: no leaked (GPU) memory carries over
        task_ignore_result=True,  # the database is the source of truth, not Celery results
        task_serializer="json",
        accept_content=["json"],
        task_track_started=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings.broker_url),
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # lets Flower show the workers' tasks
        task_send_sent_event=True,
    )
    return app


app = make_celery()
