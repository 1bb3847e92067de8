"""What every task shares: credentials, the retry condition, the wait clock."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.tasks import Task

from luma_prefect._exceptions import (
    LumaAuthError,
    LumaConfigurationError,
    LumaDownloadError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaRequestError,
    LumaSubmitUncertainError,
    LumaWaitTimeout,
)
from luma_prefect._models import GenerationState
from luma_prefect.credentials import LumaRelayCredentials
from luma_prefect.relay._client import LumaClient
from luma_prefect.tasks._throttle import relay_gate
from luma_prefect.wait._engine import Clock, SystemClock

CredentialsInput = LumaRelayCredentials | str
"""A `LumaRelayCredentials` block, or the name of a saved one."""
StatesInput = Sequence[str | GenerationState] | str
"""Target states of a wait, by name or `GenerationState`."""
Destination = str | LocalFileSystem | RemoteFileSystem
"""Where files go: a local folder, an fsspec URL (`s3://bucket/luma`, `memory://x`), or a
Prefect `LocalFileSystem` / `RemoteFileSystem` block (see `luma_prefect.storage.storage_for`)."""

# Errors a retry cannot mend; everything else a read task meets is worth another try.
_FINAL_ERRORS = (
    LumaAuthError,
    LumaConfigurationError,
    LumaGenerationFailed,
    LumaNotFoundError,
    LumaRequestError,
    LumaSubmitUncertainError,
    LumaWaitTimeout,
)

# The clock of every wait and of the client's retry sleeps; tests replace it
# (`luma_prefect.tasks._common.wait_clock`) to wait half an hour in milliseconds.
wait_clock: Clock = SystemClock()


def retry_on_transient_errors(task: Task[Any, Any], task_run: TaskRun, state: State) -> bool:
    """Prefect retry condition: retry, unless the failure is one a retry cannot mend.

    Example:
        ```python
        from prefect import task
        from luma_prefect.tasks import retry_on_transient_errors

        @task(retries=3, retry_condition_fn=retry_on_transient_errors)
        async def my_read(generation_id: str) -> str: ...
        ```
    """
    error = state.data
    if isinstance(error, LumaDownloadError):
        return error.retryable
    if getattr(error, "wait_gave_up", False):
        return False
    return not isinstance(error, _FINAL_ERRORS)


# No Prefect retries on reads: the client already retries by its RetryPolicy, and Prefect's
# retries stacked on top made one fetch reach the relay 3 x 6 = 18 times. One schedule.
READ_OPTIONS: dict[str, Any] = {
    "retries": 0,
    "retry_condition_fn": retry_on_transient_errors,
    "cache_policy": NO_CACHE,
}

# Backstops (Prefect task timeouts) for calls that have their own, tighter deadlines: a
# relay call is bounded by timeout_seconds per attempt and RetryPolicy's attempts (about
# 6 x 30 s + 16 s of backoff, or Retry-After capped at 120 s); these catch a bug, not a relay.
RELAY_CALL_BACKSTOP_SECONDS = 1200.0
# A download: 4 GiB at 0.5 MiB/s is 2.3 h.
DOWNLOAD_BACKSTOP_SECONDS = 6 * 3600.0
PUBLISH_BACKSTOP_SECONDS = 600.0
# Beyond a wait's own deadline: one last poll and one link lookup, each bounded per call.
WAIT_BACKSTOP_MARGIN_SECONDS = 600.0


async def resolve_credentials(credentials: CredentialsInput) -> LumaRelayCredentials:
    """The block itself, or the saved `LumaRelayCredentials` block of that name.

    Example:
        ```python
        from luma_prefect.tasks import resolve_credentials

        credentials = await resolve_credentials("luma-relay")
        ```
    """
    if isinstance(credentials, LumaRelayCredentials):
        return credentials
    if isinstance(credentials, str) and credentials.strip():
        return await LumaRelayCredentials.aload(credentials.strip())
    raise LumaConfigurationError(
        "credentials must be a LumaRelayCredentials block or the name of a saved one "
        f"(got {type(credentials).__name__})."
    )


class _SharedClients:
    """The relay and media clients of one `shared_clients` block, in its event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.clients: dict[str, LumaClient] = {}
        # Idle media clients, by credentials and connections per client.
        self.media: dict[tuple[str, int], list[httpx.AsyncClient]] = {}
        self.closed = False

    def active(self) -> bool:
        """Open, and in the running loop (an httpx client belongs to one loop)."""
        return not self.closed and self.loop is asyncio.get_running_loop()


