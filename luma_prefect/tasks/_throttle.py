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

Inside a batch (`relay_slots`), the requests share slots instead of taking one each: the
batch takes, with one `concurrency(name, occupy=k)`, as many slots as requests are waiting
(at most what the limit has free), runs its requests through them (never more at once than
it holds), and gives them back once idle for `LINGER_SECONDS` or after `HOLD_SECONDS`, when
it takes them anew like any other worker. One slot per request cost two Prefect events
(`prefect.concurrency-limit.acquired`/`released`), two API calls and a lease-renewal thread
with its own client, 2.1 events per generation in `generate_videos` (#12).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
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
    "relay_slots",
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
#: Longest one look at the limit (read, create if missing) may take in all, the Prefect
#: client's own retries included (they alone can add up to minutes).
_API_SECONDS = 60.0

#: A batch gives its slots back after this long without a request (its next poll round,
#: submit or lookup usually comes sooner: slots taken anew cost two events each time).
LINGER_SECONDS = 2.0
#: ... and after holding them this long at most, then competes for them again.
HOLD_SECONDS = 10.0
# While a batch's slots are all busy, how often it looks for free ones to take as well.
_GROW_EVERY_SECONDS = 0.5

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


def _concurrency(name: str, occupy: int) -> Any:
    from prefect.concurrency.asyncio import concurrency

    return concurrency(
        name,
        occupy=occupy,
        timeout_seconds=SLOT_TIMEOUT_SECONDS,
        lease_duration=_LEASE_SECONDS,
        strict=True,
        raise_on_lease_renewal_failure=False,
    )


def _slot_error(name: str, exc: BaseException) -> LumaTransportError:
    return LumaTransportError(
        f"Could not take a slot of the Prefect concurrency limit {name} "
        f"({type(exc).__name__}: {exc}), so the request was not sent. Check that the "
        "Prefect API is reachable, or raise the limit if it is always full."
    )


async def _ensure_limit(name: str) -> None:
    """Create the limit when it does not exist yet (once per process and API)."""
    from prefect.settings import get_current_settings

    key = (str(get_current_settings().api.url), name)
    if key in _created:  # every request passes here: no API call once it is known
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with asyncio.timeout(_API_SECONDS), get_client() as client:
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
        pool = _POOL.get()
        if pool is not None and pool.name == name and pool.loop is asyncio.get_running_loop():
            async with pool.slot() as shared:
                if shared:
                    yield
                    return
            # The batch ended before this request got a slot (a task it started outlived
            # it): the request takes a slot of its own, as outside a batch.
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

        held = _concurrency(name, 1)
        try:
            await _ensure_limit(name)
            try:
                await held.__aenter__()
            except ConcurrencySlotAcquisitionError:
                # Someone deleted the limit since this process last made sure of it:
                # make it again (with the default slots) and try once more.
                _forget_limit(name)
                await _ensure_limit(name)
                held = _concurrency(name, 1)
                await held.__aenter__()
        except Exception as exc:
            raise _slot_error(name, exc) from None
        try:
            yield
        finally:
            try:
                await held.__aexit__(None, None, None)
            except Exception as exc:  # the request is done: never fail it now
                logger.warning("Could not give back a slot of %s (%s).", name, exc)

    return gate


_POOL: contextvars.ContextVar[_SlotPool | None] = contextvars.ContextVar(
    "luma_relay_slots", default=None
)


@contextlib.asynccontextmanager
async def relay_slots(base_url: str) -> AsyncIterator[None]:
    """Inside it, this relay's requests (of `relay_gate` clients, in this task and the
    tasks and task runs it starts) share slots of the relay's limit, taken together.

    Never more requests in flight than slots held; all given back when it ends.

    Example:
        ```python
        async with relay_slots(block.base_url):
            await asyncio.gather(*(submit_generation(block, r) for r in requests))
        ```
    """
    pool = _SlotPool(relay_limit_name(base_url))
    token = _POOL.set(pool)
    try:
        yield
    finally:
        _POOL.reset(token)
        await pool.close()


class _Group:
    """Slots held together under one `concurrency(name, occupy=k)`."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.in_flight = 0
        self.admitting = True
        self.opened = self.last_used = time.monotonic()


class _SlotPool:
    """The slots a batch holds, in groups; its requests wait for a free one.

    When requests wait and no group takes requests, one group is opened (one acquisition
    at a time): for as many slots as requests wait, at most what the limit has free (at
    least one, then waited for as any request would). While the groups are full, another
    is opened only if the limit has free slots (looked at every `_GROW_EVERY_SECONDS`). A
    group stops taking requests after `HOLD_SECONDS`, or once idle for `LINGER_SECONDS`,
    and gives its slots back when its last request returned.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()
        # The context the batch began in: a group must not belong to the task run that
        # happened to open it (Prefect gives back, when a task run ends, every slot taken
        # in it: 3 s into a batch its slots were free for others while still in use).
        self._context = contextvars.copy_context()
        self._groups: list[_Group] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._acquiring: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._opening = False
        self._closing = False
        self._grow_at = 0.0
        # Failed acquisitions, counted: a request fails when one failed while it waited.
        self._failures = 0
        self._failure: BaseException | None = None
        self._event = asyncio.Event()

    def _notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def _changed(self, timeout: float | None = None) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[bool]:
        """A slot of the batch's (True), or False once the batch has ended."""
        group = await self._take()
        if group is None:
            yield False
            return
        try:
            yield True
        finally:
            group.in_flight -= 1
            group.last_used = time.monotonic()
            self._notify()

    async def _take(self) -> _Group | None:
        failures = self._failures
        self._waiting += 1
        try:
            while True:
                if self._closing:
                    # No group admits any more, and one opened now would give its slots
                    # back at once: the caller takes a slot of its own instead.
                    return None
                admitting = [g for g in self._groups if g.admitting]
                for group in admitting:
                    if group.in_flight < group.k:
                        group.in_flight += 1
                        return group
                if self._failures != failures:
                    assert self._failure is not None
                    raise _slot_error(self.name, self._failure)
                timeout = None
                if self._opening:
                    pass
                elif not admitting:
                    # None admits (any left give their slots back once their requests
                    # returned): open one now, not after the slowest of those requests.
                    self._open(grow=False)
                else:  # all full: more only where the limit has free slots
                    wait = self._grow_at - time.monotonic()
                    if wait <= 0:
                        self._open(grow=True)
                    else:
                        timeout = wait
                await self._changed(timeout)
        finally:
            self._waiting -= 1

    def _open(self, grow: bool) -> None:
        self._opening = True
        task = asyncio.create_task(self._hold(grow), context=self._context.copy())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._acquiring.add(task)
        task.add_done_callback(self._acquiring.discard)

    async def _free_slots(self) -> int:
        """Slots of the limit nobody holds right now (the limit made if missing)."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        await _ensure_limit(self.name)
        async with asyncio.timeout(_API_SECONDS), get_client() as client:
            try:
                limit = await client.read_global_concurrency_limit_by_name(self.name)
            except ObjectNotFound:  # deleted since this process made sure of it
                _forget_limit(self.name)
                await _ensure_limit(self.name)
                limit = await client.read_global_concurrency_limit_by_name(self.name)
        return max(limit.limit - limit.active_slots, 0)

    async def _hold(self, grow: bool) -> None:
        """Take slots for the requests waiting, keep them while requests come, give them
        back."""
        try:
            free = await self._free_slots()
            if grow and free == 0:
                self._grow_at = time.monotonic() + _GROW_EVERY_SECONDS
                self._opening = False
                self._notify()
                return
            k = max(min(self._waiting, free), 1)
            held = _concurrency(self.name, k)
            await held.__aenter__()
        except BaseException as exc:
            # Cancelled (the batch ended) or failed: never leave `_opening` set, or the
            # requests still waiting would wait for this group forever.
            self._opening = False
            if grow and isinstance(exc, Exception):
                # Only a look for more: the batch's own groups still serve its requests.
                logger.debug("Could not take more slots of %s (%r).", self.name, exc)
                self._grow_at = time.monotonic() + _GROW_EVERY_SECONDS
            elif isinstance(exc, Exception):
                self._failure, self._failures = exc, self._failures + 1
            self._notify()
            if not isinstance(exc, Exception):
                raise
            return
        current = asyncio.current_task()
        if current is not None:
            self._acquiring.discard(current)
        group = _Group(k)
        self._groups.append(group)
        self._opening = False
        self._notify()
        try:
            while not self._closing:
                now = time.monotonic()
                if now - group.opened >= HOLD_SECONDS:
                    break
                idle = group.in_flight == 0 and not self._waiting
                if idle and now - group.last_used >= LINGER_SECONDS:
                    break
                wake = group.opened + HOLD_SECONDS
                if idle:
                    wake = min(wake, group.last_used + LINGER_SECONDS)
                await self._changed(max(wake - now, 0.01))
            group.admitting = False
            while group.in_flight:
                await self._changed()
        finally:
            try:
                await held.__aexit__(None, None, None)
            except Exception as exc:  # the requests are done: never fail them now
                logger.warning("Could not give back %d slot(s) of %s (%s).", k, self.name, exc)
            self._groups.remove(group)
            self._notify()

    async def close(self) -> None:
        self._closing = True
        self._notify()
        # The batch is over: a group still waiting for slots (a full limit) is not needed;
        # Prefect gives back what a cancelled acquisition is granted after all.
        for task in self._acquiring:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
