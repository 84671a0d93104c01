"""Live job events for SSE subscribers: one shared poller per event loop, not one query loop per client.

Every sse_poll_interval the poller runs ONE indexed query on the jobs primary key (`id IN watched`) to see
which watched jobs' last_seq moved, then reads only the new events of those jobs (unique (job_id, seq) index)
and fans them out to the subscribers' queues. 100 clients watching one job cost one query per interval,
not 100; clients of different jobs share the same change query.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import TERMINAL_STATUSES, Job
from api.schemas.events import EventOut
from api.services.events import is_terminal_event, list_events, max_seq

BATCH = 500
_RESYNC: dict[str, Any] = {"resync": True}


def event_dict(event: Any) -> dict[str, Any]:
    return EventOut.model_validate(event).model_dump(mode="json")


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(maxsize=1024))

    def push(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A slow client: drop the backlog and let it re-read from the database where it left off.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(_RESYNC)


@dataclass(eq=False)
class _Watch:
    last_seq: int
    subscribers: set[_Subscriber] = field(default_factory=set)


class EventHub:
    def __init__(self, session_factory: Callable[[], Session], poll_interval: float) -> None:
        self._session_factory = session_factory
        self._poll_interval = poll_interval
        self._watches: dict[str, _Watch] = {}
        self._poller: asyncio.Task[None] | None = None
        self.pollers_started = 0  # observability (and the test that subscribers share one poller)

    # -- database reads, run in worker threads -------------------------------------------------
    def _read(self, fn: Callable[[Session], Any]) -> Any:
        with self._session_factory() as session:
            return fn(session)

    def _changes(self, known: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
        def read(session: Session) -> dict[str, list[dict[str, Any]]]:
            rows = session.execute(select(Job.id, Job.last_seq).where(Job.id.in_(list(known)))).all()
            return {
                job_id: [event_dict(e) for e in list_events(session, job_id, known[job_id], BATCH)]
                for job_id, last_seq in rows
                if last_seq > known[job_id]
            }

        return self._read(read)

    async def fetch_after(self, job_id: str, after_seq: int, limit: int = BATCH) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(
            self._read, lambda s: [event_dict(e) for e in list_events(s, job_id, after_seq, limit)]
        )

    async def job_status(self, job_id: str) -> str | None:
        return await anyio.to_thread.run_sync(
            self._read, lambda s: s.scalar(select(Job.status).where(Job.id == job_id))
        )

    # -- subscription ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def subscription(self, job_id: str) -> AsyncIterator[_Subscriber]:
        subscriber = _Subscriber()
        if job_id not in self._watches:
            start = await anyio.to_thread.run_sync(self._read, lambda s: max_seq(s, job_id))
            self._watches.setdefault(job_id, _Watch(last_seq=start))
        self._watches[job_id].subscribers.add(subscriber)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
            self.pollers_started += 1
        try:
            yield subscriber
        finally:
            watch = self._watches.get(job_id)
            if watch is not None:
                watch.subscribers.discard(subscriber)
                if not watch.subscribers:
                    del self._watches[job_id]

    async def _poll(self) -> None:
        while self._watches:
            known = {job_id: w.last_seq for job_id, w in self._watches.items()}
            changes = await anyio.to_thread.run_sync(self._changes, known)
            for job_id, events in changes.items():
                watch = self._watches.get(job_id)
                if watch is None or not events:
                    continue
                watch.last_seq = events[-1]["seq"]
                for event in events:
                    for subscriber in list(watch.subscribers):
                        subscriber.push(event)
            await asyncio.sleep(self._poll_interval)

    async def _from_db(self, job_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        while True:
            batch = await self.fetch_after(job_id, after_seq)
            for event in batch:
                yield event
                after_seq = event["seq"]
            if len(batch) < BATCH:
                return

    async def stream(self, job_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        """Events after after_seq: replay from the database, then live, ending after the terminal event."""
        sent = after_seq
        async with self.subscription(job_id) as subscriber:
            # Subscribed before replaying, so nothing committed in between is missed; duplicates are skipped.
            async for event in self._from_db(job_id, sent):
                yield event
                sent = event["seq"]
                if is_terminal_event(event["type"], event["payload"]):
                    return
            if await self.job_status(job_id) in TERMINAL_STATUSES:
                # Finished before we looked: the terminal event is either read now or was already sent.
                async for event in self._from_db(job_id, sent):
                    yield event
                return
            while True:
                item = await subscriber.queue.get()
                live = self._from_db(job_id, sent) if item is _RESYNC else _one(item)
                async for event in live:
                    if event["seq"] <= sent:
                        continue
                    yield event
                    sent = event["seq"]
                    if is_terminal_event(event["type"], event["payload"]):
                        return


async def _one(event: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield event


class EventHubs:
    """One hub per running event loop (a test client may run requests on different loops)."""

    def __init__(self, session_factory: Callable[[], Session], poll_interval: float) -> None:
        self._session_factory = session_factory
        self._poll_interval = poll_interval
        self._hubs: dict[int, EventHub] = {}

    def current_hubs(self) -> list[EventHub]:
        return list(self._hubs.values())

    def current(self) -> EventHub:
        key = id(asyncio.get_running_loop())
        if key not in self._hubs:
            self._hubs[key] = EventHub(self._session_factory, self._poll_interval)
        return self._hubs[key]
