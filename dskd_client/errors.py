"""Exceptions of the client. An error answer of the API (application/problem+json) becomes an `ApiError` subclass
chosen by its status, carrying the document's fields."""

from __future__ import annotations

from typing import Any

import httpx


class DskdClientError(Exception):
    """Base of every error the client raises."""


class ApiError(DskdClientError):
    """The API answered with an error (RFC 9457 problem document)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        instance: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.instance = instance
        self.errors = errors or []
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.title}: {self.detail}"
        for error in self.errors:
            if error.get("field") and error.get("msg"):
                text += f"\n  {error['field']}: {error['msg']}"
        return text

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        retry_after = response.headers.get("retry-after")
        kind = _BY_STATUS.get(response.status_code, ApiError)
        return kind(
            response.status_code,
            str(body.get("title") or response.reason_phrase or "error"),
            str(body.get("detail") or response.text[:500]),
            type=str(body.get("type", "about:blank")),
            instance=body.get("instance"),
            errors=body.get("errors") if isinstance(body.get("errors"), list) else None,
            request_id=response.headers.get("x-request-id"),
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )


class Unauthorized(ApiError):
    """401: no key, or an invalid or revoked one (set DSKD_API_KEY)."""


class Forbidden(ApiError):
    """403: e.g. an expired download link."""


class NotFound(ApiError):
    """404: no such object for this key (another key's objects look missing too)."""


class Conflict(ApiError):
    """409: e.g. cancelling a finished job, deleting a dataset a job still uses."""


class PayloadTooLarge(ApiError):
    """413: the upload or body exceeds the server's limit."""


class ValidationFailed(ApiError):
    """422: `errors` lists each field at fault."""


class RateLimited(ApiError):
    """429: a per-key limit; `retry_after` says when to try again."""


class ServiceUnavailable(ApiError):
    """503: the server is not ready or saturated; `retry_after` when it says."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}


class ChecksumMismatch(DskdClientError):
    """A downloaded file's sha256 differs from the one the API listed (the partial file is removed)."""


class JobTimeout(DskdClientError):
    """`jobs.wait` gave up before the job finished."""
