"""One limit per relay, shared by every worker: a Prefect global concurrency limit.

Every request to a relay (submit, poll, batch query, video link; not the media downloads,
which go to a CDN) holds one slot of the global concurrency limit `luma-relay:<host:port>`
while it is in flight, so ten workers together never have more requests open to one relay
than the limit allows. The limit is created on first use with `DEFAULT_RELAY_LIMIT` slots;
change it in the UI (Concurrency > Global) or with
`prefect global-concurrency-limit update luma-relay:<host> --limit N`.

The same name is a tag of the flow and task runs that talk to the relay (with `luma`), so
tag-based task concurrency limits (`prefect concurrency-limit create luma-relay:<host> N`)
work too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from luma_prefect._exceptions import LumaConfigurationError, LumaTransportError

__all__ = [
    "DEFAULT_RELAY_LIMIT",
    "ENV_RELAY_LIMIT",
    "RUN_TAG",
    "relay_gate",
    "relay_limit_name",
    "relay_tags",
]

logger = logging.getLogger("luma_prefect.fleet")

RUN_TAG = "luma"
#: Slots of a relay's limit when it is created on first use: below the 10 concurrent
#: generations Luma's own API allows, and small enough for the relays we know.
DEFAULT_RELAY_LIMIT = 8
#: Sets the slots of a relay's limit when luma_prefect creates it (never changes one).
ENV_RELAY_LIMIT = "LUMA_PREFECT_RELAY_LIMIT"
#: Longest wait for a slot before a request gives up (not sent, so safe even for a submit).
SLOT_TIMEOUT_SECONDS = 300.0
#: Lease of one slot: the server frees it after this long if its holder died (Prefect's
#: minimum is 60 s; a relay request's own deadline is 30 s by default).
_LEASE_SECONDS = 60.0

_created: set[tuple[str, str]] = set()


def relay_limit_name(base_url: str) -> str:
    """The name of a relay's global concurrency limit (and run tag): `luma-relay:<host>`.

    Host and port only: no credentials, path or query, so every block for one relay shares
    one limit.

    Example:
        ```python
        relay_limit_name("https://user:pw@yunwu.ai/v1")  # "luma-relay:yunwu.ai"
        ```
    """
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower()
    if not host:
        raise LumaConfigurationError(f"No host in the relay's base URL {parts.scheme}://...")
    return f"luma-relay:{host}:{parts.port}" if parts.port else f"luma-relay:{host}"


def relay_tags(base_url: str) -> list[str]:
    """The tags of runs that talk to a relay: `luma` and the relay's limit name.

    Example:
        ```python
        with prefect.tags(*relay_tags(block.base_url)):
            ...
        ```
    """
    return [RUN_TAG, relay_limit_name(base_url)]


def _default_limit() -> int:
    raw = os.environ.get(ENV_RELAY_LIMIT, "")
    try:
        value = int(raw) if raw.strip() else DEFAULT_RELAY_LIMIT
    except ValueError:
        value = DEFAULT_RELAY_LIMIT
    return max(value, 1)


async def _ensure_limit(name: str) -> None:
    """Create the limit when it does not exist yet (once per process and API)."""
    from prefect.settings import get_current_settings

    key = (str(get_current_settings().api.url), name)
    if key in _created:  # every request passes here: no API call once it is known
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = _default_limit()
            with contextlib.suppress(ObjectAlreadyExists):  # another worker was first
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit)
                )
                logger.info("Created the global concurrency limit %s (%d slots).", name, limit)
    _created.add(key)


def _forget_limit(name: str) -> None:
    """Make the next `_ensure_limit(name)` ask the API again (the limit was deleted)."""
    from prefect.settings import get_current_settings

    _created.discard((str(get_current_settings().api.url), name))


def relay_gate(base_url: str) -> Any:
    """A `request_gate` for `LumaClient`: each request holds a slot of the relay's limit.

    A slot that cannot be had (no Prefect API, or none free for `SLOT_TIMEOUT_SECONDS`)
    raises `LumaTransportError` before anything is sent; a slot that cannot be given back
    is logged and freed by the server when its lease ends, never failing the request.

    Example:
        ```python
        client = block.get_client(request_gate=relay_gate(block.base_url))
        ```
    """
    name = relay_limit_name(base_url)

    @contextlib.asynccontextmanager
    async def gate() -> AsyncIterator[None]:
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency

        def slot() -> Any:
            return concurrency(
                name,
                occupy=1,
                timeout_seconds=SLOT_TIMEOUT_SECONDS,
                lease_duration=_LEASE_SECONDS,
                strict=True,
                raise_on_lease_renewal_failure=False,
            )

        held = slot()
        try:
            await _ensure_limit(name)
            try:
                await held.__aenter__()
            except ConcurrencySlotAcquisitionError:
                # Someone deleted the limit since this process last made sure of it:
                # make it again (with the default slots) and try once more.
                _forget_limit(name)
                await _ensure_limit(name)
                held = slot()
                await held.__aenter__()
        except Exception as exc:
            raise LumaTransportError(
                f"Could not take a slot of the Prefect concurrency limit {name} "
                f"({type(exc).__name__}: {exc}), so the request was not sent. Check that the "
                "Prefect API is reachable, or raise the limit if it is always full."
            ) from None
        try:
            yield
        finally:
            try:
                await held.__aexit__(None, None, None)
            except Exception as exc:  # the request is done: never fail it now
                logger.warning("Could not give back a slot of %s (%s).", name, exc)

    return gate
