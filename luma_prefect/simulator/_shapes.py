"""Wire JSON of each relay style, copied from the shapes in shared/fixtures.

Built from plain dicts on purpose: the simulator must not share models with the client it
tests, or a shape mistake in one would hide in the other.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from luma_prefect.simulator._state import GenerationView

__all__ = [
    "ERROR_BODY_200",
    "MEDIA_NAMES",
    "batch_item",
    "dimensions",
    "error_body",
    "generation_object",
    "media_url",
    "official_object",
    "rate_limit_body",
    "server_error",
    "task_object",
    "wrapped",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
UNKNOWN_STATE_WORD = "waiting_for_gpu"
VIDEO_DURATION = 5.041667
PALETTE = {
    "grid": "em9csKqXYUgqdHVmmqeZLB8YaFpLjVw2bmFTTElBHhMNTzgodD8eVzUeTDorRSkYYEQymV80e1M0ck0ugWVRw"
    "KCApWk0hF1BgmVP"
}
MEDIA_NAMES = ("video.mp4", "video_raw.mp4", "thumbnail.jpg", "last_frame.jpg")
# Frame sizes Dream Machine reports per aspect ratio.
_DIMENSIONS = {
    "16:9": (1360, 752),
    "9:16": (752, 1360),
    "1:1": (1024, 1024),
    "4:3": (1168, 864),
    "3:4": (864, 1168),
    "21:9": (1568, 672),
    "9:21": (672, 1568),
}
_OFFICIAL_STATES = {"pending": "queued", "processing": "dreaming"}
_BATCH_STATUS = {
    "pending": "SUBMITTED",
    "processing": "IN_PROGRESS",
    "completed": "SUCCESS",
    "failed": "FAILURE",
    "unknown": "UNKNOWN",
}
ERROR_BODY_200 = "当前分组上游负载异常 upstream returned an error"
_RATE_LIMIT = "当前分组上游负载已饱和，请稍后再试"
_HTML_ERRORS = {
    502: "Bad gateway",
    504: "Gateway time-out",
    520: "Web server is returning an unknown error",
    522: "Connection timed out",
    524: "A timeout occurred",
}


def dimensions(aspect_ratio: str) -> tuple[int, int]:
    return _DIMENSIONS.get(aspect_ratio, _DIMENSIONS["16:9"])


def media_url(base_url: str, generation_id: str, name: str, sig: int) -> str:
    return f"{base_url}/cdn/{generation_id}/{name}?sig={sig}"


def _iso(timestamp: float, timespec: str = "milliseconds") -> str:
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def _wait(view: GenerationView) -> int | None:
    if view.remaining_seconds is None:
        return None
    return math.ceil(view.remaining_seconds)


def _state_word(view: GenerationView, words: dict[str, str] | None = None) -> str:
    if view.shown_state == "unknown":
        return UNKNOWN_STATE_WORD
    return (words or {}).get(view.shown_state, view.shown_state)


def generation_object(view: GenerationView, base_url: str, with_video_raw: bool) -> dict[str, Any]:
    """The `generations` style object (fixtures/relay-generation-*.json, keys of both)."""
    body: dict[str, Any] = {
        "id": view.id,
        "prompt": view.prompt,
        "state": _state_word(view),
        "queue_state": None,
        "created_at": _iso(view.created_wall),
        "batch_id": "",
        "video": None,
        "video_raw": None,
        "liked": None,
        "estimate_wait_seconds": _wait(view),
        "thumbnail": None,
        "last_frame": None,
        "request": {"prompt": view.prompt, "aspect_ratio": view.aspect_ratio},
        "artifact": None,
        "failure_reason": view.failure_reason,
    }
    if view.state != "completed":
        return body
    width, height = dimensions(view.aspect_ratio)

    def url(name: str) -> str:
        return media_url(base_url, view.id, name, view.sig)

    video: dict[str, Any] = {"url": url("video.mp4"), "width": width, "height": height}
    video_raw: dict[str, Any] | None = None
    if view.has_download_url:
        video["download_url"] = url("video_raw.mp4")
        if with_video_raw:
            video_raw = {
                "url": url("video_raw.mp4"),
                "width": width,
                "height": height,
                "duration": VIDEO_DURATION,
                "media_type": "video",
            }
    thumbnail = {
        "url": url("thumbnail.jpg"),
        "width": width,
        "height": height,
        "palette": dict(PALETTE),
        "media_type": "image",
    }
    last_frame = {
        "url": url("last_frame.jpg"),
        "width": width,
        "height": height,
        "palette": None,
        "media_type": "image",
    }
    body.update(
        video=video,
        video_raw=video_raw,
        thumbnail=thumbnail,
        last_frame=last_frame,
        artifact={
            "video": dict(video),
            "thumbnail": dict(thumbnail),
            "video_raw": dict(video_raw) if video_raw else None,
            "created_at": ZERO_TIME,
            "last_frame": dict(last_frame),
        },
    )
    return body


def task_object(view: GenerationView, base_url: str) -> dict[str, Any]:
    """The smaller object the `task` style wraps (fixtures/task-wrapper-completed.json)."""
    video: dict[str, Any] | None = None
    if view.state == "completed":
        width, height = dimensions(view.aspect_ratio)
        video = {
            "url": media_url(base_url, view.id, "video.mp4", view.sig),
            "width": width,
            "height": height,
            "thumbnail": media_url(base_url, view.id, "thumbnail.jpg", view.sig),
        }
    return {
        "id": view.id,
        "prompt": view.prompt,
        "state": _state_word(view),
        "created_at": _iso(view.created_wall, "microseconds"),
        "video": video,
        "liked": None,
        "estimate_wait_seconds": _wait(view),
        "failure_reason": view.failure_reason,
    }


def official_object(view: GenerationView, base_url: str) -> dict[str, Any]:
    """Luma's own API object (fixtures/official-generation-*.json)."""
    assets: dict[str, Any] | None = None
    if view.state == "completed":
        assets = {
            "video": media_url(base_url, view.id, "video.mp4", view.sig),
            "image": media_url(base_url, view.id, "thumbnail.jpg", view.sig),
        }
    return {
        "id": view.id,
        "generation_type": "video",
        "state": _state_word(view, _OFFICIAL_STATES),
        "failure_reason": view.failure_reason,
        "created_at": _iso(view.created_wall, "microseconds"),
        "assets": assets,
        "version": None,
        "model": view.model or "ray-2",
        "request": dict(view.request),
    }


