"""Typed views of the API's answers. Unknown fields are kept (a newer server may send more)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Dataset(_Model):
    id: str
    name: str
    size_bytes: int
    sha256: str
    row_count: int
    created_at: datetime


class JobProgress(_Model):
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None


class JobError(_Model):
    code: str
    message: str


class Job(_Model):
    id: str
    name: str | None = None
    status: str
    attempt: int
    max_attempts: int
    dataset_id: str | None = None
    dev_dataset_id: str | None = None
    spec: dict[str, Any]
    progress: JobProgress
    error: JobError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobPage(_Model):
    items: list[Job]
    next_cursor: str | None = None


class Event(_Model):
    seq: int
    type: str
    payload: dict[str, Any]
    created_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.type == "status" and self.payload.get("status") in TERMINAL_STATUSES


class EventPage(_Model):
    items: list[Event]
    next_after_seq: int
    job_status: str


class Artifact(_Model):
    name: str
    kind: str
    size_bytes: int
    sha256: str
    created_at: datetime
    download_url: str
    link_url: str | None = None
    link_expires_at: datetime | None = None


class MetricSeries(_Model):
    name: str
    kind: str
    steps: list[int]
    times: list[float]
    values: list[float]


class JobMetrics(_Model):
    job_id: str
    status: str
    series: list[MetricSeries]
    last_seq: int
    max_points: int | None = None

    def get(self, name: str, kind: str | None = None) -> MetricSeries | None:
        return next((s for s in self.series if s.name == name and kind in (None, s.kind)), None)
