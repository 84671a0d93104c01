"""Logging for the API and the worker: text or JSON lines, each carrying the request id or the job id.

`configure_logging(settings)` installs one handler on the root logger (uvicorn's and Celery's loggers propagate
to it); `RequestIdMiddleware` gives every request an id (the caller's `X-Request-ID` when it is sane), returns
it in the response header, puts it on every log line of the request and writes one access line per request.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.settings import Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("dskd_request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("dskd_job_id", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HANDLER_MARK = "_dskd_handler"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(context)s %(message)s"
access_log = logging.getLogger("dskd.access")
# LogRecord attributes that are not extra= fields (the JSON formatter adds every other attribute).
_RESERVED = [*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime"]


class ContextFilter(logging.Filter):
    """Copies the request id and job id of the current context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id, job_id = REQUEST_ID.get(), JOB_ID.get()
        if not hasattr(record, "request_id"):
            record.request_id = request_id
        if not hasattr(record, "job_id"):
            record.job_id = job_id
        parts = [f"request={record.request_id}" if record.request_id else ""]
        parts.append(f"job={record.job_id}" if record.job_id else "")
        record.context = "".join(f" [{p}]" for p in parts if p)
        return True


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        # Fields every line has; extra= fields (method, path, status, …) are added by the formatter.
        return JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}{job_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=[*_RESERVED, "context", "color_message"],  # uvicorn's ANSI-coloured copy
        )
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """One handler on the root logger (replacing the one a previous call installed)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(ContextFilter())
    handler.setFormatter(make_formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler


class RequestIdMiddleware:
    """Pure ASGI (no buffering, so SSE streams pass straight through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            access_log.info(
                "%s %s %s %.1f ms",
                scope["method"],
                scope["path"],
                status,
                duration_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": duration_ms,
                },
            )
            REQUEST_ID.reset(token)
