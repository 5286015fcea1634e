"""Bounding request bodies before they are read (uploads, JSON, documents)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

__all__ = ["BodyLimitMiddleware", "too_large"]


def too_large(size: int | None, limit: int, path: str, setting: str) -> str:
    got = f"of {size:,} bytes " if size is not None else ""
    return (
        f"request body {got}is over the limit of {limit:,} bytes for {path}: send a smaller body "
        f"(the operator can raise {setting})"
    )


class BodyLimitMiddleware:
    """Refuses request bodies over a per-path limit with 413.

    A declared ``Content-Length`` over the limit is refused before anything is read; a
    body without one (chunked) is counted as it streams and cut off at the limit.
    ``limit_for(path)`` returns ``(limit_bytes, setting name shown in the message)``.
    """

    def __init__(self, app: Any, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit, setting = self.limit_for(path)
        declared: int | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(send, 400, "Content-Length is not a number")
                    return
        if declared is not None and declared > limit:
            await _reply(send, 413, too_large(declared, limit, path, setting))
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, too_large(None, limit, path, setting))
            return message

        await self.app(scope, limited_receive, send)


async def _reply(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
