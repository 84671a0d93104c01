"""The typed client: `Client().jobs.create(spec)`, `.datasets.upload(path)`, `.events.stream(job_id)`, …

Reads `DSKD_API_URL` (default http://127.0.0.1:8000) and `DSKD_API_KEY` when they are not given. Every error
answer raises an `ApiError` subclass carrying the problem document's fields; requests that are safe to repeat
are retried on a dropped connection, 429 and 503 (honouring Retry-After).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from dskd_client.errors import ApiError, DskdClientError, JobTimeout
from dskd_client.models import Dataset, Event, Job, JobMetrics, JobPage
from dskd_client.streams import Events
from dskd_client.transfer import Artifacts, ProgressCallback, ProgressReader

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_WAIT_SECONDS = 30.0


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("DSKD_API_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("DSKD_API_KEY")
        if not key:
            raise DskdClientError("no API key: pass api_key= or set DSKD_API_KEY (dskd keys create NAME)")
        self.retries = retries
        self.http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "dskd-client"},
            timeout=timeout,
            transport=transport,
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.events = Events(self)
        self.artifacts = Artifacts(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One API call; raises the ApiError of an error answer. `retry`: the request is safe to repeat."""
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if not retry or attempt >= self.retries:
                    raise
                wait = None
            else:
                if response.status_code < 400:
                    return response
                error = ApiError.from_response(response)
                if not retry or response.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    raise error
                wait = error.retry_after
            attempt += 1
            time.sleep(min(wait if wait is not None else 0.5 * 2**attempt, MAX_RETRY_WAIT_SECONDS))

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()


class Datasets:
    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(
        self, path: str | Path, *, name: str | None = None, progress: ProgressCallback | None = None
    ) -> Dataset:
        """Upload a JSONL file (validated line by line by the server); `progress(sent, total)` as it goes."""
        path = Path(path)
        total = path.stat().st_size
        with path.open("rb") as f:
            body = ProgressReader(f, total, progress)
            response = self._client.request(
                "POST",
                "/v1/datasets",
                retry=False,  # a retried upload would store the file twice
                files={"file": (path.name, body, "application/jsonl")},
                data={"name": name} if name else None,
                timeout=httpx.Timeout(None, connect=self._client.http.timeout.connect),
            )
        return Dataset.model_validate(response.json())

    def list(self) -> list[Dataset]:
        return [Dataset.model_validate(d) for d in self._client.get_json("/v1/datasets")["items"]]

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._client.get_json(f"/v1/datasets/{dataset_id}"))

    def delete(self, dataset_id: str) -> None:
        self._client.request("DELETE", f"/v1/datasets/{dataset_id}")


class Jobs:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job spec (a dict, as in a YAML spec file, with `data.dataset_id`).

        Always sent with an Idempotency-Key (a fresh one unless given), so a retried submission never makes
        a second job; give your own key to make a re-run of your script safe too.
        """
        key = idempotency_key or uuid.uuid4().hex
        response = self._client.request("POST", "/v1/jobs", json=dict(spec), headers={"Idempotency-Key": key})
        return Job.model_validate(response.json())

    def list(
        self, *, status: str | list[str] | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobPage:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if cursor:
            params["cursor"] = cursor
        return JobPage.model_validate(self._client.get_json("/v1/jobs", params=params))

    def iter(self, *, status: str | list[str] | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job, newest first, following the cursor from page to page."""
        cursor = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._client.get_json(f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled at once. Running: `cancel_requested`, the run stops at its next step."""
        return Job.model_validate(self._client.request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def metrics(self, job_id: str, *, max_points: int | None = None) -> JobMetrics:
        params = {"max_points": max_points} if max_points else None
        return JobMetrics.model_validate(self._client.get_json(f"/v1/jobs/{job_id}/metrics", params=params))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> Job:
        """Follow the job's event stream until it finishes; returns the finished job.

        `on_event` sees every event (progress, eval, log, …) as it arrives. Raises JobTimeout after `timeout`
        seconds (the job keeps running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in self._client.events.stream(job_id, deadline=deadline):
            if on_event is not None:
                on_event(event)
        job = self.get(job_id)
        if not job.is_terminal:
            raise JobTimeout(f"job {job_id} is still {job.status} after {timeout} s")
        return job
