"""ASGI answers a normal framework will not give: cut connections, broken JSON, request ids."""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_KEY",
    "ConnectionDropped",
    "DroppingResponse",
    "InFlightCounter",
    "QuietDrops",
    "RequestIdMiddleware",
    "json_bytes",
    "json_response",
]

REQUEST_ID_KEY = "luma_simulator.request_id"


class ConnectionDropped(Exception):
    """Raised after a partial answer: uvicorn then closes the socket mid-body.

    Uvicorn offers no other way for an app to cut a connection; `QuietDrops` keeps the
    deliberate ones out of the logs.
    """


class QuietDrops(logging.Filter):
    """Hides uvicorn's error log for deliberate `ConnectionDropped` only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


def install_quiet_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietDrops) for f in logger.filters):
        logger.addFilter(QuietDrops())


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(json_bytes(payload), status, headers, media_type="application/json")


class DroppingResponse(Response):
    """Promises the whole body in Content-Length, sends `cut` bytes of it, then hangs up."""

    def __init__(
        self,
        content: bytes,
        status_code: int = 200,
        media_type: str = "application/json",
        cut: int | None = None,
    ) -> None:
        super().__init__(content, status_code, media_type=media_type)
        self.cut = len(content) // 2 if cut is None else min(cut, len(content))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body[: self.cut], "more_body": True})
        raise ConnectionDropped("dropped on purpose by a DROP_CONNECTION fault")


class RequestIdMiddleware:
    """Gives every request an id (new-api style digits) and sends it as `X-Request-Id`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._serial = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}{next(self._serial):09d}"
        scope[REQUEST_ID_KEY] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class InFlightCounter:
    """Counts relay API requests open at once, from arrival until the last byte is handed
    to the server (before the client can have it), media and admin routes left out."""

    def __init__(self, app: Any, begin: Any, end: Any) -> None:
        self.app = app
        self._begin = begin
        self._end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path.startswith(("/cdn/", "/_simulator")):
            await self.app(scope, receive, send)
            return
        open_ = [True]

        def close() -> None:
            if open_[0]:
                open_[0] = False
                self._end()

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                close()
            await send(message)

        self._begin()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            close()
