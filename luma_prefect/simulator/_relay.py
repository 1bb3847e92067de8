"""What every route of a simulated relay shares: auth, faults, error shapes, rendering."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from luma_prefect.simulator import _shapes as shapes
from luma_prefect.simulator._config import FaultKind
from luma_prefect.simulator._faults import ActiveFault, Target
from luma_prefect.simulator._responses import (
    REQUEST_ID_KEY,
    DroppingResponse,
    json_bytes,
    json_response,
)
from luma_prefect.simulator._state import GenerationView, SimulatorState

__all__ = ["ANSWER_FAULTS", "Call", "RelayBase", "invalid_url", "read_json"]

ANSWER_FAULTS = (
    FaultKind.RATE_LIMIT,
    FaultKind.SERVER_ERROR,
    FaultKind.ERROR_BODY_200,
    FaultKind.MALFORMED_JSON,
    FaultKind.DROP_CONNECTION,
    FaultKind.TRICKLE_ANSWER,
    FaultKind.HUGE_ANSWER,
    FaultKind.NESTED_JSON,
    FaultKind.ECHO_KEY,
)
# NESTED_JSON: far deeper than any JSON parser's recursion limit.
_NESTING = 100_000
_HUGE_DEFAULT = 300 * 1024 * 1024


@dataclass
class Call:
    """One request in flight: its route name and id, and a fault due on its answer."""

    route: str
    request_id: str
    # A fault that breaks the answer after the work is done (DROP_CONNECTION, MALFORMED_JSON).
    late: ActiveFault | None = None
    # The key the request presented (ECHO_KEY repeats it, as some relays do).
    presented_key: str = ""


class RelayBase:
    """The shared plumbing of one simulated relay's handlers, over its `SimulatorState`."""

    def __init__(self, state: SimulatorState, base_url: str) -> None:
        self.state = state
        self.config = state.config
        self.style = state.config.style
        self.base_url = base_url

    def begin(self, request: Request, route: str, auth: bool = True) -> Call | Response:
        self.state.count_request(route, request.scope.get("client"))
        call = Call(route, str(request.scope.get(REQUEST_ID_KEY, "")))
        call.presented_key = request.headers.get("authorization", "").partition(" ")[2]
        if auth and not self._authorized(request):
            if self.style == "official":
                return json_response({"detail": "Invalid API key is provided"}, 401)
            return json_response(shapes.error_body(self.style, "无效的令牌", call.request_id), 401)
        return call

    def _authorized(self, request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        expected = self.config.api_key or ""
        return scheme.lower() == "bearer" and secrets.compare_digest(
            key.strip().encode(), expected.encode()
        )

    async def faults(
        self, call: Call, target: Target, kinds: tuple[FaultKind, ...] = ANSWER_FAULTS
    ) -> Response | None:
        """Apply SLOW, then at most one answer fault; a refusal is returned at once."""
        slow = self.state.fire_fault((FaultKind.SLOW,), call.route, target)
        if slow is not None:
            await asyncio.sleep(slow.fault.delay_seconds)
        record = self.state.fire_fault(kinds, call.route, target)
        if record is None:
            return None
        fault = record.fault
        if fault.kind is FaultKind.RATE_LIMIT:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return json_response(shapes.rate_limit_body(self.style, call.request_id), 429, headers)
        if fault.kind is FaultKind.SERVER_ERROR:
            body, media_type = shapes.server_error(self.style, fault.status, call.request_id)
            return Response(body, fault.status, media_type=media_type)
        if fault.kind is FaultKind.ECHO_KEY:
            message = f"upstream refused key {call.presented_key} (request id: {call.request_id})"
            return json_response({"error": {"message": message, "type": "upstream"}}, fault.status)
        if fault.kind is FaultKind.NESTED_JSON:
            nested = b"[" * _NESTING + b"]" * _NESTING
            return Response(nested, 200, media_type="application/json")
        if fault.kind is FaultKind.ERROR_BODY_200:
            message = f"{shapes.ERROR_BODY_200} (request id: {call.request_id})"
            return json_response({"code": "upstream_error", "message": message, "data": None})
        call.late = record
        return None

    def answer(self, call: Call, payload: Any, status: int = 200) -> Response:
        body = json_bytes(payload)
        late = call.late.fault if call.late else None
        if late is None:
            return Response(body, status, media_type="application/json")
        if late.kind is FaultKind.MALFORMED_JSON:
            return Response(body[: max(1, len(body) // 2)], 200, media_type="application/json")
        if late.kind is FaultKind.TRICKLE_ANSWER:
            return StreamingResponse(
                _trickle(body, late.delay_seconds or 0.05), status, media_type="application/json"
            )
        if late.kind is FaultKind.HUGE_ANSWER:
            size = late.after_bytes or _HUGE_DEFAULT
            return StreamingResponse(_huge(size), status, media_type="application/json")
        return DroppingResponse(body, status, cut=late.after_bytes)

    def error(self, call: Call, status: int, message: str, code: str = "") -> Response:
        if self.style != "task":
            code = ""
        return self.answer(
            call, shapes.error_body(self.style, message, call.request_id, code), status
        )

    def not_found(self, call: Call) -> Response:
        if self.style == "official":
            return self.answer(call, {"detail": "Generation not found"}, 404)
        if self.style == "task":
            return self.answer(call, shapes.wrapped(None, "task_not_exist", "task_not_exist"), 400)
        return self.error(call, 404, "task_not_exist")

    def render(self, view: GenerationView) -> dict[str, Any]:
        if self.style == "official":
            return shapes.official_object(view, self.base_url)
        if self.style == "task":
            return shapes.task_object(view, self.base_url)
        return shapes.generation_object(view, self.base_url, self.config.with_video_raw)

    def render_id(self, generation_id: str) -> dict[str, Any] | None:
        view = self.state.view(generation_id)
        return None if view is None else self.render(view)

    def _created(self, call: Call, generation_id: str, status: int = 200) -> Response:
        view = self.state.view(generation_id, call.route)
        assert view is not None
        broken = self.state.fire_fault(
            (FaultKind.ACCEPT_THEN_ERROR,), call.route, Target((view.id,), (view.prompt,))
        )
        if broken is not None:
            # Paid and created; the answer is an error that carries no id.
            code = broken.fault.status
            body, media_type = shapes.server_error(self.style, code, call.request_id)
            return Response(body, code, media_type=media_type)
        obj = self.render(view)
        if self.style == "task":
            return self.answer(call, shapes.wrapped(obj))
        if self.style == "generations" and self.config.submit_shape == "array":
            return self.answer(call, [obj])
        return self.answer(call, obj, status)

    def _visible(self, generation_id: str, route: str) -> bool:
        exists = self.state.exists(generation_id)
        return exists and not self.state.hidden_after_submit(generation_id, route)


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"null")
    except ValueError:
        return None


def invalid_url(request: Request, request_id: str) -> dict[str, Any]:
    return {
        "error": {
            "message": (
                f"Invalid URL ({request.method} {request.url.path}) (request id: {request_id})"
            ),
            "type": "invalid_request_error",
        }
    }


async def _trickle(body: bytes, every: float) -> AsyncIterator[bytes]:
    for i in range(len(body)):
        yield body[i : i + 1]
        await asyncio.sleep(every)


async def _huge(size: int) -> AsyncIterator[bytes]:
    """A valid JSON array of strings, `size` bytes in all, in 1 MiB pieces."""
    piece = b'"' + b"x" * (1024 * 1024 - 4) + b'",'
    yield b"["
    sent = 1
    while sent + len(piece) + 3 < size:
        yield piece
        sent += len(piece)
    yield b'"end"]'
