"""Security headers on every response: no MIME sniffing, no framing, no referrer; API responses are not cached
and may not load anything (they are data, never a page)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

EVERY_RESPONSE = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
API_RESPONSE = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, api_prefix: str = "/v1/") -> None:
        self.app = app
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = dict(EVERY_RESPONSE)
        if scope["path"].startswith(self.api_prefix):
            extra |= API_RESPONSE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name not in headers:  # a route's own choice (SSE's no-cache) wins
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
