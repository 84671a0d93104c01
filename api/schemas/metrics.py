from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class MetricSeriesOut(BaseModel):
    name: str = Field(description="The metric's name as the engine reports it (loss, ce, kd, lr, dev_ce, …).")
    kind: Literal["train", "eval"] = Field(
        description="train: from progress events; eval: dev-set evaluations."
    )
    steps: list[int]
    times: list[float] = Field(description="Wall time of each point, Unix seconds.")
    values: list[float]


class JobMetricsOut(BaseModel):
    job_id: str
    status: str
    series: list[MetricSeriesOut]
    last_seq: int = Field(
        description="The newest event included; stream the events with after_seq=last_seq to continue live."
    )
    max_points: int | None = Field(description="The downsampling asked for (null: every point).")