_SHARED: contextvars.ContextVar[_SharedClients | None] = contextvars.ContextVar(
    "luma_shared_clients", default=None
)


def _settings_key(block: LumaRelayCredentials) -> str:
    """Tells apart blocks whose clients differ: every setting, the secrets as a digest."""
    secrets = json.dumps(
        [block.api_key.get_secret_value(), block.extra_headers.get_secret_value()],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(secrets.encode()).hexdigest()
    return f"{type(block).__qualname__}:{block.model_dump_json()}:{digest}"


@contextlib.asynccontextmanager
async def shared_clients() -> AsyncIterator[None]:
    """Within this block, tasks run in this event loop share one relay client per
    credentials, and hand their media clients on from one delivery to the next: connections
    kept alive from task to task, instead of a client, a connection (and over https a TLS
    handshake) per task run and file. The clients close when the block ends; nested blocks
    use the outer one. The batch flows use it.

    Example:
        ```python
        from luma_prefect import GenerationRequest
        from luma_prefect.tasks import shared_clients, submit_generation

        async with shared_clients():
            for prompt in ("a fox", "a cat"):
                await submit_generation("luma-relay", GenerationRequest(prompt=prompt))
        ```
    """
    outer = _SHARED.get()
    if outer is not None and outer.active():
        yield
        return
    shared = _SharedClients()
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)
        # A task that outlives the block (its context copied) gets a client of its own.
        shared.closed = True
        closing = [c.aclose() for c in shared.clients.values()]
        closing += [http.aclose() for idle in shared.media.values() for http in idle]
        await asyncio.gather(*closing, return_exceptions=True)


@contextlib.asynccontextmanager
async def relay_client(
    credentials: CredentialsInput, **overrides: Any
) -> AsyncIterator[LumaClient]:
    """A client for the credentials whose retry sleeps follow the wait clock, and whose
    every request holds a slot of the relay's Prefect concurrency limit. Inside
    `shared_clients` (and without `overrides`) the block's shared client, else a
    client of its own, closed on leaving."""
    block = await resolve_credentials(credentials)
    shared = _SHARED.get()
    if not overrides and shared is not None and shared.active():
        key = _settings_key(block)
        client = shared.clients.get(key)
        if client is None:
            client = shared.clients[key] = _new_client(block)
        yield client
        return
    async with _new_client(block, **overrides) as client:
        yield client


@contextlib.asynccontextmanager
async def media_client_for(
    block: LumaRelayCredentials, max_connections: int
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the block's media links, with `max_connections`. Inside
    `shared_clients`, borrowed from the block and given back on leaving, its connections
    still open for the next delivery; else a client of its own, closed on leaving.

    A client per delivery, not one pool for all: httpcore checks every connection of a
    pool on each request (whether its socket is readable), and one pool of 150 made a batch
    costlier than the new connections it saved (67 against 54 ms of CPU per generation,
    500 generations, two alternated pairs).
    """
    shared = _SHARED.get()
    if shared is None or not shared.active():
        async with block.get_media_client(max_connections) as own:
            yield own
        return
    idle = shared.media.setdefault((_settings_key(block), max_connections), [])
    http = idle.pop() if idle else block.get_media_client(max_connections)
    try:
        yield http
    finally:
        if shared.closed:  # the block ended meanwhile: nobody to give it back to
            await http.aclose()
        else:
            idle.append(http)  # last in, first out: the warmest connections next


def _new_client(block: LumaRelayCredentials, **overrides: Any) -> LumaClient:
    overrides.setdefault("request_gate", relay_gate(block.base_url))
    return block.get_client(sleep=wait_clock.sleep, **overrides)
