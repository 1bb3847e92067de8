"""What a media link may point at: no private hosts (unless allowed), no https->http redirect.

Media links come from the relay, and so do their redirects: without these checks, a relay
(or a CDN it names) could make the worker fetch from its own network and store the answer
as a video. Applied as httpx event hooks, so every hop of a redirect chain is checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

__all__ = ["UnsafeLink", "media_hooks"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeLink(Exception):
    """A media link (or a redirect) refused by policy: final, never retried.

    Example:
        ```python
        except UnsafeLink as exc:
            print(exc)  # "points at 10.0.0.7, a private address"
        ```
    """


def _not_public(address: Address) -> bool:
    # is_global is False for private, loopback, link-local, shared (100.64/10), reserved,
    # unspecified and IPv4-mapped ranges; multicast is never a CDN either.
    return not address.is_global or address.is_multicast


async def _addresses(host: str, port: int) -> list[Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []  # unresolvable: the transport fails to connect, with its own error
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def media_hooks(allow_private_hosts: bool) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """httpx event hooks that refuse private hosts (unless allowed) and https->http redirects.

    Example:
        ```python
        httpx.AsyncClient(event_hooks=media_hooks(allow_private_hosts=False))
        ```
    """

    async def check_host(request: httpx.Request) -> None:
        if allow_private_hosts:
            return
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        for address in await _addresses(url.host, port):
            if _not_public(address):
                raise UnsafeLink(
                    f"points at {url.host} ({address}), a private, loopback or link-local address"
                )

    async def check_redirect(response: httpx.Response) -> None:
        if not response.has_redirect_location or response.url.scheme != "https":
            return
        target = response.url.join(response.headers["location"])
        if target.scheme != "https":
            raise UnsafeLink(f"redirects from https to {target.scheme}:// (a downgrade)")

    return {"request": [check_host], "response": [check_redirect]}
