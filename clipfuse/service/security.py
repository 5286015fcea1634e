"""Security headers on every answer of the service (the web page, the API, its docs, errors).

No page of the service may be framed by another site (clickjacking): every response says
``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'`` (added to
a policy the route already set, such as the web page's). Browsers must not guess content
types (``X-Content-Type-Options: nosniff``) and are told not to send the page's address to
image hosts (``Referrer-Policy: no-referrer``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FRAME_ANCESTORS", "SecurityHeadersMiddleware"]

FRAME_ANCESTORS = "frame-ancestors 'none'"
_FIXED = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    """Pure ASGI middleware: adds the headers above to every HTTP response start."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_security_headers(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in headers}
    out = [*headers, *((name, value) for name, value in _FIXED if name not in present)]
    for i, (name, value) in enumerate(out):
        if name.lower() == b"content-security-policy":
            if b"frame-ancestors" not in value:
                out[i] = (name, value.rstrip(b"; ") + b"; " + FRAME_ANCESTORS.encode())
            return out
    out.append((b"content-security-policy", FRAME_ANCESTORS.encode()))
    return out
