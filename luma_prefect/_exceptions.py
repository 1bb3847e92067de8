"""Every error luma_prefect raises, as one hierarchy.

```
LumaError                         anything this package raises on purpose
├── LumaConfigurationError        a setting or argument that cannot work (bad style, bad id)
├── LumaTransportError            the relay could not be reached or the connection broke
│   └── LumaSubmitUncertainError  a submit broke after it may have reached the relay
├── LumaProtocolError             a body that is not what any relay style sends
├── LumaHTTPError                 the relay answered with an error (any status, or 200 + code)
│   ├── LumaAuthError             401/403: bad, expired or exhausted key
│   ├── LumaNotFoundError         404, or `task_not_exist`
│   ├── LumaRateLimitError        429, with `retry_after`
│   ├── LumaServerError           5xx and 524: transient on the relay's side
│   └── LumaRequestError          400/422 and other refusals of the request itself
├── LumaGenerationFailed          the generation itself ended `failed`
├── LumaWaitTimeout               a wait passed its deadline
└── LumaDownloadError             an asset could not be fetched or stored
```

In doubt (`LumaSubmitUncertainError`): a paid submit counts as "not created" only when the
answer proves the relay refused it before accepting it (401/403, 404/405, 413, 429, or a
400/422 in the relay's own words naming no upstream trouble; a failure to connect). Every
other outcome after the request may have reached the relay (408, 5xx, a gateway's 400, a
timeout or a cut connection after sending, a 2xx that cannot be read) is in doubt: the relay
may have created, and charged, a generation whose id nobody knows. An in-doubt submit is
never sent again automatically; the ledger keeps it, `collect_pending` resolves it where it
can (the submit's persisted Prefect result, an official relay's list of recent generations)
and reports the rest (log, `luma.submit.in-doubt` event, `luma-submits-in-doubt` artifact);
`luma-prefect resolve KEY --generation-id ID` or `--abandon` settles it by hand.

Each error says what happened, which generation, and what to do, never an action that pays
again. None of them ever holds the relay key: messages are built from the relay's answer,
never from our request headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from luma_prefect._models import Generation

__all__ = [
    "LumaAuthError",
    "LumaConfigurationError",
    "LumaDownloadError",
    "LumaError",
    "LumaGenerationFailed",
    "LumaHTTPError",
    "LumaNotFoundError",
    "LumaProtocolError",
    "LumaRateLimitError",
    "LumaRequestError",
    "LumaServerError",
    "LumaSubmitUncertainError",
    "LumaTransportError",
    "LumaWaitTimeout",
]


class LumaError(Exception):
    """Base class of every error raised by luma_prefect.

    Example:
        ```python
        try:
            generation = await client.get_generation(generation_id)
        except LumaError as exc:
            print(f"Luma relay trouble: {exc}")
        ```
    """

    def __init__(self, message: str, *, generation_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.generation_id = generation_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles task exceptions into results; keep keyword attributes on the way.
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[LumaError], state: dict[str, Any]) -> LumaError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class LumaConfigurationError(LumaError, ValueError):
    """A setting or argument that cannot work, found before anything is sent.

    Example:
        ```python
        try:
            LumaClient("ftp://relay.example", "sk-...")
        except LumaConfigurationError as exc:
            print(exc)  # says what cannot work, and how to fix it
        ```
    """


class LumaTransportError(LumaError):
    """The relay could not be reached, timed out, or dropped the connection.

    Reads are retried on it; it reaches you only when the retries ran out.

    Example:
        ```python
        try:
            generation = await client.get_generation(generation_id)
        except LumaTransportError:
            ...  # the network or the relay is down: try again later
        ```
    """


class LumaSubmitUncertainError(LumaTransportError):
    """A submit or extend may have created a paid generation, but its id is unknown.

    Raised for every outcome after the request may have reached the relay that does not
    prove a refusal: a cut connection or timeout after sending, 408, 5xx, a gateway's 400,
    an unreadable 2xx. It is never retried, because a second POST could pay for a second
    generation. The flows keep it in the ledger as in doubt; see the module doc.

    Example:
        ```python
        try:
            generation = await client.submit_generation(request)
        except LumaSubmitUncertainError as exc:
            print(exc)  # says what to check before resubmitting
        ```
    """


class LumaProtocolError(LumaError):
    """The relay answered with a body that no known relay style sends.

    Example:
        ```python
        try:
            generation = await client.get_generation(generation_id)
        except LumaProtocolError as exc:
            print(exc.body_excerpt)  # the first characters of what came back
        ```
    """

    def __init__(
        self,
        message: str,
        *,
        generation_id: str | None = None,
        status_code: int | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        super().__init__(message, generation_id=generation_id)
        self.status_code = status_code
        self.body_excerpt = body_excerpt


class LumaHTTPError(LumaError):
    """The relay answered with an error, by HTTP status or by a `code` that is not `success`.

    Attributes:
        status_code: the HTTP status (200 for an error inside a 200 answer).
        relay_message: the relay's own words, from whichever error shape it used.
        relay_code: the relay's error code or type, where it gave one.
        request_id: the relay's request id, where it gave one (quote it to the relay's support).

    Example:
        ```python
        try:
            generation = await client.get_generation(generation_id)
        except LumaHTTPError as exc:
            print(exc.status_code, exc.relay_message, exc.request_id)
        ```
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        relay_message: str | None = None,
        relay_code: str | None = None,
        request_id: str | None = None,
        generation_id: str | None = None,
    ) -> None:
        super().__init__(message, generation_id=generation_id)
        self.status_code = status_code
        self.relay_message = relay_message
        self.relay_code = relay_code
        self.request_id = request_id


