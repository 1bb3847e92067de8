"""How a wait keeps time and how it polls: the clock, the targets, the settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._models import GenerationState

__all__ = ["Clock", "SystemClock", "WaitSettings", "normalise_states"]


class Clock(Protocol):
    """Time as the engine sees it; tests inject a fake one to wait 30 minutes in milliseconds."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real monotonic clock and `asyncio.sleep` (cancellable at once)."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def normalise_states(until: Iterable[str | GenerationState] | str) -> frozenset[GenerationState]:
    """Target states from names or `GenerationState` values; unknown names are refused."""
    words = [until] if isinstance(until, (str, GenerationState)) else list(until)
    states = set()
    for word in words:
        try:
            states.add(GenerationState(word))
        except ValueError:
            allowed = ", ".join(s.value for s in GenerationState)
            raise LumaConfigurationError(
                f"until={word!r} is not a state: use any of {allowed}."
            ) from None
    if not states:
        raise LumaConfigurationError("until needs at least one state, e.g. ('completed',).")
    return frozenset(states)


@dataclass(frozen=True)
class WaitSettings:
    """How a wait polls, and how long it bears with trouble.

    Attributes:
        until: the states that end the wait successfully; a later state (`completed` for
            a wait until `processing`, when the polls never caught it running) does too.
        timeout_seconds: the deadline, on a monotonic clock; one last poll is made at it.
        poll_interval_seconds: the first interval; it grows by `backoff_factor` per round.
        max_poll_interval_seconds: the longest interval between two polls.
        backoff_factor: growth of the interval per round without change.
        not_found_grace_seconds: a generation the relay does not know yet (a 404 right
            after submit) is polled for this long before the wait gives up on it.
        max_consecutive_errors: failed rounds in a row (5xx, timeouts, dropped connections,
            malformed bodies) before the wait gives up.
        max_error_seconds: the longest stretch of failed rounds before the wait gives up.
        link_grace_polls: extra polls for a `completed` generation that has no video link yet.

    Example:
        ```python
        from luma_prefect import GenerationState, WaitSettings

        WaitSettings(until=frozenset({GenerationState.COMPLETED}), timeout_seconds=900)
        ```
    """

    until: frozenset[GenerationState] = frozenset({GenerationState.COMPLETED})
    timeout_seconds: float = 1800.0
    poll_interval_seconds: float = 5.0
    max_poll_interval_seconds: float = 30.0
    backoff_factor: float = 1.5
    not_found_grace_seconds: float = 60.0
    max_consecutive_errors: int = 10
    max_error_seconds: float = 300.0
    link_grace_polls: int = 3

    def __post_init__(self) -> None:
        if self.poll_interval_seconds <= 0 or self.timeout_seconds <= 0:
            raise LumaConfigurationError(
                "poll_interval_seconds and timeout_seconds must be positive."
            )
        if self.max_poll_interval_seconds < self.poll_interval_seconds:
            raise LumaConfigurationError(
                "max_poll_interval_seconds must be at least poll_interval_seconds."
            )
        if self.backoff_factor < 1:
            raise LumaConfigurationError("backoff_factor must be at least 1.")
