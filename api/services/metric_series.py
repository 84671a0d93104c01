"""A job's metric history as time series, read from its progress and eval events.

The events are the one record of a run's history (the worker writes them, throttled); the series are a view of
them, so the dashboard's curves, the client and the event stream can never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Job, JobEvent

# Event type → series kind: training steps and dev-set evaluations.
SERIES_KINDS = {"progress": "train", "eval": "eval"}


@dataclass
class Series:
    name: str
    kind: str
    steps: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # Unix seconds of the event
    values: list[float] = field(default_factory=list)


def _numeric(value: Any) -> float | None:
    # JSON has no NaN or infinity; booleans are ints to Python but never a curve.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def build_series(rows: list[tuple[str, dict[str, Any], float]]) -> list[Series]:
    """(event type, payload, unix time) in seq order → one series per (kind, metric name), in first-seen order."""
    by_key: dict[tuple[str, str], Series] = {}
    for event_type, payload, time in rows:
        kind = SERIES_KINDS.get(event_type)
        step = payload.get("step")
        if kind is None or not isinstance(step, int):
            continue
        for name, raw in (payload.get("metrics") or {}).items():
            value = _numeric(raw)
            if value is None:
                continue
            series = by_key.setdefault((kind, name), Series(name=name, kind=kind))
            series.steps.append(step)
            series.times.append(time)
            series.values.append(value)
    return list(by_key.values())


def downsample(series: Series, max_points: int) -> Series:
    """At most max_points points, evenly spaced over the series, always keeping the first and the last.

    Points are picked, not averaged, so every point returned is one the run really reported.
    """
    n = len(series.steps)
    if n <= max_points:
        return series
    if max_points == 1:
        picks = [n - 1]
    else:
        picks = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return Series(
        name=series.name,
        kind=series.kind,
        steps=[series.steps[i] for i in picks],
        times=[series.times[i] for i in picks],
        values=[series.values[i] for i in picks],
    )


def job_series(session: Session, job: Job, max_points: int | None = None) -> tuple[list[Series], int]:
    """The job's series and the seq of the newest event they include (resume an event stream after it)."""
    last_seq = session.scalar(select(Job.last_seq).where(Job.id == job.id)) or 0
    rows = session.execute(
        select(JobEvent.type, JobEvent.payload, JobEvent.created_at)
        .where(
            JobEvent.job_id == job.id,
            JobEvent.type.in_(list(SERIES_KINDS)),
            JobEvent.seq <= last_seq,
        )
        .order_by(JobEvent.seq)
    ).all()
    series = build_series([(t, p or {}, c.timestamp()) for t, p, c in rows])
    if max_points is not None:
        series = [downsample(s, max_points) for s in series]
    return series, last_seq
