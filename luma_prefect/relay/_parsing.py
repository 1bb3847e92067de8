"""One parser for every shape a relay answers with, and for every error body.

Shapes of generations: the bare object, a one-element array, the `{"code","message","data"}`
wrapper, the batch task wrapper (`data: [{task_id, status, data: {...}}]`), and the official
object with `assets`. Error shapes: `{"error": {...}}`, `{"code", "message"}`, `{"detail": ...}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from luma_prefect._exceptions import LumaProtocolError
from luma_prefect._models import Generation, GenerationState, ImageAsset, VideoAsset

__all__ = ["RelayErrorInfo", "error_info", "parse_generation", "parse_generations"]

_ASSET_NAMES = ("video", "video_raw", "thumbnail", "last_frame")


def parse_generations(body: Any) -> list[Generation]:
    """Every generation in a relay answer, in the order the relay gave them.

    Raises `LumaProtocolError` when the body holds no generation shape at all.
    """
    try:
        return _parse_generations(body)
    except LumaProtocolError:
        raise
    except (RecursionError, ValueError, TypeError) as exc:
        # Hostile shapes (JSON nested thousands deep, odd types) are unreadable answers,
        # never a crash of the caller.
        raise LumaProtocolError(
            f"The answer holds no readable generation ({type(exc).__name__}).",
            body_excerpt=None,
        ) from None


def _parse_generations(body: Any) -> list[Generation]:
    if isinstance(body, Mapping) and "data" in body and "code" in body:
        body = body["data"]
    if isinstance(body, Mapping):
        return [_parse_item(body)]
    if isinstance(body, list):
        if len(body) == 1:
            return [_parse_item(body[0])]
        # In a batch, one object no style could produce must not hide the others.
        parsed, first_error = [], None
        for item in body:
            try:
                parsed.append(_parse_item(item))
            except LumaProtocolError as exc:
                first_error = first_error or exc
        if first_error is not None and not parsed:
            raise first_error
        return parsed
    raise LumaProtocolError(
        f"Expected a generation object or a list of them, got {type(body).__name__}.",
        body_excerpt=repr(body)[:200],
    )


def parse_generation(body: Any) -> Generation:
    """The one generation in a relay answer (a bare object, `[obj]` or a wrapper).

    Example:
        ```python
        generation = parse_generation({"id": "abc", "state": "dreaming"})
        assert generation.state is GenerationState.PROCESSING
        ```
    """
    generations = parse_generations(body)
    if len(generations) != 1:
        raise LumaProtocolError(
            f"Expected one generation in the answer, got {len(generations)}.",
            body_excerpt=repr(body)[:200],
        )
    return generations[0]


def _parse_item(item: Any) -> Generation:
    if not isinstance(item, Mapping):
        raise LumaProtocolError(
            f"Expected a generation object, got {type(item).__name__}.",
            body_excerpt=repr(item)[:200],
        )
    if "task_id" in item and "status" in item:
        return _parse_task_item(item)
    if "assets" in item or "generation_type" in item:
        return _parse_official(item)
    return _parse_relay_object(item)


def _parse_task_item(item: Mapping[str, Any]) -> Generation:
    """A batch task-wrapper entry: the relay's task status around Luma's own object."""
    inner = _mapping(item.get("data"))
    outer_word = item.get("status")
    outer = GenerationState.from_relay(outer_word)
    inner_state = GenerationState.from_relay(inner.get("state"))
    # The relay's FAILURE/SUCCESS is final even when Luma's object lags behind it.
    if outer.is_terminal or inner_state is GenerationState.UNKNOWN:
        state, raw_state = outer, outer_word
    else:
        state, raw_state = inner_state, inner.get("state")
    merged = {**inner, "id": inner.get("id") or item.get("task_id")}
    generation = _parse_relay_object(merged)
    reason = generation.failure_reason or (item.get("fail_reason") or None)
    return generation.model_copy(
        update={
            "state": state,
            "raw_state": _word(raw_state),
            "failure_reason": reason,
            "created_at": generation.created_at
            or Generation._tolerant_time(item.get("submit_time")),
            "raw": dict(item),
        }
    )


def _parse_official(item: Mapping[str, Any]) -> Generation:
    assets = _mapping(item.get("assets"))
    request = _mapping(item.get("request"))
    video_url, image_url = _url(assets.get("video")), _url(assets.get("image"))
    return _build(
        item,
        prompt=request.get("prompt"),
        aspect_ratio=request.get("aspect_ratio"),
        video=VideoAsset(url=video_url) if video_url else None,
        thumbnail=ImageAsset(url=image_url) if image_url else None,
    )


def _parse_relay_object(item: Mapping[str, Any]) -> Generation:
    request = _mapping(item.get("request"))
    artifact = _mapping(item.get("artifact"))
    assets: dict[str, Any] = {}
    for name in _ASSET_NAMES:
        value = item.get(name) or artifact.get(name)
        model = VideoAsset if name.startswith("video") else ImageAsset
        assets[name] = _asset(model, value)
    video = item.get("video")
    # The task style nests the thumbnail inside `video`, as a URL or an object.
    if assets["thumbnail"] is None and isinstance(video, Mapping):
        assets["thumbnail"] = _asset(ImageAsset, video.get("thumbnail"))
    return _build(
        item,
        prompt=request.get("prompt") or item.get("prompt") or None,
        aspect_ratio=request.get("aspect_ratio") or item.get("aspect_ratio"),
        **assets,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    """The value when it is an object, else an empty one (relays put strings where we hope
    for objects)."""
    return value if isinstance(value, Mapping) else {}


def _build(item: Mapping[str, Any], **fields: Any) -> Generation:
    generation_id = item.get("id")
    if generation_id in (None, ""):
        raise LumaProtocolError(
            "The relay's generation object has no id.", body_excerpt=repr(dict(item))[:200]
        )
    values: dict[str, Any] = {
        key: _text(value) if key in ("prompt", "aspect_ratio") else value
        for key, value in fields.items()
    }
    try:
        return Generation(
            id=str(generation_id),
            state=GenerationState.from_relay(item.get("state")),
            raw_state=_word(item.get("state")),
            created_at=item.get("created_at"),
            failure_reason=_reason(item.get("failure_reason")),
            estimate_wait_seconds=item.get("estimate_wait_seconds"),
            raw=dict(item),
            **values,
        )
    except ValidationError as exc:
        raise LumaProtocolError(
            f"The relay's object for generation {generation_id} does not fit: {exc}",
            generation_id=str(generation_id),
        ) from None


def _asset(model: type[VideoAsset] | type[ImageAsset], value: Any) -> Any:
    if isinstance(value, Mapping):
        try:
            asset = model.model_validate(value)
        except ValidationError:
            # A malformed asset (e.g. a number for its url) is left out; `raw` still has it.
            return None
        return asset if asset.url or getattr(asset, "download_url", None) else None
    url = _url(value)
    return model(url=url) if url else None


def _reason(value: Any) -> str | None:
    if value in (None, "", {}, []):
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _url(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _word(value: Any) -> str | None:
    return None if value is None else str(value)


class RelayErrorInfo:
    """What an error body says, whichever of the relays' error shapes it used."""

    __slots__ = ("code", "message", "request_id")

    def __init__(self, message: str | None, code: str | None, request_id: str | None) -> None:
        self.message = message
        self.code = code
        self.request_id = request_id


