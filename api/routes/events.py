"""Job events: a JSON page, or a Server-Sent Events stream that replays, tails and ends at the terminal event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse
from starlette.responses import Response

from api.auth import CurrentPrincipal
from api.deps import SessionDep, SettingsDep
from api.errors import ProblemError, field_error, problem_responses, validation_problem
from api.routes.jobs import get_owned_job
from api.schemas.events import EventOut, EventPage
from api.services.events import list_events
from api.streaming import EventHubs, StreamLimitReached

router = APIRouter(prefix="/v1/jobs", tags=["events"])
# seq is a 32-bit column: a larger number cannot name an event (and PostgreSQL would refuse to compare it).
MAX_SEQ = 2**31 - 1


def _start_seq(after_seq: int, last_event_id: str | None) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after_seq
    try:
        value = int(last_event_id)
    except ValueError:
        raise validation_problem(
            "Last-Event-ID must be an event seq",
            [field_error("Last-Event-ID", "not an integer", ["header", "Last-Event-ID"])],
        ) from None
    if not 0 <= value <= MAX_SEQ:
        raise validation_problem(
            f"Last-Event-ID must be an event seq between 0 and {MAX_SEQ}",
            [field_error("Last-Event-ID", "out of range", ["header", "Last-Event-ID"])],
        )
    return value


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
    async for event in events:
        yield {
            "id": str(event["seq"]),
            "event": event["type"],
            "data": json.dumps(event, separators=(",", ":")),
        }


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    summary="Job events (JSON page or SSE stream)",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "JSON page or SSE stream",
        },
        **problem_responses(401, 404, 422, 429, 503),
    },
)
async def job_events(
    job_id: str,
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only events with a larger seq.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="JSON page size.")] = 100,
    last_event_id: Annotated[
        str | None, Header(description="SSE resume point (overrides after_seq).")
    ] = None,
) -> Response | EventPage:
    """With `Accept: text/event-stream`: SSE with `id:` = seq, `event:` = type, `data:` = the event as JSON,
    keep-alive comments, replay from `Last-Event-ID`/`after_seq`, and the stream ends after the terminal status event."""
    job = await run_in_threadpool(get_owned_job, session, principal.owner, job_id)
    if "text/event-stream" in request.headers.get("accept", ""):
        start = _start_seq(after_seq, last_event_id)
        hubs: EventHubs = request.app.state.event_hubs
        _check_stream_room(hubs, principal.key_id)
        # Give the connection back now: the request's session would otherwise stay checked out for the
        # stream's whole life (the hub reads with short-lived sessions of its own).
        await run_in_threadpool(session.close)
        return EventSourceResponse(
            _sse(_limited(hubs, job.id, start, principal.key_id)),
            ping=settings.sse_keepalive_seconds,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    rows = await run_in_threadpool(list_events, session, job.id, after_seq, limit)
    items = [EventOut.model_validate(r) for r in rows]
    return EventPage(items=items, next_after_seq=items[-1].seq if items else after_seq, job_status=job.status)


def _stream_refused(e: StreamLimitReached) -> ProblemError:
    if e.per_key:
        return ProblemError(
            429,
            f"this key already has {e.limit} open event streams; close one first",
            slug="too-many-streams",
            title="Too many streams",
            headers={"Retry-After": "5"},
        )
    return ProblemError(
        503,
        f"the server holds its limit of {e.limit} open event streams; retry shortly",
        slug="overloaded",
        headers={"Retry-After": "5"},
    )


def _check_stream_room(hubs: EventHubs, key_id: str) -> None:
    try:
        hubs.check_room(key_id)
    except StreamLimitReached as e:
        raise _stream_refused(e) from None


async def _limited(hubs: EventHubs, job_id: str, start: int, key_id: str) -> AsyncIterator[dict[str, Any]]:
    """The stream, counted against the limits while it is open (checked again here: the room checked before
    the response may have been taken by a concurrent request)."""
    try:
        with hubs.reserve(key_id):
            async for event in hubs.current().stream(job_id, start, key_id):
                yield event
    except StreamLimitReached:
        return
