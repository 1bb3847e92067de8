"""Retry settings and the backoff arithmetic shared by the client and the wait engine."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries a request that failed in a way that may pass.

    Reads (single and batch queries) are retried on connection errors, timeouts, 429 and
    5xx. Submits and extends only on failures to connect and on 429, the two cases where the
    relay certainly did not create a paid generation.

    Attributes:
        max_retries: retries after the first attempt (5: a read survives five transient
            failures in a row).
        backoff_seconds: the first delay; it doubles each retry.
        max_backoff_seconds: the longest delay between two attempts.
        max_retry_after_seconds: the longest `Retry-After` we honour.
        jitter: spread of each delay, as a fraction (0.25 = +-25 %), so that many clients
            failing together do not retry together.

    Example:
        ```python
        client = LumaClient(base_url, key, retry=RetryPolicy(max_retries=8))
        ```
    """

    max_retries: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0
    max_retry_after_seconds: float = 120.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_seconds < 0 or not 0 <= self.jitter < 1:
            raise ValueError("max_retries and backoff_seconds must be >= 0, and jitter in [0, 1)")

    def delay(
        self, retry_number: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number `retry_number` (1 for the first retry).

        A relay's `Retry-After` wins over the backoff, capped at `max_retry_after_seconds`.

        Example:
            ```python
            RetryPolicy(jitter=0).delay(3)  # 2.0: 0.5, 1.0, 2.0, ...
            ```
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_seconds)
        base = min(self.backoff_seconds * 2 ** max(retry_number - 1, 0), self.max_backoff_seconds)
        spread = base * self.jitter
        # Jitter spreads the delay but never past the cap (max_backoff_seconds is the longest).
        jittered = base + (rng or random).uniform(-spread, spread)
        return min(max(0.0, jittered), self.max_backoff_seconds)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - (now or datetime.now(timezone.utc))).total_seconds(), 0.0)
