"""Job request/response bodies. The request body is the engine's own JobSpec."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.db.base import utcnow
from api.db.models import Job, JobStatus

JOB_SPEC_EXAMPLE: dict[str, Any] = {
    "name": "qwen-1.5b-to-gpt2-dskd",
    "teacher": {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct", "dtype": "bfloat16"},
    "student": {"name_or_path": "openai-community/gpt2", "dtype": "float32"},
    "data": {
        "dataset_id": "3f2b8c1e9a7d4e6f8b0c2d4e6f8a0b1c",
        "dev_dataset_id": "9d4e6f8a0b1c3f2b8c1e9a7d4e6f8a0b",
        "prompt_template": "none",
    },
    "distill": {"method": "dskd_eta", "divergence": "fkl", "kd_rate": 0.5, "temperature": 2.0},
    "training": {
        "lr": 0.0005,
        "epochs": 3,
        "batch_size": 8,
        "grad_accum": 2,
        "max_length": 512,
        "checkpoint_interval": 200,
    },
}


class JobProgress(BaseModel):
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="Latest training/eval metrics.")
    elapsed_seconds: float | None = Field(
        None, description="Time since the job started (training time if reported)."
    )
    eta_seconds: float | None = Field(None, description="Estimated time to finish.")


class JobError(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    self: str
    events: str
    artifacts: str


class JobOut(BaseModel):
    id: str
    name: str | None
    status: JobStatus
    attempt: int = Field(description="Claims so far (0 before a worker first took the job).")
    max_attempts: int
    dataset_id: str | None = Field(
        description="The training dataset (null once deleted after the job ended)."
    )
    dev_dataset_id: str | None = Field(
        description="The separate dev dataset (data.dev_dataset_id), if any; null once deleted after the job ended."
    )
    spec: dict[str, Any]
    progress: JobProgress
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    links: JobLinks

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        raw = dict(job.progress or {})
        progress = JobProgress(
            step=raw.get("step"),
            total_steps=raw.get("total_steps"),
            epoch=raw.get("epoch"),
            metrics=raw.get("metrics") or {},
            elapsed_seconds=raw.get("elapsed_seconds"),
            eta_seconds=raw.get("eta_seconds"),
        )
        if progress.elapsed_seconds is None and job.started_at is not None:
            progress.elapsed_seconds = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
        if (
            progress.eta_seconds is None
            and not job.is_terminal
            and progress.step
            and progress.total_steps
            and progress.elapsed_seconds is not None
        ):
            # Linear extrapolation from the steps done so far.
            progress.eta_seconds = (
                progress.elapsed_seconds * (progress.total_steps - progress.step) / progress.step
            )
        error = job.error
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            name=job.name,
            status=JobStatus(job.status),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            dataset_id=job.dataset_id,
            dev_dataset_id=job.dev_dataset_id,
            spec=job.spec,
            progress=progress,
            error=JobError(code=str(error.get("code", "error")), message=str(error.get("message", "")))
            if error
            else None,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
            links=JobLinks(self=base, events=f"{base}/events", artifacts=f"{base}/artifacts"),
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")