class LumaAuthError(LumaHTTPError):
    """HTTP 401/403: the relay refused the key (wrong, expired, or out of credit).

    Example:
        ```python
        try:
            generation = await client.get_generation(generation_id)
        except LumaAuthError:
            ...  # fix the key in the LumaRelayCredentials block
        ```
    """


class LumaNotFoundError(LumaHTTPError):
    """HTTP 404, or `task_not_exist`: the relay does not know this generation (yet).

    Example:
        ```python
        try:
            generation = await client.get_generation(generation_id)
        except LumaNotFoundError as exc:
            print(f"no generation {exc.generation_id} on this relay")
        ```
    """


class LumaRateLimitError(LumaHTTPError):
    """HTTP 429: too many requests, or the relay's upstream is saturated.

    Attributes:
        retry_after: seconds the relay asked us to wait, when it said so.

    Example:
        ```python
        try:
            generation = await client.submit_generation(request)
        except LumaRateLimitError as exc:
            await asyncio.sleep(exc.retry_after or 5)
        ```
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class LumaServerError(LumaHTTPError):
    """HTTP 5xx or 524: trouble on the relay's side, usually transient.

    Example:
        ```python
        try:
            generation = await client.get_generation(generation_id)
        except LumaServerError:
            ...  # reads were already retried; try again later
        ```
    """


class LumaRequestError(LumaHTTPError):
    """HTTP 400/422 (or an error code in a 200 answer): the relay refused the request itself.

    Example:
        ```python
        try:
            generation = await client.submit_generation(request)
        except LumaRequestError as exc:
            print(exc.relay_message)  # e.g. an unsupported aspect ratio
        ```
    """


class LumaGenerationFailed(LumaError):
    """The generation ended in the `failed` state (the relay usually refunds it).

    Attributes:
        generation: the last `Generation` seen.
        failure_reason: the relay's reason, when it gave one.

    Example:
        ```python
        from luma_prefect.tasks import wait_for_generation

        try:
            done = await wait_for_generation("luma-relay", generation_id)
        except LumaGenerationFailed as exc:
            print(exc.generation.id, exc.failure_reason)
        ```
    """

    def __init__(self, generation: Generation) -> None:
        reason = generation.failure_reason or "the relay gave no reason"
        super().__init__(
            f"Generation {generation.id} failed: {reason}. Failed generations are usually "
            "refunded; change the prompt or images before submitting again.",
            generation_id=generation.id,
        )
        self.generation = generation
        self.failure_reason = generation.failure_reason


class LumaWaitTimeout(LumaError):
    """A wait passed its deadline before the generation reached a wanted state.

    The generation is not lost: wait for it again, or collect it later by its id.

    Attributes:
        generation: the last `Generation` seen (None if no poll ever succeeded).
        timeout_seconds: the deadline that passed.

    Example:
        ```python
        from luma_prefect.tasks import wait_for_generation

        try:
            done = await wait_for_generation("luma-relay", generation_id, timeout_seconds=900)
        except LumaWaitTimeout as exc:
            print(exc.generation_id, exc.generation and exc.generation.state)
        ```
    """

    def __init__(
        self,
        generation_id: str,
        *,
        timeout_seconds: float,
        generation: Generation | None = None,
        until: tuple[str, ...] = (),
    ) -> None:
        last = f"last state {generation.state.value!r}" if generation else "never seen"
        wanted = ", ".join(until) or "a wanted state"
        super().__init__(
            f"Generation {generation_id} did not reach {wanted} within {timeout_seconds:g} s "
            f"({last}). It may still finish: wait again or collect it later by its id.",
            generation_id=generation_id,
        )
        self.generation = generation
        self.timeout_seconds = timeout_seconds


class LumaDownloadError(LumaError):
    """An asset of a generation could not be downloaded or stored.

    Attributes:
        retryable: True when running again soon may succeed (a transfer that kept breaking
            off, its partial file kept); False when it cannot (a refused or expired link,
            a size cap, a full disk).

    Example:
        ```python
        from luma_prefect.tasks import download_generation

        try:
            await download_generation("luma-relay", generation_id, "./luma-output")
        except LumaDownloadError as exc:
            print(exc.generation_id, exc)
        ```
    """

    def __init__(
        self, message: str, *, generation_id: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message, generation_id=generation_id)
        self.retryable = retryable
