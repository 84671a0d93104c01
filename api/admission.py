"""Admission control: a bounded number of requests are worked on at once, a bounded number wait for a turn, and
a request that cannot be served in time is answered 503 with Retry-After instead of hanging.

A request holds its slot until its response starts, so a Server-Sent Events stream or a long download gives its
slot back as soon as the headers are out (streams have their own limits, see api/streaming.py).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import send_problem


class Slots:
    """A FIFO counting semaphore usable from any event loop (test clients run requests on several)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, timeout: float, max_waiting: int) -> bool:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.active < self.capacity and not self._waiters:
                self.active += 1
                return True
            if len(self._waiters) >= max_waiting:
                return False
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except (TimeoutError, asyncio.CancelledError) as e:
            with self._lock:
                handed_over = entry not in self._waiters
                if not handed_over:
                    self._waiters.remove(entry)
            if handed_over:  # release() passed us the slot just as we gave up: pass it on
                self.release()
            if isinstance(e, asyncio.CancelledError):
                raise
            return False

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.popleft()
                if not future.done():
                    loop.call_soon_threadsafe(_grant, future)
                    return  # the slot passes to the waiter: `active` stays the same
            self.active -= 1


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_active: int,
        max_waiting: int,
        wait_seconds: float,
        exempt: tuple[str, ...] = ("/healthz",),
    ) -> None:
        self.app = app
        self.slots = Slots(max_active)
        self.max_waiting = max_waiting
        self.wait_seconds = wait_seconds
        self.exempt = frozenset(exempt)
        self.refused = 0  # observability (and tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        if not await self.slots.acquire(self.wait_seconds, self.max_waiting):
            self.refused += 1
            waited = time.monotonic() - started
            detail = (
                f"the service is saturated ({self.slots.capacity} requests in progress, "
                f"{self.slots.waiting} waiting; waited {waited:.1f} s); retry shortly"
            )
            await send_problem(
                send, scope, 503, "Service Unavailable", "overloaded", detail, headers={"Retry-After": "2"}
            )
            return
        released = False
        admitted = time.monotonic()

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.slots.release()

        async def send_and_release(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
                # Where the time went (RFC-style Server-Timing): waiting for a turn, then being worked on.
                timing = f"admit;dur={(admitted - started) * 1000:.1f}, app;dur={(time.monotonic() - admitted) * 1000:.1f}"
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"server-timing", timing.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()
