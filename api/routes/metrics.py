"""A job's metric history (training loss and its parts, learning rate, dev metrics) as time series."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import CurrentPrincipal
from api.deps import SessionDep
from api.errors import problem_responses
from api.routes.jobs import get_owned_job
from api.schemas.metrics import JobMetricsOut, MetricSeriesOut
from api.services.metric_series import job_series

router = APIRouter(prefix="/v1/jobs", tags=["metrics"])


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetricsOut,
    summary="A job's metrics by step (time series)",
    responses=problem_responses(401, 404, 422),
)
def get_job_metrics(
    job_id: str,
    principal: CurrentPrincipal,
    session: SessionDep,
    max_points: Annotated[
        int | None,
        Query(
            ge=1,
            le=100_000,
            description="Downsample each series to at most this many points (first and "
            "last kept, evenly spaced between).",
        ),
    ] = None,
) -> JobMetricsOut:
    """One series per metric, built from the job's `progress` (kind `train`) and `eval` (kind `eval`) events:
    every point is a value the run reported, with its step and wall time."""
    job = get_owned_job(session, principal.owner, job_id)
    series, last_seq = job_series(session, job, max_points)
    return JobMetricsOut(
        job_id=job.id,
        status=job.status,
        series=[MetricSeriesOut(**vars(s)) for s in series],
        last_seq=last_seq,
        max_points=max_points,
    )
