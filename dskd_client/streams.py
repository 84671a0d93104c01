"""Job events: pages (`list`, `iter`) and the live Server-Sent Events stream (`stream`), which reconnects after a
dropped connection with `Last-Event-ID`, so no event is lost or seen twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
from httpx_sse import SSEError, connect_sse

from dskd_client.errors import ApiError
from dskd_client.models import Event, EventPage

if TYPE_CHECKING:
    from dskd_client.client import Client

# The server sends a keep-alive comment every 15 s by default; a silent minute means a dead connection.
READ_TIMEOUT_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 10.0


class Events:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, job_id: str, *, after_seq: int = 0, limit: int = 100) -> EventPage:
        params = {"after_seq": after_seq, "limit": limit}
        return EventPage.model_validate(self._client.get_json(f"/v1/jobs/{job_id}/events", params=params))

    def iter(self, job_id: str, *, after_seq: int = 0) -> Iterator[Event]:
        """Every event recorded so far (oldest first), page by page; does not wait for new ones."""
        while True:
            page = self.list(job_id, after_seq=after_seq, limit=1000)
            yield from page.items
            if not page.items:
                return
            after_seq = page.next_after_seq

    def stream(
        self,
        job_id: str,
        *,
        after_seq: int = 0,
        reconnect: bool = True,
        max_reconnects: int = 20,
        deadline: float | None = None,
    ) -> Iterator[Event]:
        """Live events after `after_seq`, ending after the job's terminal status event.

        A dropped connection (or a server restart) is retried with `Last-Event-ID` set to the last event seen,
        backing off up to 10 s, at most `max_reconnects` times in a row. `deadline` (time.monotonic()) ends the
        stream early. Error answers (401, 404, …) raise at once.
        """
        last_seq, failures, backoff = after_seq, 0, 0.5
        while True:
            headers = {"Last-Event-ID": str(last_seq)} if last_seq else {}
            read = READ_TIMEOUT_SECONDS
            if deadline is not None:
                read = max(0.1, min(read, deadline - time.monotonic()))
            try:
                for event in self._connect(job_id, headers, read):
                    if event.seq <= last_seq:
                        continue  # a replay the server sent twice across a reconnect
                    last_seq, failures, backoff = event.seq, 0, 0.5
                    yield event
                    if event.is_terminal:
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        return
            except (httpx.TransportError, SSEError):
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if not reconnect or failures >= max_reconnects:
                    raise
            else:
                # The server closed the stream without a terminal event (it restarted, or a proxy cut it).
                if not reconnect or failures >= max_reconnects:
                    return
            failures += 1
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _connect(self, job_id: str, headers: dict[str, str], read_timeout: float) -> Iterator[Event]:
        timeout = httpx.Timeout(self._client.http.timeout.connect, read=read_timeout)
        http = self._client.http
        with connect_sse(
            http, "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
        ) as source:
            response = source.response
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            for sse in source.iter_sse():
                if sse.data:
                    yield Event.model_validate_json(sse.data)
