"""`LumaClient`: one pooled async HTTP client that speaks every relay style."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from luma_prefect._exceptions import (
    LumaConfigurationError,
    LumaError,
    LumaHTTPError,
    LumaNotFoundError,
    LumaProtocolError,
    LumaRateLimitError,
    LumaServerError,
    LumaSubmitUncertainError,
    LumaTransportError,
)
from luma_prefect._ids import check_generation_id
from luma_prefect._models import ApiStyle, Generation, GenerationRequest
from luma_prefect._retry import RetryPolicy
from luma_prefect._tls import Verify, ssl_context
from luma_prefect._urls import public_url
from luma_prefect.relay._answers import proves_refusal, read_body
from luma_prefect.relay._parsing import parse_generation, parse_generations
from luma_prefect.relay._redaction import install_httpx_redaction, remember_secrets
from luma_prefect.relay._routes import Route, StyleRoutes, normalise_prefix

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "LumaClient", "check_base_url"]

logger = logging.getLogger("luma_prefect.client")
# From import on: also the media client's request lines (signed CDN links) are redacted.
install_httpx_redaction()

Sleep = Callable[[float], Awaitable[None]]
#: Entered around every request to the relay (each attempt): e.g. a slot of a limit shared
#: by every worker (`luma_prefect.fleet.relay_gate`).
RequestGate = Callable[[], contextlib.AbstractAsyncContextManager[Any]]

_USER_AGENT = "luma-prefect/0.1"
# Failures that prove the request never left this machine: safe to retry even a paid POST.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Longest a request waits for one of the client's connections (callers sharing a client
# beyond its `max_connections`); as the relay-slot wait in the flows, 5 min.
CONNECTION_WAIT_SECONDS = 300.0
# The largest relay answer read: a batch of 50 generations is ~60 KiB, so 16 MiB is ample,
# and a hostile 300 MB answer no longer costs 1.2 GiB of memory (measured before the cap).
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Headers that describe the body as sent; the body handed on is already decoded and whole.
_BODY_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def check_base_url(base_url: str) -> str:
    """The base URL stripped of blanks and a trailing slash, or `LumaConfigurationError`.

    A URL with `user:password@` is refused: httpx would send and log it, Prefect would show
    it in run parameters and `prefect block inspect`; the key belongs in `api_key`.

    Example:
        ```python
        check_base_url("https://relay.example/ ")  # "https://relay.example"
        ```
    """
    base_url = (base_url or "").strip().rstrip("/")
    if not base_url.lower().startswith(("http://", "https://")):
        raise LumaConfigurationError(
            f"base_url must start with http:// or https:// (got {public_url(base_url)[:60]!r})."
        )
    try:
        parts = urlsplit(base_url)
        has_userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        raise LumaConfigurationError("base_url is not a valid URL.") from None
    if has_userinfo or "@" in parts.netloc:
        raise LumaConfigurationError(
            "base_url must not carry user:password@ (it would show in logs and run "
            f"parameters): use {public_url(base_url)!r} and put the key in api_key "
            "(other secrets in extra_headers)."
        )
    return base_url


def secrets_of(headers: Mapping[str, SecretStr | str] | None) -> list[SecretStr]:
    return [v if isinstance(v, SecretStr) else SecretStr(v) for v in (headers or {}).values()]


class _BearerAuth(httpx.Auth):
    """Adds the key per request, so it never sits in the client's default headers or repr."""

    def __init__(self, api_key: SecretStr, extra_headers: Mapping[str, SecretStr]) -> None:
        self._api_key = api_key
        self._extra_headers = extra_headers

    def auth_flow(self, request: httpx.Request) -> Any:
        for name, value in self._extra_headers.items():
            request.headers[name] = value.get_secret_value()
        request.headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        yield request


