"""Python client of the dskd job service.

from dskd_client import Client

with Client() as client:                         # DSKD_API_URL, DSKD_API_KEY
    dataset = client.datasets.upload("train.jsonl")
    job = client.jobs.create({..., "data": {"dataset_id": dataset.id}})
    job = client.jobs.wait(job.id, on_event=print)
    client.artifacts.download(job.id, "student.tar", "out/")
"""

from dskd_client.client import Client, Datasets, Jobs
from dskd_client.errors import (
    ApiError,
    ChecksumMismatch,
    Conflict,
    DskdClientError,
    Forbidden,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from dskd_client.models import Artifact, Dataset, Event, EventPage, Job, JobMetrics, JobPage, MetricSeries
from dskd_client.streams import Events
from dskd_client.transfer import Artifacts

__all__ = [
    "ApiError",
    "Artifact",
    "Artifacts",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "Dataset",
    "Datasets",
    "DskdClientError",
    "Event",
    "EventPage",
    "Events",
    "Forbidden",
    "Job",
    "JobMetrics",
    "JobPage",
    "JobTimeout",
    "Jobs",
    "MetricSeries",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthorized",
    "ValidationFailed",
]