_REQUEST_ID_IN_TEXT = re.compile(r"request id:\s*([\w-]+)", re.IGNORECASE)
_REQUEST_ID_HEADERS = ("x-request-id", "x-oneapi-request-id", "request-id", "cf-ray")


def error_info(body: Any, headers: Mapping[str, str]) -> RelayErrorInfo:
    """The relay's message, code and request id from an error body and its headers."""
    message: Any = None
    code: Any = None
    if isinstance(body, Mapping):
        error = body.get("error")
        detail = body.get("detail")
        if isinstance(error, Mapping):
            message, code = error.get("message"), error.get("type") or error.get("code")
        elif isinstance(error, str):
            message = error
        elif isinstance(detail, Mapping):
            message, code = detail.get("reason") or detail.get("message"), detail.get("code")
        elif detail is not None:
            message = detail if isinstance(detail, str) else repr(detail)
        else:
            message, code = body.get("message") or body.get("msg"), body.get("code")
    elif isinstance(body, str):
        message = body.strip()[:300] or None
    message = str(message) if message not in (None, "") else None
    code = str(code) if code not in (None, "") else None
    request_id = next((headers[h] for h in _REQUEST_ID_HEADERS if headers.get(h)), None)
    if request_id is None and message:
        found = _REQUEST_ID_IN_TEXT.search(message)
        request_id = found.group(1) if found else None
    return RelayErrorInfo(message, code, request_id)
