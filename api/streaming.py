"""Live job events for SSE subscribers, fanned out from one source per process.

Subscribers never query the database while they wait: one hub per event loop watches the jobs that have
subscribers and, when a job has news, reads its new events once (unique (job_id, seq) index) and hands them to
every subscriber's queue. The hub learns of news from
- PostgreSQL `LISTEN dskd_events`: every event insert sends `NOTIFY dskd_events '<job_id>'` in its transaction
  (delivered on commit), so workers on any host wake the hub at once; a slow safety poll covers reconnects;
- in-process notifications (`api.services.events.add_local_listener`): events written by this process (submit,
  cancel) wake the hub directly — the embedded mode's own writes;
- otherwise (SQLite: the embedded worker is another process) one shared poll of the watched jobs' `last_seq`
  every `sse_poll_interval_seconds`: one small query for all subscribers together.
A new subscriber first replays from the table (after `Last-Event-ID`), then follows live; duplicates are skipped
by seq. The hub also re-checks its subscribers' keys every few seconds: a revoked key's streams end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.db.models import TERMINAL_STATUSES, ApiKey, Job
from api.schemas.events import EventOut
from api.services.events import NOTIFY_CHANNEL, add_local_listener, is_terminal_event, list_events

log = logging.getLogger(__name__)
BATCH = 500
_RESYNC: dict[str, Any] = {"resync": True}
_CLOSE: dict[str, Any] = {"close": True}


def event_dict(event: Any) -> dict[str, Any]:
    return EventOut.model_validate(event).model_dump(mode="json")


@dataclass(frozen=True)
class StreamSettings:
    poll_interval: float = 0.25  # without a notification channel
    safety_poll_interval: float = 5.0  # with LISTEN/NOTIFY connected
    key_check_interval: float = 2.0
    listen_dsn: str | None = None  # a libpq URL: LISTEN on PostgreSQL
    retry_seconds: float = 1.0  # database unreachable: retry reads this often, keep the stream open


@dataclass(eq=False)
class _Subscriber:
    key_id: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(maxsize=1024))

    def push(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # A slow client: drop the backlog and let it re-read from the database where it left off.
            self._replace_backlog(_RESYNC)

    def close(self) -> None:
        self._replace_backlog(_CLOSE)

    def _replace_backlog(self, item: dict[str, Any]) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(item)


@dataclass(eq=False)
class _Watch:
    last_seq: int
    subscribers: set[_Subscriber] = field(default_factory=set)


class EventHub:
    def __init__(self, session_factory: Callable[[], Session], settings: StreamSettings) -> None:
        self._session_factory = session_factory
        self._settings = settings
        self._watches: dict[str, _Watch] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._runner: asyncio.Task[None] | None = None
        self.listening = False  # LISTEN connected (observability, tests)
        self.pollers_started = 0  # how many times the shared loop was (re)started
        self.reads = 0  # change reads so far (tests: one per wake, not one per subscriber)

    # -- notifications (any thread) --------------------------------------------------------------
    def notify(self, job_ids: set[str]) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._mark_dirty, job_ids)

    def _mark_dirty(self, job_ids: set[str]) -> None:
        watched = job_ids & self._watches.keys()
        if watched:
            self._dirty |= watched
            self._wake.set()

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

    def _revoked(self, key_ids: set[str]) -> set[str]:
        return set(
            self._read(
                lambda s: s.scalars(
                    select(ApiKey.id).where(ApiKey.id.in_(list(key_ids)), ApiKey.revoked_at.is_not(None))
                ).all()
            )
        )

    async def fetch_after(self, job_id: str, after_seq: int, limit: int = BATCH) -> list[dict[str, Any]]:
        return await self._retrying(
            lambda s: [event_dict(e) for e in list_events(s, job_id, after_seq, limit)]
        )

    async def job_status(self, job_id: str) -> str | None:
        return await self._retrying(lambda s: s.scalar(select(Job.status).where(Job.id == job_id)))

    async def _retrying(self, fn: Callable[[Session], Any]) -> Any:
        """A read that waits out a database outage (the stream stays open; pings keep flowing)."""
        while True:
            try:
                return await anyio.to_thread.run_sync(self._read, fn)
            except (DBAPIError, SQLAlchemyError):
                log.warning("event stream: database read failed; retrying", exc_info=True)
                await asyncio.sleep(self._settings.retry_seconds)

    # -- subscription ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def subscription(self, job_id: str, key_id: str) -> AsyncIterator[_Subscriber]:
        subscriber = _Subscriber(key_id)
        if job_id not in self._watches:
            start = await self._retrying(
                lambda s: s.scalar(select(Job.last_seq).where(Job.id == job_id)) or 0
            )
            self._watches.setdefault(job_id, _Watch(last_seq=start))
        self._watches[job_id].subscribers.add(subscriber)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
            self.pollers_started += 1
        try:
            yield subscriber
        finally:
            watch = self._watches.get(job_id)
            if watch is not None:
                watch.subscribers.discard(subscriber)
                if not watch.subscribers:
                    del self._watches[job_id]

    # -- the shared loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        listener = asyncio.create_task(self._listen()) if self._settings.listen_dsn else None
        loop = asyncio.get_running_loop()
        last_full = last_key_check = loop.time()
        try:
            while self._watches:
                interval = (
                    self._settings.safety_poll_interval if self.listening else self._settings.poll_interval
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=interval)
                self._wake.clear()
                now = loop.time()
                full = now - last_full >= interval
                jobs = set(self._watches) if full else self._dirty & self._watches.keys()
                self._dirty.clear()
                if full:
                    last_full = now
                if jobs:
                    await self._deliver(jobs)
                if now - last_key_check >= self._settings.key_check_interval:
                    last_key_check = now
                    await self._close_revoked()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            self.listening = False

    async def _deliver(self, jobs: set[str]) -> None:
        known = {j: self._watches[j].last_seq for j in jobs if j in self._watches}
        try:
            changes = await anyio.to_thread.run_sync(self._changes, known)
        except (DBAPIError, SQLAlchemyError):
            log.warning("event hub: database read failed; retrying", exc_info=True)
            self._dirty |= jobs  # read them again next round
            return
        self.reads += 1
        for job_id, events in changes.items():
            watch = self._watches.get(job_id)
            if watch is None or not events:
                continue
            watch.last_seq = events[-1]["seq"]
            for event in events:
                for subscriber in list(watch.subscribers):
                    subscriber.push(event)
            if len(events) == BATCH:
                self._dirty.add(job_id)  # more to read
                self._wake.set()

    async def _close_revoked(self) -> None:
        subscribers = [s for w in self._watches.values() for s in w.subscribers]
        if not subscribers:
            return
        try:
            revoked = await anyio.to_thread.run_sync(self._revoked, {s.key_id for s in subscribers})
        except (DBAPIError, SQLAlchemyError):
            return  # checked again on the next round
        for subscriber in subscribers:
            if subscriber.key_id in revoked:
                subscriber.close()

    async def _listen(self) -> None:
        """LISTEN on PostgreSQL; on any failure, fall back to polling and reconnect with a backoff."""
        import psycopg

        backoff = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._settings.listen_dsn, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening, backoff = True, 0.5
                    self._mark_dirty(set(self._watches))  # whatever happened while we were not listening
                    async for note in conn.notifies():
                        self._mark_dirty({note.payload})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event hub: LISTEN connection lost; polling until it is back", exc_info=True)
            self.listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    # -- one client's stream -----------------------------------------------------------------------
    async def _from_db(self, job_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        while True:
            batch = await self.fetch_after(job_id, after_seq)
            for event in batch:
                yield event
                after_seq = event["seq"]
            if len(batch) < BATCH:
                return

    async def stream(self, job_id: str, after_seq: int, key_id: str) -> AsyncIterator[dict[str, Any]]:
        """Events after after_seq: replay from the database, then live, ending after the terminal event (or
        when the key is revoked)."""
        sent = after_seq
        async with self.subscription(job_id, key_id) as subscriber:
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
                if item is _CLOSE:
                    return
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


class StreamLimitReached(Exception):
    def __init__(self, per_key: bool, limit: int) -> None:
        super().__init__(f"{'per-key' if per_key else 'global'} limit of {limit} streams")
        self.per_key = per_key
        self.limit = limit


class EventHubs:
    """One hub per running event loop (a test client may run requests on different loops), plus the stream
    counts the limits are checked against (process-wide)."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        settings: StreamSettings,
        *,
        max_streams: int,
        max_streams_per_key: int,
    ) -> None:
        self._session_factory = session_factory
        self._settings = settings
        self._hubs: dict[int, EventHub] = {}
        self.max_streams = max_streams
        self.max_streams_per_key = max_streams_per_key
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()
        add_local_listener(_weak_notify(self))

    def current_hubs(self) -> list[EventHub]:
        return list(self._hubs.values())

    def current(self) -> EventHub:
        key = id(asyncio.get_running_loop())
        if key not in self._hubs:
            self._hubs[key] = EventHub(self._session_factory, self._settings)
        return self._hubs[key]

    def notify(self, job_ids: set[str]) -> None:
        for hub in list(self._hubs.values()):
            hub.notify(job_ids)

    def check_room(self, key_id: str) -> None:
        """Raises StreamLimitReached when a new stream of this key would exceed a limit."""
        with self._lock:
            self._check_room_locked(key_id)

    @contextlib.contextmanager
    def reserve(self, key_id: str) -> Iterator[None]:
        """Count one open stream of this key while the block runs (StreamLimitReached when there is no room)."""
        with self._lock:
            self._check_room_locked(key_id)
            self._open[key_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[key_id] -= 1
                if self._open[key_id] <= 0:
                    del self._open[key_id]

    def _check_room_locked(self, key_id: str) -> None:
        if self._open[key_id] >= self.max_streams_per_key:
            raise StreamLimitReached(True, self.max_streams_per_key)
        if self._open.total() >= self.max_streams:
            raise StreamLimitReached(False, self.max_streams)

    def open_streams(self, key_id: str | None = None) -> int:
        with self._lock:
            return self._open[key_id] if key_id is not None else self._open.total()


def _weak_notify(hubs: EventHubs) -> Callable[[set[str]], bool]:
    """A listener that does not keep the hubs (and their app) alive; returns False once they are gone."""
    ref = weakref.ref(hubs)

    def notify(job_ids: set[str]) -> bool:
        target = ref()
        if target is None:
            return False
        target.notify(job_ids)
        return True

    return notify
