"""What an API process runs besides its handlers, sized from the settings: the database pool, the thread pool
for blocking work, the event hubs of the SSE streams, and a reaper (so jobs are recovered even when no worker is
alive to do it)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from api.db.session import PoolSettings, read_only_factory, session_factory, session_scope
from api.key_cache import KeyCache
from api.services.reaper import Reaper, ReaperThread
from api.settings import Settings
from api.streaming import EventHubs, StreamSettings


def pool_settings(settings: Settings) -> PoolSettings:
    return PoolSettings(
        size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        timeout=settings.db_pool_timeout_seconds,
    )


def listen_dsn(database_url: str) -> str | None:
    """A libpq URL for LISTEN on PostgreSQL; None on other databases."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def event_hubs(settings: Settings, sessions: object) -> EventHubs:
    stream = StreamSettings(
        poll_interval=settings.sse_poll_interval_seconds,
        safety_poll_interval=settings.sse_safety_poll_seconds,
        key_check_interval=settings.sse_key_check_seconds,
        listen_dsn=listen_dsn(settings.database_url) if settings.sse_listen else None,
    )
    return EventHubs(
        sessions,  # type: ignore[arg-type]
        stream,
        max_streams=settings.max_sse_streams,
        max_streams_per_key=settings.max_sse_streams_per_key,
    )


def configure(app: FastAPI, settings: Settings) -> None:
    pool = pool_settings(settings)
    app.state.session_factory = session_factory(settings.database_url, pool)
    app.state.read_session_factory = read_only_factory(settings.database_url, pool)
    app.state.event_hubs = event_hubs(settings, app.state.read_session_factory)
    app.state.key_cache = KeyCache(app.state.read_session_factory) if settings.key_cache else None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Blocking handlers and database reads share this many threads; requests beyond them wait (bounded by
    # the admission middleware), and the pool has a connection for every thread.
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    reaper = None
    if settings.api_reaper:
        sessions = functools.partial(session_scope, settings.database_url)
        reaper = ReaperThread(
            Reaper(
                sessions,
                settings,
                app.state.queue.enqueue_job,
                broker_lost=getattr(app.state.queue, "broker_lost", None),
            ),
            settings.reaper_interval_seconds,
        )
        reaper.start()
    try:
        yield
    finally:
        if reaper is not None:
            reaper.stop()
