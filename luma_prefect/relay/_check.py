"""Proving a relay's base URL, style and key with one free read, and naming what is wrong.

The read is a query of a made-up generation id: free on every relay, and its answer tells
the three mistakes apart. A relay that knows the route and accepts the key says the id does
not exist (`task_not_exist`, `Generation not found`); a refused key is a 401/403; a wrong
base URL does not connect, or answers with a web page, or has no Luma route at all; a wrong
style answers 404 "no such route" on its own query route while another style's answers.
Only when the first read fails are the other styles' routes tried (two more reads at most).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from luma_prefect._exceptions import (
    LumaAuthError,
    LumaError,
    LumaHTTPError,
    LumaNotFoundError,
    LumaProtocolError,
    LumaRequestError,
    LumaTransportError,
)
from luma_prefect._models import ApiStyle
from luma_prefect.relay._client import LumaClient
from luma_prefect.relay._routes import API_STYLES

__all__ = ["CredentialsCheck", "Problem", "check_relay"]

Problem = Literal["key", "url", "style", "relay"]

# A well-formed id no relay has: relays may refuse ids that are not uuids.
PROBE_ID = "00000000-0000-4000-8000-000000000000"
# How relays say "this id does not exist" (as opposed to "this route does not exist").
_UNKNOWN_ID = re.compile(r"not[\s_-]*exist|(generation|task)[\s_-]*not[\s_-]*found", re.I)

Verdict = Literal["ok", "key", "unreachable", "web_page", "no_route", "relay"]


@dataclass(frozen=True)
class CredentialsCheck:
    """What one check of a relay's credentials found.

    Attributes:
        ok: True when the base URL, style and key all work.
        problem: None when ok; else `key`, `url`, `style`, or `relay` (trouble on the
            relay's side, such as a 5xx or a rate limit, that says nothing of the settings).
        message: one line saying what was found and what to do.
        answering_style: on a wrong style, the style whose route answered.
        proven: False when the verdict is a best guess (no Luma route in any style, or a web
            page): a relay with unusual answers to unknown ids can look like that.

    Example:
        ```python
        result = await credentials.acheck()
        print(result.message)
        ```
    """

    ok: bool
    problem: Problem | None
    message: str
    answering_style: ApiStyle | None = None
    proven: bool = True

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class _Probe:
    verdict: Verdict
    detail: str
    route: str


async def check_relay(
    make_client: Callable[[ApiStyle], LumaClient],
    style: ApiStyle,
    *,
    timeout_seconds: float = 15.0,
) -> CredentialsCheck:
    """Check a relay with one read of this style's query route; more reads only on failure.

    `make_client(style)` gives a client of the relay in that style, best without retries
    (each is closed here). The whole check has one deadline, `timeout_seconds`.

    Example:
        ```python
        result = await check_relay(lambda s: block.get_client(api_style=s), "task")
        ```
    """
    started = time.monotonic()
    client = make_client(style)
    url = client.shown_url
    try:
        return await asyncio.wait_for(_check(client, make_client, started), timeout_seconds)
    except asyncio.TimeoutError:
        await client.aclose()  # in case the deadline passed before the probe began
        return CredentialsCheck(
            False,
            "url",
            f"Wrong URL? {url} gave no answer within {timeout_seconds:g} s. Check base_url "
            "(host and port) and the network, then check again.",
        )


async def _check(
    client: LumaClient, make_client: Callable[[ApiStyle], LumaClient], started: float
) -> CredentialsCheck:
    style, url, prefix = client.api_style, client.shown_url, client.routes.prefix
    first = await _probe(client)
    where = "" if style == "official" else f" under {prefix or '/'}"
    if first.verdict == "ok":
        return CredentialsCheck(
            True,
            None,
            f"OK: {url} answers the {style} style{where} and accepts the key "
            f"({time.monotonic() - started:.2f} s).",
        )
    if first.verdict == "key":
        return CredentialsCheck(
            False,
            "key",
            f"Wrong key: {url} refused the API key ({first.detail}). Set api_key to a valid "
            "key of this relay (or top up its credit), then check again.",
        )
    if first.verdict == "unreachable":
        return CredentialsCheck(
            False,
            "url",
            f"Wrong URL: cannot reach {url} ({first.detail}). Check base_url (scheme, host "
            "and port) and the network, then check again.",
        )
    if first.verdict == "relay":
        return CredentialsCheck(
            False,
            "relay",
            f"Relay trouble: {url} answered {first.route} with {first.detail}; this says "
            "nothing about the settings. Try again later.",
        )
    # No such route here (or a web page instead of JSON): does another style answer?
    for other in API_STYLES:
        if other == style:
            continue
        probe = await _probe(make_client(other))
        if probe.verdict in ("ok", "key"):
            return CredentialsCheck(
                False,
                "style",
                f"Wrong style: {url} has no {style} route{where} ({first.route} -> "
                f"{first.detail}) but answers the {other} style ({probe.route}). Set "
                f"api_style to {other}, then check again.",
                answering_style=other,
            )
    if first.verdict == "web_page":
        return CredentialsCheck(
            False,
            "url",
            f"Wrong URL: {url} answers {first.route} with a web page, not a relay's JSON. "
            "Set base_url to the relay's API address (often the site's address without "
            "any path), then check again.",
            proven=False,
        )
    return CredentialsCheck(
        False,
        "url",
        f"Wrong URL: {url} has no Luma route in any style ({first.route} -> "
        f"{first.detail}). Check base_url, and route_prefix ({prefix or 'empty'}) in the "
        "relay's documentation, then check again.",
        proven=False,
    )


async def _probe(client: LumaClient) -> _Probe:
    """One read of the client's query route for an id that does not exist."""
    route = client.routes.query(PROBE_ID)
    query = "".join(f"?{name}={value}" for name, value in (route.params or {}).items())
    shown = f"GET {route.path}{query}".replace(PROBE_ID, "<id>")
    async with client:
        try:
            await client.get_generation(PROBE_ID)
        except LumaAuthError as exc:
            return _Probe("key", _said(exc), shown)
        except LumaNotFoundError as exc:
            words = f"{exc.relay_code or ''} {exc.relay_message or ''}"
            if _UNKNOWN_ID.search(words):
                return _Probe("ok", _said(exc), shown)
            if (exc.relay_message or "").lstrip().startswith("<"):
                return _Probe("web_page", f"HTTP {exc.status_code}, a web page", shown)
            return _Probe("no_route", f"HTTP {exc.status_code}", shown)
        except LumaRequestError as exc:
            # 405: the path exists for other methods only, i.e. not this style's query.
            if exc.status_code == 405:
                return _Probe("no_route", f"HTTP {exc.status_code}", shown)
            # The route exists and took the key; it only disliked the made-up id.
            return _Probe("ok", _said(exc), shown)
        except LumaProtocolError as exc:
            return _Probe("web_page", f"HTTP {exc.status_code}, not JSON", shown)
        except LumaTransportError as exc:
            return _Probe("unreachable", _cause(exc), shown)
        except LumaHTTPError as exc:
            return _Probe("relay", _said(exc), shown)
        except LumaError as exc:
            return _Probe("relay", str(exc), shown)
    # A generation came back for an id nobody made: the route, style and key work.
    return _Probe("ok", "HTTP 200", shown)


def _said(exc: LumaHTTPError) -> str:
    said = (exc.relay_message or exc.relay_code or "").strip()
    if said.startswith("<"):
        said = "a web page"
    return f"HTTP {exc.status_code}" + (f": {said[:120]}" if said else "")


def _cause(exc: LumaTransportError) -> str:
    # The client's message is "... (ConnectError: [Errno 111] ...). Check base_url ...".
    found = re.search(r"\(([^()]*(?:\([^()]*\)[^()]*)*)\)\. Check", exc.message)
    return found.group(1) if found else exc.message
