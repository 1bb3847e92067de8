"""`/_simulator/...`: read and steer a running simulator from another process, over HTTP.

No key needed: the server only listens on loopback, and tests in a child process (a
Prefect worker killed mid-run) must reach it with nothing but the base URL.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from luma_prefect.simulator._config import Fault
from luma_prefect.simulator._relay import RelayBase
from luma_prefect.simulator._responses import json_response

__all__ = ["admin_routes"]


def admin_routes(relay: RelayBase) -> list[Route]:
    state = relay.state

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"{}")
        except ValueError:
            return None

    def counted(request: Request) -> None:
        relay.begin(request, "admin", auth=False)

    async def info(request: Request) -> Response:
        counted(request)
        return json_response(
            {
                "style": relay.style,
                "route_prefix": relay.config.route_prefix,
                "base_url": relay.base_url,
                "now": state.now(),
            }
        )

    async def counters(request: Request) -> Response:
        counted(request)
        return json_response(state.counters().to_dict())

    async def reset_counters(request: Request) -> Response:
        counted(request)
        state.reset_counters()
        return json_response({"ok": True})

    async def list_faults(request: Request) -> Response:
        counted(request)
        return json_response(state.faults())

    async def add_fault(request: Request) -> Response:
        counted(request)
        data = await body_of(request)
        try:
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object describing a Fault")
            record = state.add_fault(Fault.from_dict(data))
        except (TypeError, ValueError) as exc:
            return json_response({"detail": str(exc)}, 400)
        return json_response(record.to_dict(), 201)

    async def clear_faults(request: Request) -> Response:
        counted(request)
        state.clear_faults()
        return json_response({"ok": True})

    async def remove_fault(request: Request) -> Response:
        counted(request)
        if not state.remove_fault(request.path_params["fault_id"]):
            return json_response({"detail": "no such fault"}, 404)
        return json_response({"ok": True})

    async def advance(request: Request) -> Response:
        counted(request)
        data = await body_of(request)
        seconds = data.get("seconds") if isinstance(data, dict) else None
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            return json_response({"detail": 'expected {"seconds": <number >= 0>}'}, 400)
        return json_response({"now": state.advance(float(seconds))})

    async def generations(request: Request) -> Response:
        counted(request)
        rendered = [relay.render_id(generation_id) for generation_id in state.ids()]
        return json_response([obj for obj in rendered if obj is not None])

    async def seed_generation(request: Request) -> Response:
        counted(request)
        data = await body_of(request)
        if not isinstance(data, dict):
            return json_response({"detail": "the body must be a JSON object"}, 400)
        try:
            generation_id = state.create(
                str(data.get("prompt") or ""),
                str(data.get("state") or "completed"),
                str(data.get("aspect_ratio") or "16:9"),
                data.get("failure_reason"),
            )
        except ValueError as exc:
            return json_response({"detail": str(exc)}, 400)
        return json_response({"id": generation_id}, 201)

    root = "/_simulator"
    return [
        Route(root, info, methods=["GET"]),
        Route(f"{root}/", info, methods=["GET"]),
        Route(f"{root}/counters", counters, methods=["GET"]),
        Route(f"{root}/reset-counters", reset_counters, methods=["POST"]),
        Route(f"{root}/faults", list_faults, methods=["GET"]),
        Route(f"{root}/faults", add_fault, methods=["POST"]),
        Route(f"{root}/faults", clear_faults, methods=["DELETE"]),
        Route(f"{root}/faults/{{fault_id}}", remove_fault, methods=["DELETE"]),
        Route(f"{root}/advance", advance, methods=["POST"]),
        Route(f"{root}/generations", generations, methods=["GET"]),
        Route(f"{root}/generations", seed_generation, methods=["POST"]),
    ]