class LumaClient:
    """Async client for a Luma relay, in any of the three relay styles.

    One pooled `httpx.AsyncClient` underneath for reads, kept alive; paid requests go out
    on a connection of their own (with a caller's own `transport`, through that transport
    as it pools). Reads are retried on connection errors,
    timeouts, 429 and 5xx with exponential backoff and jitter, honouring `Retry-After`.
    Submits and extends are retried only when the request certainly did not reach the relay
    (a failure to connect) or was refused with 429: any other retry could pay twice.

    Example:
        ```python
        async with LumaClient("https://relay.example", "sk-...") as client:
            generation = await client.submit_generation(GenerationRequest(prompt="cat dance"))
            generation = await client.get_generation(generation.id)
        ```
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str,
        *,
        api_style: ApiStyle = "generations",
        route_prefix: str = "/luma",
        timeout_seconds: float = 30.0,
        max_connections: int = 20,
        extra_headers: Mapping[str, SecretStr | str] | None = None,
        retry: RetryPolicy | None = None,
        batch_size: int = 50,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: Verify = True,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        request_gate: RequestGate | None = None,
    ) -> None:
        base_url = check_base_url(base_url)
        if timeout_seconds <= 0 or max_connections < 1 or batch_size < 1:
            raise LumaConfigurationError(
                "timeout_seconds must be > 0, and max_connections and batch_size >= 1."
            )
        if max_response_bytes < 1:
            raise LumaConfigurationError("max_response_bytes must be >= 1.")
        install_httpx_redaction()
        self.base_url = base_url
        # What messages show: a base URL may carry user:password or a query token.
        self.shown_url = public_url(base_url)
        self.api_style: ApiStyle = api_style
        self.routes = StyleRoutes(api_style, normalise_prefix(route_prefix))
        self.retry = retry or RetryPolicy()
        self.batch_size = batch_size
        self.max_connections = max_connections
        # The total time one request may take, answer read in full: httpx's own timeouts
        # are per read, so a relay trickling a byte a second would never be cut by them.
        self.timeout_seconds = timeout_seconds
        self.max_response_bytes = max_response_bytes
        self._sleep: Sleep = sleep or asyncio.sleep
        self._gate: RequestGate = request_gate or contextlib.nullcontext
        # Requests beyond the pool's connections wait here, before their deadline starts:
        # tasks sharing a client (`shared_clients`) never time out in httpx's pool,
        # where a paid submit's timeout would leave it in doubt without it being sent.
        self._connections = asyncio.Semaphore(max_connections)
        self._rng = rng or random.Random()
        self._batch_supported = self.routes.batch() is not None
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._secrets = [key, *secrets_of(extra_headers)]
        remember_secrets(*self._secrets)
        secrets = {
            name: value if isinstance(value, SecretStr) else SecretStr(value)
            for name, value in (extra_headers or {}).items()
        }
        self._settings: dict[str, Any] = {
            "base_url": base_url,
            "auth": _BearerAuth(key, secrets),
            "headers": {"User-Agent": _USER_AGENT, "Accept": "application/json"},
            "timeout": httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0)),
            "transport": transport,
            "verify": ssl_context(verify),  # one per process: a CA bundle load is ~20 ms
        }
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            **self._settings,
        )
        # Paid requests go on a connection of their own, closed after the answer: a
        # kept-alive connection the relay closes as the POST goes out (its idle timeout)
        # breaks off with no answer, and leaves the submit in doubt. Made on first use; a
        # `transport` of the caller's own (tests, mocks) serves both.
        self._paid_http: httpx.AsyncClient | None = None
        self._closed = False

    @property
    def sleep(self) -> Sleep:
        """How this client sleeps between retries (injectable: tests pass a fake clock's).

        Example:
            ```python
            await client.sleep(client.retry.delay(1))
            ```
        """
        return self._sleep

    def __repr__(self) -> str:
        return f"LumaClient(base_url={self.shown_url!r}, api_style={self.api_style!r})"

    async def __aenter__(self) -> LumaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool.

        Example:
            ```python
            client = credentials.get_client()
            try:
                ...
            finally:
                await client.aclose()
            ```
        """
        self._closed = True
        try:
            await self._http.aclose()
        finally:
            if self._paid_http is not None:
                await self._paid_http.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether `aclose()` was called (a closed client sends nothing).

        Example:
            ```python
            assert not client.is_closed
            ```
        """
        return self._closed

    @property
    def batch_supported(self) -> bool:
        """False once the relay showed it has no batch route (remembered for this client).

        Example:
            ```python
            if not client.batch_supported:
                print("querying one by one")
            ```
        """
        return self._batch_supported

    async def get_generation(self, generation_id: str) -> Generation:
        """The current state of one generation.

        Example:
            ```python
            generation = await client.get_generation("4665a07c-7641-4809-a133-10786201bb56")
            ```
        """
        generation_id = check_generation_id(generation_id)
        route = self.routes.query(generation_id)
        body = await self._send(route, f"Querying generation {generation_id}", generation_id)
        generation = self._parse_one(body, generation_id)
        if generation.id.lower() != generation_id.lower():
            # Never believed: delivering it would publish another generation's video.
            raise LumaProtocolError(
                f"Querying generation {generation_id}: the relay answered about another "
                f"generation ({generation.id[:80]}). The answer is ignored and the query "
                "retried; if it persists, report it to the relay.",
                generation_id=generation_id,
                body_excerpt=None,
            )
        return generation

    async def find_generations(self, generation_ids: Iterable[str]) -> dict[str, Generation]:
        """The generations the relay knows among `generation_ids`, by id; unknown ids left out.

        Uses the batch route in chunks of `batch_size` where the style has one; where it has
        none, or the relay answers 404/405 to it, bounded concurrent single queries.

        Example:
            ```python
            found = await client.find_generations(ids)
            missing = [i for i in ids if i not in found]
            ```
        """
        ids = list(dict.fromkeys(check_generation_id(i) for i in generation_ids))
        found: dict[str, Generation] = {}
        if self._batch_supported and ids:
            chunks = [ids[i : i + self.batch_size] for i in range(0, len(ids), self.batch_size)]
            gate = asyncio.Semaphore(self.max_connections)
            answers = await asyncio.gather(
                *(self._query_chunk(chunk, gate) for chunk in chunks), return_exceptions=True
            )
            for answer in answers:
                if isinstance(answer, BaseException) and not _no_batch_route(answer):
                    raise answer
                if isinstance(answer, dict):
                    found.update(answer)
        if not self._batch_supported:
            missing = [i for i in ids if i not in found]
            found.update(await self._query_singly(missing))
        return {i: found[i] for i in ids if i in found}

    async def get_generations(self, generation_ids: Iterable[str]) -> list[Generation]:
        """The generations asked for, in the order asked; `LumaNotFoundError` if any is unknown.

        Example:
            ```python
            first, second = await client.get_generations([first_id, second_id])
            ```
        """
        ids = [check_generation_id(i) for i in generation_ids]
        found = await self.find_generations(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise LumaNotFoundError(
                f"The relay does not know {len(missing)} of the {len(ids)} generations asked "
                f"for: {shown}. Check the ids and that the credentials point at the relay "
                "that created them.",
                status_code=404,
                generation_id=missing[0],
            )
        return [found[i] for i in ids]

    async def submit_generation(self, request: GenerationRequest) -> Generation:
        """Create a generation: a paid request, never retried once it may have been received.

        Example:
            ```python
            generation = await client.submit_generation(GenerationRequest(prompt="a fox"))
            ```
        """
        body = await self._send(
            self.routes.submit(),
            "Submitting a generation",
            None,
            json=request.to_wire(self.api_style),
            paid=True,
        )
        return self._parse_one(body, None, paid=True)

    async def extend_generation(self, generation_id: str, request: GenerationRequest) -> Generation:
        """Continue a completed generation by about 5 s: a new, paid generation.

        In the official style this is a submit whose first keyframe is the generation.

        Example:
            ```python
            longer = await client.extend_generation(done.id, GenerationRequest(prompt="more"))
            ```
        """
        generation_id = check_generation_id(generation_id)
        body = await self._send(
            self.routes.extend(generation_id),
            f"Extending generation {generation_id}",
            generation_id,
            json=request.to_wire(self.api_style, extend_id=generation_id),
            paid=True,
        )
        return self._parse_one(body, None, paid=True)

    @property
    def can_list(self) -> bool:
        """Whether this relay style lists recent generations (to find a lost submit again).

        Example:
            ```python
            if client.can_list:
                recent = await client.list_recent_generations()
            ```
        """
        return self.routes.list_recent() is not None

    async def list_recent_generations(self, limit: int = 100) -> list[Generation]:
        """The relay's newest generations, newest first (official style only; else []).

        Example:
            ```python
            recent = await client.list_recent_generations()
            ```
        """
        route = self.routes.list_recent(limit)
        if route is None:
            return []
        body = await self._send(route, "Listing recent generations", None)
        if isinstance(body, Mapping) and isinstance(body.get("generations"), list):
            body = body["generations"]
        return parse_generations(body) if body else []

    async def get_download_url(self, generation_id: str) -> str:
        """A fresh no-watermark video link for a completed generation.

        Call it only when the generation has no `video.download_url`; the official style has
        no such route, so there it re-reads the generation's video link.

        Example:
            ```python
            url = await client.get_download_url(generation.id)
            ```
        """
        generation_id = check_generation_id(generation_id)
        route = self.routes.download_url(generation_id)
        if route is None:
            url = (await self.get_generation(generation_id)).best_video_url
        else:
            body = await self._send(
                route, f"Asking the video link of generation {generation_id}", generation_id
            )
            if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
                body = body["data"]
            url = body.get("url") if isinstance(body, Mapping) else None
        if not isinstance(url, str) or not url:
            raise LumaProtocolError(
                f"The relay gave no video link for generation {generation_id}; it may not be "
                "completed yet.",
                generation_id=generation_id,
                body_excerpt=None,
            )
        return url

    async def _query_chunk(
        self, chunk: list[str], gate: asyncio.Semaphore
    ) -> dict[str, Generation]:
        route = self.routes.batch()
        assert route is not None
        async with gate:
            if not self._batch_supported:
                return {}
            try:
                body = await self._send(
                    route, f"Batch query of {len(chunk)} generations", None, json={"ids": chunk}
                )
            except LumaHTTPError as exc:
                if _no_batch_route(exc):
                    if self._batch_supported:
                        logger.info("The relay has no batch route; querying one by one.")
                    self._batch_supported = False
                raise
        wanted = set(chunk)
        return {g.id: g for g in parse_generations(body) if g.id in wanted}

    async def _query_singly(self, ids: list[str]) -> dict[str, Generation]:
        gate = asyncio.Semaphore(self.max_connections)

        async def one(generation_id: str) -> Generation | None:
            async with gate:
                try:
                    return await self.get_generation(generation_id)
                except LumaNotFoundError:
                    return None

        answers = await asyncio.gather(*(one(i) for i in ids))
        return {g.id: g for g in answers if g is not None}

    async def _send(
        self,
        route: Route,
        action: str,
        generation_id: str | None,
        *,
        json: Any = None,
        paid: bool = False,
    ) -> Any:
        """One logical call with its retries; the parsed JSON body, or a `LumaError`."""
        retry_number = 0
        while True:
            started = time.monotonic()
            retry_after: float | None = None
            if self._closed:
                # Before anything is sent: a proven non-send, never in doubt.
                raise LumaTransportError(
                    f"{action}: this client for {self.shown_url} is closed; nothing was sent.",
                    generation_id=generation_id,
                )
            try:
                # The client's own connection first, then the gate's slot (shared by the
                # fleet): a request queued here never holds a slot other workers wait for.
                async with self._connection(action, generation_id), self._gate():
                    response = await self._exchange(route, json, paid)
            except (httpx.TransportError, TimeoutError) as exc:
                error: LumaError = self._transport_error(exc, action, generation_id, paid)
                retryable = not paid or isinstance(exc, _NOT_SENT)
            except (httpx.HTTPError, _TooLarge) as exc:
                # A body that cannot be decoded (bad gzip) or is too large: not a relay
                # answer we can read, and not one a retry would mend.
                unreadable = self._unreadable(exc, action, generation_id)
                if paid:
                    raise self._redacted(self._uncertain(action, unreadable)) from None
                raise self._redacted(unreadable) from None
            else:
                logger.debug(
                    "%s %s -> %s in %.3f s",
                    route.method,
                    route.path,
                    response.status_code,
                    time.monotonic() - started,
                )
                try:
                    return _read(response, action, generation_id)
                except LumaRateLimitError as exc:
                    error, retryable, retry_after = exc, True, exc.retry_after
                except (LumaServerError, LumaProtocolError) as exc:
                    if paid:
                        # A 5xx from a gateway, or a 2xx we cannot read: the relay may well
                        # have created the generation.
                        raise self._redacted(self._uncertain(action, exc)) from None
                    if isinstance(exc, LumaProtocolError):
                        raise self._redacted(exc) from None
                    error, retryable = exc, True
                except LumaError as exc:
                    if paid and not proves_refusal(exc, response):
                        # e.g. a gateway's 408 or 400 after it forwarded: maybe created.
                        raise self._redacted(self._uncertain(action, exc)) from None
                    raise self._redacted(exc) from None
            # Redacted before it is logged: some relays echo the key in their 5xx bodies.
            error = self._redacted(error)
            retry_number += 1
            if not retryable or retry_number > self.retry.max_retries:
                raise error
            delay = self.retry.delay(retry_number, retry_after, self._rng)
            logger.debug("%s: retry %d in %.2f s after: %s", action, retry_number, delay, error)
            await self._sleep(delay)

    async def _exchange(self, route: Route, json: Any, paid: bool = False) -> httpx.Response:
        """One request and its whole answer within `timeout_seconds`, at most
        `max_response_bytes` of decoded body; the answer comes back read in full."""
        http = self._paid_client() if paid and self._settings["transport"] is None else self._http
        async with asyncio.timeout(self.timeout_seconds):
            async with http.stream(
                route.method, route.path, params=route.params, json=json
            ) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise _TooLarge(len(body))
        headers = [(k, v) for k, v in response.headers.multi_items() if k not in _BODY_HEADERS]
        return httpx.Response(
            response.status_code, headers=headers, content=bytes(body), request=response.request
        )

    @contextlib.asynccontextmanager
    async def _connection(self, action: str, generation_id: str | None) -> AsyncIterator[None]:
        """A slot of `max_connections`, waited for before the request's deadline starts,
        within `CONNECTION_WAIT_SECONDS` (then nothing was sent: safe for a submit too)."""
        try:
            async with asyncio.timeout(CONNECTION_WAIT_SECONDS):
                await self._connections.acquire()
        except TimeoutError:
            raise LumaTransportError(
                f"{action}: no connection to the relay at {self.shown_url} came free within "
                f"{CONNECTION_WAIT_SECONDS:g} s (max_connections {self.max_connections}); "
                "nothing was sent. Run again, or raise max_connections on the credentials.",
                generation_id=generation_id,
            ) from None
        try:
            yield
        finally:
            self._connections.release()

    def _paid_client(self) -> httpx.AsyncClient:
        if self._paid_http is None:
            self._paid_http = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=self.max_connections, max_keepalive_connections=0
                ),
                **self._settings,
            )
        return self._paid_http

    def _unreadable(
        self, exc: Exception, action: str, generation_id: str | None
    ) -> LumaProtocolError:
        if isinstance(exc, _TooLarge):
            what = (
                f"an answer larger than {self.max_response_bytes:,} bytes; it was cut off "
                "there (no relay answer is that large: the relay or its address is wrong)"
            )
        else:
            what = f"an answer that could not be read ({type(exc).__name__}: {exc})"
        return LumaProtocolError(
            f"{action}: the relay at {self.shown_url} sent {what}.",
            generation_id=generation_id,
            body_excerpt=None,
        )

    def _redacted(self, error: LumaError) -> LumaError:
        """The error with any secret the relay echoed back (some echo the key) blanked."""
        for secret in self._secrets:
            value = secret.get_secret_value()
            if not value:
                continue
            if value in error.message:
                error.message = error.message.replace(value, "**********")
                error.args = (error.message,)
            for field in ("relay_message", "body_excerpt"):
                text = getattr(error, field, None)
                if isinstance(text, str) and value in text:
                    setattr(error, field, text.replace(value, "**********"))
        return error

    def _uncertain(self, action: str, error: LumaError) -> LumaSubmitUncertainError:
        if isinstance(error, LumaHTTPError):
            said = f"HTTP {error.status_code}" + (
                f": {error.relay_message}" if error.relay_message else ""
            )
        else:
            said = "an answer that could not be read"
        return LumaSubmitUncertainError(
            f"{action} got {said}, so whether the relay created a paid generation is "
            "unknown. It was not retried, so as not to pay twice: look at the relay's task "
            f"list at {self.shown_url} before submitting again.",
            generation_id=error.generation_id,
        )

    def _transport_error(
        self,
        exc: httpx.TransportError | TimeoutError,
        action: str,
        generation_id: str | None,
        paid: bool,
    ) -> LumaTransportError:
        if isinstance(exc, TimeoutError):
            what = f"no complete answer within {self.timeout_seconds:g} s"
        else:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if paid and not isinstance(exc, _NOT_SENT):
            return LumaSubmitUncertainError(
                f"{action} broke after the request may have reached the relay ({what}). It "
                "was not retried, so as not to pay for a second generation: look at the "
                f"relay's task list at {self.shown_url} before submitting again.",
                generation_id=generation_id,
            )
        return LumaTransportError(
            f"{action} failed: could not talk to the relay at {self.shown_url} ({what}). "
            "Check base_url and the network, then try again.",
            generation_id=generation_id,
        )

    def _parse_one(self, body: Any, generation_id: str | None, paid: bool = False) -> Generation:
        try:
            return parse_generation(body)
        except LumaProtocolError as exc:
            exc.generation_id = exc.generation_id or generation_id
            if paid:
                raise self._redacted(
                    self._uncertain("Submitting a generation (HTTP 2xx)", exc)
                ) from None
            raise


class _TooLarge(Exception):
    """A relay answer past `max_response_bytes` (its reading stopped there)."""


def _read(response: httpx.Response, action: str, generation_id: str | None) -> Any:
    """`read_body`, with JSON too deep for Python's parser taken as an unreadable answer."""
    try:
        return read_body(response, action, generation_id)
    except RecursionError:
        raise LumaProtocolError(
            f"{action}: the relay answered HTTP {response.status_code} with JSON nested too "
            "deeply to read. The relay may be broken or hostile; try again later.",
            generation_id=generation_id,
            status_code=response.status_code,
            body_excerpt=None,
        ) from None


def _no_batch_route(exc: BaseException) -> bool:
    return isinstance(exc, LumaHTTPError) and exc.status_code in (404, 405)
