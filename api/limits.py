"""Request limits enforced before routing (so before authentication and before a handler reads anything):
the body size of every request, and the shape of every JSON body.

Both are pure ASGI middleware: an oversized body is refused from its Content-Length without reading it, or cut
off while it streams in; a JSON body is checked once here (no NaN/Infinity, no NUL characters, integers within
the database's 64-bit range, bounded nesting) so no handler, database driver or worker ever sees such values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PROBLEM_MEDIA_TYPE, problem_type

# Multipart framing around an uploaded file: boundaries, part headers and the name field.
MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_PATH = "/v1/datasets"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_JSON_DEPTH = 32
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def send_problem(
    send: Send,
    scope: Scope,
    status: int,
    title: str,
    slug: str,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    close: bool = False,
) -> None:
    """A problem+json response written straight to the ASGI channel (middleware runs outside FastAPI)."""
    document: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": scope.get("path", ""),
    }
    if errors is not None:
        document["errors"] = errors
    body = json.dumps(document).encode()
    raw = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        # The client may still be sending a body we refuse to read: the connection cannot be reused.
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 problem+json for a body larger than the route's limit: dataset uploads get `upload_limit` (plus
    multipart framing), every other request `json_limit`."""

    def __init__(self, app: ASGIApp, *, json_limit: int, upload_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
            return (
                self.upload_limit + MULTIPART_OVERHEAD,
                f"the dataset exceeds the upload limit of {self.upload_limit} bytes",
            )
        return self.json_limit, f"the request body exceeds the limit of {self.json_limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, detail = self._limit(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await send_problem(send, scope, 413, "Content Too Large", "payload-too-large", detail, close=True)
            return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not started:
                    # Answer now and tell the app the client went away, so whatever was reading stops.
                    refused = True
                    await send_problem(
                        send, scope, 413, "Content Too Large", "payload-too-large", detail, close=True
                    )
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is already out: drop the app's own reaction to the disconnect
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not refused:
                raise


class JsonProblem(ValueError):
    def __init__(self, loc: list[str | int], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


def _reject_constant(name: str) -> Any:
    raise JsonProblem([], f"{name} is not a number JSON allows")


def _walk(value: Any) -> Iterator[tuple[list[str | int], Any]]:
    """Every key and value of a parsed document with its location (iterative: no recursion limit)."""
    stack: list[tuple[list[str | int], Any]] = [([], value)]
    while stack:
        loc, item = stack.pop()
        yield loc, item
        if isinstance(item, dict):
            for key, child in item.items():
                yield [*loc, key], key
                stack.append(([*loc, key], child))
        elif isinstance(item, list):
            stack.extend(([*loc, i], child) for i, child in enumerate(item))


def check_json_document(raw: bytes) -> None:
    """Raises JsonProblem for a body FastAPI would parse but nothing downstream should receive."""
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise JsonProblem([], f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (JsonProblem, UnicodeDecodeError):
        raise
    except ValueError:
        return  # not JSON at all: FastAPI answers it with its own json_invalid error
    for loc, item in _walk(document):
        if len(loc) > MAX_JSON_DEPTH:
            raise JsonProblem(loc[:MAX_JSON_DEPTH], f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str) and "\x00" in item:
            raise JsonProblem(loc, "NUL characters are not allowed in strings")
        if isinstance(item, bool):
            continue
        if isinstance(item, int) and not INT64_MIN <= item <= INT64_MAX:
            raise JsonProblem(loc, "integer outside the 64-bit range")
        if isinstance(item, float) and not math.isfinite(item):
            raise JsonProblem(loc, "number outside the range of a 64-bit float")


def _is_json(scope: Scope) -> bool:
    content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").lower()
    media = content_type.split(";", 1)[0].strip()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class JsonGuardMiddleware:
    """422 problem+json for JSON bodies holding NaN/Infinity, NUL characters, integers beyond 64 bits or
    deep nesting. Runs inside BodyLimitMiddleware, so the body it buffers is already bounded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check_json_document(body)
        except UnicodeDecodeError:
            await self._refuse(send, scope, [], "the body is not UTF-8")
            return
        except JsonProblem as e:
            await self._refuse(send, scope, e.loc, e.msg)
            return
        await self.app(
            scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send
        )

    @staticmethod
    async def _refuse(send: Send, scope: Scope, loc: list[str | int], msg: str) -> None:
        field = ".".join(str(p) for p in loc) or "body"
        error = {"loc": ["body", *loc], "field": field, "msg": msg, "type": "value_error"}
        await send_problem(
            send,
            scope,
            422,
            "Validation error",
            "validation-error",
            f"invalid request: {field}",
            errors=[error],
        )


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A receive channel that first hands out the buffered messages, then defers to the real one."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive
