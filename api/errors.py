"""Every error leaves as application/problem+json (RFC 9457): type, title, status, detail, instance, errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Connection failures (OperationalError, InterfaceError), a dropped connection (DisconnectionError) and a pool
# that stayed empty for db_pool_timeout_seconds (TimeoutError).
DATABASE_UNAVAILABLE = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
)
DATABASE_RETRY_AFTER_SECONDS = 5
log = logging.getLogger(__name__)


def problem_type(slug: str) -> str:
    return f"urn:dskd:problem:{slug}"


class ProblemError(Exception):
    """Raise from a handler or dependency to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        phrase = HTTPStatus(status).phrase
        self.status = status
        self.detail = detail
        self.slug = slug or phrase.lower().replace(" ", "-").replace("'", "")
        self.title = title or phrase
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})


def field_error(field: str, msg: str, loc: Sequence[str | int] | None = None) -> dict[str, Any]:
    return {"loc": list(loc) if loc is not None else field.split("."), "field": field, "msg": msg}


def validation_problem(detail: str, errors: Sequence[Mapping[str, Any]]) -> ProblemError:
    return ProblemError(422, detail, slug="validation-error", title="Validation error", errors=errors)


def problem_response(request: Request, problem: ProblemError) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(problem.slug),
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_MEDIA_TYPE
    )


def _field_name(loc: Sequence[str | int]) -> str:
    # ("body", "data", "path") → "data.path"; a query/header/path parameter is named alone ("status", not "status.0").
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in {"query", "path", "header", "cookie"}:
        return parts[1]
    if len(parts) > 1 and parts[0] in {"body", "form"}:
        parts = parts[1:]
    return ".".join(parts)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(request, exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": list(e.get("loc", ())),
            "field": _field_name(e.get("loc", ())),
            "msg": e.get("msg", ""),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    fields = ", ".join(sorted({e["field"] for e in errors})) or "request"
    return problem_response(request, validation_problem(f"invalid request: {fields}", errors))


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (the router's own 405 names only the first route's)."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(request, ProblemError(exc.status_code, detail, headers=headers))


async def _on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # An outage, a restart or an exhausted pool: temporary, so 503 with a hint when to retry (never a 500).
    log.warning("database unavailable on %s: %s", request.url.path, type(exc).__name__)
    return problem_response(
        request,
        ProblemError(
            503,
            "the database is unavailable or busy; retry shortly",
            slug="database-unavailable",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        ),
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return problem_response(request, ProblemError(500, "an unexpected error occurred; see the server log"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    for exc_class in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc_class, _on_database_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)


PROBLEM_SCHEMA: dict[str, Any] = {
    "description": "A problem document (RFC 9457).",
    "content": {
        PROBLEM_MEDIA_TYPE: {
            "schema": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "instance": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
                "required": ["type", "title", "status", "detail"],
            }
        }
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {**PROBLEM_SCHEMA, "description": HTTPStatus(status).phrase} for status in statuses}
