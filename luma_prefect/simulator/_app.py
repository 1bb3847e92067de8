"""The relay's HTTP routes per style, assembled into one ASGI app."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from luma_prefect.simulator import _shapes as shapes
from luma_prefect.simulator._admin import admin_routes
from luma_prefect.simulator._config import ASPECT_RATIOS, FaultKind
from luma_prefect.simulator._faults import Target
from luma_prefect.simulator._media import MediaResponse, media_file
from luma_prefect.simulator._relay import Call, RelayBase, invalid_url, read_json
from luma_prefect.simulator._responses import (
    REQUEST_ID_KEY,
    InFlightCounter,
    RequestIdMiddleware,
    json_response,
)
from luma_prefect.simulator._state import SimulatorState

__all__ = ["Relay", "build_app"]

_MEDIA_FAULTS = (
    FaultKind.RATE_LIMIT,
    FaultKind.SERVER_ERROR,
    FaultKind.DROP_CONNECTION,
    FaultKind.STALL_BODY,
    FaultKind.TRICKLE_BODY,
    FaultKind.REDIRECT_LOOP,
    FaultKind.REDIRECT_TO_HTTP,
)
_SYNTHETIC_DEFAULT = 1 << 20
_EXPIRED_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Request has expired</Message></Error>"
)


class Relay(RelayBase):
    """The request handlers of one simulated relay."""

    # -- relay routes (generations and task styles) ------------------------------------

    async def submit(self, request: Request) -> Response:
        return await self._create(request, "submit", None)

    async def extend(self, request: Request) -> Response:
        return await self._create(request, "extend", request.path_params["generation_id"])

    async def _create(self, request: Request, route: str, source: str | None) -> Response:
        call = self.begin(request, route)
        if isinstance(call, Response):
            return call
        body = await read_json(request)
        prompt = str((body or {}).get("user_prompt") or "").strip()
        target = self.state.target_of([source] if source else [])
        target = Target(target.generation_ids, (*target.prompts, prompt))
        refused = await self.faults(call, target)
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return self.error(
                call, 400, "invalid request: the body must be a JSON object", "invalid_request"
            )
        if source is not None:
            if not self.state.exists(source):
                return self.not_found(call)
            if self.state.phase(source) != "completed":
                return self.error(
                    call,
                    400,
                    f"generation {source} is not completed: cannot extend it",
                    "invalid_request",
                )
        elif not prompt and not (body.get("image_url") or body.get("image_end_url")):
            return self.error(
                call, 400, "user_prompt is required (or an image_url)", "invalid_request"
            )
        aspect_ratio = str(body.get("aspect_ratio") or "16:9")
        if aspect_ratio not in ASPECT_RATIOS:
            return self.error(
                call,
                400,
                f"invalid aspect_ratio {aspect_ratio!r}: use one of {', '.join(ASPECT_RATIOS)}",
                "invalid_request",
            )
        echo = {"prompt": prompt, "aspect_ratio": aspect_ratio}
        model = body.get("model_name")
        generation_id = self.state.submit(prompt, aspect_ratio, echo, model, source)
        return self._created(call, generation_id)

    async def query(self, request: Request) -> Response:
        call = self.begin(request, "query")
        if isinstance(call, Response):
            return call
        if self.style == "task":
            generation_id = request.query_params.get("id", "")
        else:
            generation_id = request.path_params["generation_id"]
        self.state.count_queries([generation_id])
        refused = await self.faults(call, self.state.target_of([generation_id]))
        if refused is not None:
            return refused
        if not self._visible(generation_id, "query"):
            return self.not_found(call)
        view = self.state.view(generation_id, "query")
        assert view is not None
        other = self.state.fire_fault(
            (FaultKind.OTHER_GENERATION,), "query", self.state.target_of([generation_id])
        )
        if other is not None:
            view = self.state.other_view(generation_id)
        obj = self.render(view)
        return self.answer(call, shapes.wrapped(obj) if self.style == "task" else obj)

    async def batch(self, request: Request) -> Response:
        call = self.begin(request, "batch")
        if isinstance(call, Response):
            return call
        body = await read_json(request)
        raw_ids = body.get("ids") if isinstance(body, dict) else None
        ids = [str(i) for i in raw_ids] if isinstance(raw_ids, list) else []
        target = self.state.target_of(ids)
        if self.style != "generations" or self.state.fire_fault(
            (FaultKind.NO_BATCH_ROUTE,), "batch", target
        ):
            return self.answer(call, invalid_url(request, call.request_id), 404)
        self.state.count_queries(ids)
        refused = await self.faults(call, target)
        if refused is not None:
            return refused
        if not isinstance(raw_ids, list):
            return self.error(call, 400, 'invalid request: expected {"ids": [...]}')
        views = [
            view
            for generation_id in ids
            if self._visible(generation_id, "batch")
            and (view := self.state.view(generation_id, "batch")) is not None
        ]
        if self.config.batch_shape == "task_wrapper":
            items = [shapes.batch_item(v, self.base_url, self.config.with_video_raw) for v in views]
            return self.answer(call, shapes.wrapped(items))
        return self.answer(call, [self.render(v) for v in views])

    async def download_url(self, request: Request) -> Response:
        call = self.begin(request, "download_url")
        if isinstance(call, Response):
            return call
        generation_id = request.path_params["generation_id"]
        refused = await self.faults(call, self.state.target_of([generation_id]))
        if refused is not None:
            return refused
        if not self._visible(generation_id, "download_url"):
            return self.not_found(call)
        if self.state.phase(generation_id) != "completed":
            return self.error(
                call, 400, "the video is not ready: the task is not completed", "task_not_completed"
            )
        view = self.state.view(generation_id, "download_url")
        assert view is not None
        link = {"url": shapes.media_url(self.base_url, generation_id, "video_raw.mp4", view.sig)}
        return self.answer(call, shapes.wrapped(link) if self.style == "task" else link)

    # -- official style ----------------------------------------------------------------

    async def official_submit(self, request: Request) -> Response:
        call = self.begin(request, "submit")
        if isinstance(call, Response):
            return call
        body = await read_json(request)
        prompt = str((body or {}).get("prompt") or "").strip()
        keyframes = (body or {}).get("keyframes")
        sources = _keyframe_generations(keyframes)
        target = self.state.target_of(sources)
        refused = await self.faults(call, Target(target.generation_ids, (*target.prompts, prompt)))
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return self.answer(call, {"detail": "The body must be a JSON object"}, 400)
        if keyframes is not None and not _valid_keyframes(keyframes):
            return self.answer(
                call, {"detail": "keyframes must be {frame0, frame1} of image or generation"}, 400
            )
        if not prompt and not keyframes:
            return self.answer(call, {"detail": "A prompt or keyframes are required"}, 400)
        aspect_ratio = str(body.get("aspect_ratio") or "16:9")
        if aspect_ratio not in ASPECT_RATIOS:
            return self.answer(call, {"detail": f"Invalid aspect_ratio {aspect_ratio!r}"}, 400)
        for source in sources:
            phase = self.state.phase(source)
            if phase != "completed":
                problem = "not found" if phase is None else "not completed"
                return self.answer(call, {"detail": f"Generation {source} is {problem}"}, 400)
        model = str(body.get("model") or "ray-2")
        echo = {
            "prompt": prompt or None,
            "aspect_ratio": aspect_ratio,
            "loop": body.get("loop"),
            "keyframes": keyframes,
            "callback_url": body.get("callback_url"),
            "model": model,
            "resolution": body.get("resolution"),
            "duration": body.get("duration"),
        }
        first_source = sources[0] if sources else None
        generation_id = self.state.submit(prompt, aspect_ratio, echo, model, first_source)
        return self._created(call, generation_id, 201)

    async def official_list(self, request: Request) -> Response:
        """`GET /dream-machine/v1/generations?limit&offset`: newest first, like Luma's API."""
        call = self.begin(request, "list")
        if isinstance(call, Response):
            return call
        try:
            limit = max(1, min(int(request.query_params.get("limit", "10")), 100))
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            return self.answer(call, {"detail": "limit and offset must be integers"}, 400)
        ids = list(reversed(self.state.ids()))
        page = ids[offset : offset + limit]
        views = [v for i in page if (v := self.state.view(i)) is not None]
        body = {
            "generations": [self.render(v) for v in views],
            "count": len(views),
            "has_more": offset + limit < len(ids),
            "limit": limit,
            "offset": offset,
        }
        return self.answer(call, body)

    # -- media -------------------------------------------------------------------------

    async def media(self, request: Request) -> Response | MediaResponse:
        call = self.begin(request, "media", auth=False)
        assert isinstance(call, Call)
        generation_id = request.path_params["generation_id"]
        name = request.path_params["name"]
        synthetic = generation_id == "synthetic"
        if not synthetic:
            self.state.count_media(generation_id)
        target = Target() if synthetic else self.state.target_of([generation_id])
        refused = await self.faults(call, target, _MEDIA_FAULTS)
        if refused is not None:
            return refused
        late = call.late.fault if call.late else None
        if late is not None and late.kind in (FaultKind.REDIRECT_LOOP, FaultKind.REDIRECT_TO_HTTP):
            url = request.url
            if late.kind is FaultKind.REDIRECT_TO_HTTP:
                url = url.replace(scheme="http")
            return Response(b"", 302, headers={"location": str(url)})
        slow_body = late is not None and late.kind in (
            FaultKind.STALL_BODY,
            FaultKind.TRICKLE_BODY,
        )

        def respond(size: int, media_type: str, content: bytes | None = None) -> MediaResponse:
            return MediaResponse(
                size=size,
                media_type=media_type,
                range_header=request.headers.get("range"),
                content=content,
                drop=late is not None,
                drop_after=late.after_bytes if late else None,
                trickle=(
                    (late.delay_seconds if late.kind is FaultKind.TRICKLE_BODY else None)
                    if late is not None and slow_body
                    else None
                ),
                stall=late is not None and late.kind is FaultKind.STALL_BODY,
                on_bytes=self.state.add_bytes,
                extra_headers={"cache-control": "public, max-age=3600"},
            )

        if synthetic:
            try:
                size = int(request.query_params.get("size", _SYNTHETIC_DEFAULT))
            except ValueError:
                size = -1
            if size < 0:
                return Response(b"size must be a byte count", 400, media_type="text/plain")
            return respond(size, "video/mp4")
        if name not in shapes.MEDIA_NAMES:
            return Response(b"Not Found", 404, media_type="text/plain")
        access = self.state.media_access(generation_id, request.query_params.get("sig"))
        if access == "missing":
            return Response(b"Not Found", 404, media_type="text/plain")
        if access == "expired":
            return Response(_EXPIRED_XML, 403, media_type="application/xml")
        if name.endswith(".mp4") and self.config.video_bytes is not None:
            return respond(self.config.video_bytes, "video/mp4")
        content, media_type = media_file(name)
        return respond(len(content), media_type, content)


