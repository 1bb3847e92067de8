"""Turning a relay's HTTP answer into its JSON body, or into the right `LumaError`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from luma_prefect._exceptions import (
    LumaAuthError,
    LumaError,
    LumaHTTPError,
    LumaNotFoundError,
    LumaProtocolError,
    LumaRateLimitError,
    LumaRequestError,
    LumaServerError,
)
from luma_prefect._retry import parse_retry_after
from luma_prefect.relay._parsing import error_info

__all__ = ["proves_refusal", "read_body"]

_SUCCESS_CODES = {"success", "0", "200"}
# Answers to a paid POST that prove nothing was created, whatever their body: the key was
# refused, the route does not exist, the body was too large, or the caller must slow down.
# Each is decided before a relay forwards anything upstream.
_REFUSED = frozenset({401, 403, 404, 405, 413, 429})
# Validation refusals: proof only in the relay's own JSON error words, and only when those
# words name no upstream trouble (a gateway that forwarded may answer 400 after the upstream
# accepted). 408, 409, other 4xx, 5xx, 2xx we cannot read: never proof.
_VALIDATION = frozenset({400, 422})
_NOT_A_REFUSAL = ("upstream", "timeout", "timed out", "gateway", "internal", "server", "上游")


def proves_refusal(error: LumaError, response: httpx.Response) -> bool:
    """Whether an error answer to a paid POST proves the relay created nothing.

    Conservative: anything that may come after the relay accepted the request is in doubt.

    Example:
        ```python
        if not proves_refusal(error, response):
            raise LumaSubmitUncertainError(...)
        ```
    """
    status = response.status_code
    if status in _REFUSED:
        return True
    if status < 400:  # an error envelope inside a 2xx: the relay's words decide
        return isinstance(error, (LumaAuthError, LumaRequestError)) and not _upstream_words(error)
    if status not in _VALIDATION or not isinstance(error, LumaHTTPError):
        return False
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        return False  # an HTML page from something in between, not the relay's words
    if not isinstance(body, (Mapping, list)) or not (error.relay_message or error.relay_code):
        return False
    return not _upstream_words(error)


def _upstream_words(error: LumaError) -> bool:
    if not isinstance(error, LumaHTTPError):
        return True
    words = f"{error.relay_code or ''} {error.relay_message or ''}".lower()
    return any(word in words for word in _NOT_A_REFUSAL)


def read_body(response: httpx.Response, action: str, generation_id: str | None) -> Any:
    """The JSON body of a successful answer; raise the right `LumaError` for any other."""
    status = response.status_code
    try:
        body: Any = json.loads(response.content) if response.content else None
        is_json = True
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply
        body, is_json = response.text, False
    if status < 400 and not _is_error_envelope(body):
        if is_json and body is not None:
            return body
        raise LumaProtocolError(
            f"{action}: the relay answered HTTP {status} with a body that is not JSON "
            f"({response.headers.get('content-type', 'no content type')}). The relay may be "
            "overloaded or its address wrong; try again later.",
            generation_id=generation_id,
            status_code=status,
            body_excerpt=str(body)[:200] if body is not None else None,
        )
    info = error_info(body, response.headers)
    words = f"{info.code or ''} {info.message or ''}".lower()
    error_class: type[LumaHTTPError]
    # The status decides first: a 401 saying "token does not exist" is a key problem.
    if status in (401, 403):
        error_class = LumaAuthError
    elif status == 404:
        error_class = LumaNotFoundError
    elif status == 429:
        error_class = LumaRateLimitError
    elif status >= 500:
        error_class = LumaServerError
    elif "not_exist" in words or "not exist" in words:
        error_class = LumaNotFoundError
    elif status >= 400:
        error_class = LumaRequestError
    # An error inside an HTTP 200: refusals of the request or the key, else relay trouble.
    elif any(word in words for word in ("token", "unauthor", "quota", "api key")):
        error_class = LumaAuthError
    elif any(word in words for word in ("invalid", "param", "bad_request", "prompt")):
        error_class = LumaRequestError
    else:
        error_class = LumaServerError
    shown_status = f"HTTP {status}" + (f" code {info.code!r}" if status < 400 else "")
    said = f": {info.message}" if info.message else ""
    shown_id = info.request_id and info.request_id not in (info.message or "")
    request_id = f" (request id {info.request_id})" if shown_id else ""
    message = f"{action} failed with {shown_status}{said}{request_id}. " + _hint(error_class)
    kwargs: dict[str, Any] = {
        "status_code": status,
        "relay_message": info.message,
        "relay_code": info.code,
        "request_id": info.request_id,
        "generation_id": generation_id,
    }
    if error_class is LumaRateLimitError:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise LumaRateLimitError(message, retry_after=retry_after, **kwargs)
    raise error_class(message, **kwargs)


def _hint(error_class: type[LumaHTTPError]) -> str:
    if error_class is LumaAuthError:
        return (
            "The relay refused the key: check api_key in the LumaRelayCredentials block "
            "(wrong, expired, or out of credit)."
        )
    if error_class is LumaNotFoundError:
        return (
            "Check the id, and that base_url, api_style and route_prefix point at the relay "
            "that created it (right after a submit, try again in a few seconds)."
        )
    if error_class is LumaRateLimitError:
        return "The relay is rate limiting: slow down, or try again later."
    if error_class is LumaServerError:
        return "Trouble on the relay's side, usually passing: try again later."
    return "Fix the request as the relay says, then submit again."


def _is_error_envelope(body: Any) -> bool:
    if not isinstance(body, Mapping) or "code" not in body:
        return False
    if not ("message" in body or "data" in body or "msg" in body):
        return False
    return str(body["code"]).strip().lower() not in _SUCCESS_CODES
