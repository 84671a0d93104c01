"""Prometheus metrics at /metrics: HTTP traffic (prometheus-fastapi-instrumentator) and the job system's state.

The job gauges are read from the database at scrape time, so every API process reports the same figures and
nothing has to be pushed: jobs by status, the queue depth, each running job's step, steps per second (from its
two newest progress events) and the age of its worker's last heartbeat (written with each lease renewal).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import Job, JobEvent, JobStatus
from api.settings import Settings

log = logging.getLogger(__name__)
ACTIVE = (JobStatus.running, JobStatus.cancel_requested)


def steps_per_second(events: list[tuple[dict[str, Any], float]]) -> float | None:
    """Rate between the two newest progress events ((payload, unix time), newest first)."""
    if len(events) < 2:
        return None
    (new, t_new), (old, t_old) = events[0], events[1]
    steps, seconds = new.get("step"), old.get("step")
    if not isinstance(steps, int) or not isinstance(seconds, int) or t_new <= t_old:
        return None
    return (steps - seconds) / (t_new - t_old)


class JobsCollector(Collector):
    def __init__(self, sessions: Callable[[], Session], settings: Settings) -> None:
        self._sessions = sessions
        self._lease_seconds = settings.lease_seconds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("dskd_database_up", "1 if the job gauges could be read from the database.")
        try:
            families = self._read()
        except Exception:  # a scrape during a database outage still answers, with up = 0
            log.warning("metrics: could not read the job tables", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        now = time.time()
        by_status = GaugeMetricFamily("dskd_jobs", "Jobs by status.", labels=["status"])
        queue = GaugeMetricFamily("dskd_queue_depth", "Jobs queued and not yet claimed by a worker.")
        step = GaugeMetricFamily(
            "dskd_job_step", "Current optimizer step of a running job.", labels=["job_id"]
        )
        rate = GaugeMetricFamily(
            "dskd_job_steps_per_second", "Training speed of a running job.", labels=["job_id"]
        )
        heartbeat = GaugeMetricFamily(
            "dskd_worker_heartbeat_age_seconds",
            "Seconds since the worker running a job last renewed its lease (its heartbeat).",
            labels=["worker", "job_id"],
        )
        with self._sessions() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            active = session.execute(
                select(Job.id, Job.progress, Job.lease_owner, Job.lease_expires_at, Job.heartbeat_at).where(
                    Job.status.in_(ACTIVE)
                )
            ).all()
            recent = {
                job_id: [
                    (payload or {}, created.timestamp())
                    for payload, created in session.execute(
                        select(JobEvent.payload, JobEvent.created_at)
                        .where(JobEvent.job_id == job_id, JobEvent.type == "progress")
                        .order_by(JobEvent.seq.desc())
                        .limit(2)
                    ).all()
                ]
                for job_id, *_ in active
            }
        for status in JobStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        queue.add_metric([], counts.get(JobStatus.queued.value, 0))
        for job_id, progress, worker, lease_expires, beat in active:
            if isinstance((progress or {}).get("step"), int):
                step.add_metric([job_id], progress["step"])
            speed = steps_per_second(recent[job_id])
            if speed is not None:
                rate.add_metric([job_id], speed)
            if worker and (beat is not None or lease_expires is not None):
                # heartbeat_at when the worker writes it; else the lease's last renewal.
                last = (
                    beat.timestamp() if beat is not None else lease_expires.timestamp() - self._lease_seconds
                )
                heartbeat.add_metric([worker, job_id], max(0.0, now - last))
        return [by_status, queue, step, rate, heartbeat]


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """Instrument the app's requests and expose /metrics (public, like the health probes)."""
    registry = CollectorRegistry()  # one per app: tests build many apps in one process
    Instrumentator(
        excluded_handlers=["/metrics", "/healthz", "/readyz"],
        should_exclude_streaming_duration=True,  # an SSE stream's hour-long "latency" would drown the rest
        registry=registry,
    ).instrument(app, metric_namespace="dskd").expose(app, include_in_schema=False)
    registry.register(JobsCollector(app.state.session_factory, settings))