def _keyframe_generations(keyframes: Any) -> list[str]:
    if not isinstance(keyframes, dict):
        return []
    return [
        str(frame.get("id"))
        for frame in keyframes.values()
        if isinstance(frame, dict) and frame.get("type") == "generation"
    ]


def _valid_keyframes(keyframes: Any) -> bool:
    if not isinstance(keyframes, dict) or not set(keyframes) <= {"frame0", "frame1"}:
        return False
    for frame in keyframes.values():
        if not isinstance(frame, dict):
            return False
        kind = frame.get("type")
        if not (
            (kind == "image" and frame.get("url")) or (kind == "generation" and frame.get("id"))
        ):
            return False
    return True


def build_app(state: SimulatorState, base_url: str) -> tuple[Any, Relay]:
    """The ASGI app of one simulator, and its handlers (for direct rendering)."""
    relay = Relay(state, base_url)
    prefix = state.config.route_prefix
    if state.config.style == "official":
        root = "/dream-machine/v1/generations"
        routes = [
            Route(root, relay.official_submit, methods=["POST"]),
            Route(root, relay.official_list, methods=["GET"]),
            Route(root + "/{generation_id}", relay.query, methods=["GET"]),
        ]
    else:
        routes = [
            Route(f"{prefix}/generations", relay.submit, methods=["POST"]),
            Route(f"{prefix}/generations/{{generation_id}}/extend", relay.extend, methods=["POST"]),
            Route(f"{prefix}/tasks", relay.batch, methods=["POST"]),
            Route(
                f"{prefix}/generations/{{generation_id}}/download_video_url",
                relay.download_url,
                methods=["GET"],
            ),
        ]
        if state.config.style == "task":
            routes.append(Route(f"{prefix}/task", relay.query, methods=["GET"]))
        else:
            routes.append(
                Route(f"{prefix}/generations/{{generation_id}}", relay.query, methods=["GET"])
            )
    routes.append(Route("/cdn/{generation_id}/{name}", relay.media, methods=["GET"]))
    routes.extend(admin_routes(relay))

    async def unknown_route(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        request_id = str(request.scope.get(REQUEST_ID_KEY, ""))
        if state.config.style == "official":
            return json_response({"detail": "Not Found"}, status)
        return json_response(invalid_url(request, request_id), status)

    app = Starlette(routes=routes, exception_handlers={404: unknown_route, 405: unknown_route})
    counted = InFlightCounter(app, state.begin_api_request, state.end_api_request)
    return RequestIdMiddleware(counted), relay