def batch_item(view: GenerationView, base_url: str, with_video_raw: bool) -> dict[str, Any]:
    """One entry of the task-wrapper batch answer (fixtures/relay-batch-task-wrapper.json)."""
    updated = view.finish_wall or view.start_wall or view.created_wall
    return {
        "id": view.seq,
        "created_at": _iso(view.created_wall),
        "updated_at": _iso(updated),
        "task_id": view.id,
        "platform": "luma",
        "action": "LUMA_VIDEO",
        "status": _BATCH_STATUS[view.shown_state],
        "fail_reason": view.failure_reason or "",
        "progress": f"{view.progress}%",
        "submit_time": int(view.created_wall),
        "start_time": int(view.start_wall) if view.start_wall else 0,
        "finish_time": int(view.finish_wall) if view.finish_wall else 0,
        "data": generation_object(view, base_url, with_video_raw),
    }


def wrapped(data: Any, code: str = "success", message: str = "") -> dict[str, Any]:
    """The `{"code", "message", "data"}` envelope of task routes."""
    return {"code": code, "message": message, "data": data}


def error_body(style: str, message: str, request_id: str, code: str = "") -> dict[str, Any]:
    """An error in the style's own shape: new-api `error` object, task envelope, or `detail`.

    `code` selects the task envelope (e.g. `task_not_exist`); otherwise gateways answer
    with the new-api shape, as they do for every style but `official`.
    """
    if style == "official":
        return {"detail": message}
    if code:
        return wrapped(None, code, message)
    return {"error": {"message": f"{message} (request id: {request_id})", "type": "new_api_error"}}


def rate_limit_body(style: str, request_id: str) -> dict[str, Any]:
    if style == "official":
        return {"detail": "Too many requests, please slow down"}
    return error_body(style, _RATE_LIMIT, request_id)


def server_error(style: str, status: int, request_id: str) -> tuple[bytes, str]:
    """A gateway-ish error page: HTML from the CDN for 502/504/52x, JSON otherwise."""
    if status in _HTML_ERRORS:
        title = f"{status}: {_HTML_ERRORS[status]}"
        page = (
            f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
            f"<h1>Error code {status}</h1><p>{_HTML_ERRORS[status]}</p>"
            f"<p>Ray ID: {request_id}</p></body></html>"
        )
        return page.encode(), "text/html; charset=UTF-8"
    if style == "official":
        body: dict[str, Any] = {"detail": "Internal server error"}
    else:
        body = {
            "error": {
                "message": f"bad response status code {status} (request id: {request_id})",
                "type": "upstream_error",
            }
        }
    return json.dumps(body, ensure_ascii=False).encode(), "application/json"
