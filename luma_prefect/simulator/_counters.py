"""What a simulator counts: requests per route, paid submits, lookups, media bytes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CounterBook", "Counters"]


@dataclass(frozen=True)
class Counters:
    """A snapshot of what a simulator has seen since it started (or was last reset).

    `requests` counts every request per route name (submit, extend, query, batch,
    download_url, media, admin), refused ones included. `submits_accepted` and
    `submits_by_prompt` count paid generations (submits and extends that created one).
    `queries_by_generation` counts single and batch lookups per id asked for (unknown ids
    too); `media_requests_by_generation` media requests per generation; `bytes_served`
    media body bytes sent; `faults_fired` how often each `FaultKind` acted, by its value;
    `max_concurrent_requests` the most relay API requests (not media, not admin) open at
    once, from arrival until their answer is sent: what a relay's concurrency limit counts.
    `reused_connections` counts, per route, the requests that came on a connection an
    earlier request had used (kept alive), told by the client's address and port (a
    long run that wraps the ephemeral ports may count a new connection as reused).

    Example:
        ```python
        c = sim.counters()
        assert c.requests.get("query", 0) == 3
        assert c.submits_accepted == 1 and c.submits_by_prompt == {"cat dance": 1}
        ```
    """

    requests: dict[str, int] = field(default_factory=dict)
    submits_accepted: int = 0
    submits_by_prompt: dict[str, int] = field(default_factory=dict)
    queries_by_generation: dict[str, int] = field(default_factory=dict)
    media_requests_by_generation: dict[str, int] = field(default_factory=dict)
    bytes_served: int = 0
    faults_fired: dict[str, int] = field(default_factory=dict)
    max_concurrent_requests: int = 0
    reused_connections: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (what `GET /_simulator/counters` answers).

        Example:
            ```python
            sim.counters().to_dict()["bytes_served"]
            ```
        """
        return {
            "requests": dict(self.requests),
            "submits_accepted": self.submits_accepted,
            "submits_by_prompt": dict(self.submits_by_prompt),
            "queries_by_generation": dict(self.queries_by_generation),
            "media_requests_by_generation": dict(self.media_requests_by_generation),
            "bytes_served": self.bytes_served,
            "faults_fired": dict(self.faults_fired),
            "max_concurrent_requests": self.max_concurrent_requests,
            "reused_connections": dict(self.reused_connections),
        }


class CounterBook:
    """The running tallies behind `Counters`; `SimulatorState` guards them with its lock."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.submits = 0
        self.by_prompt: Counter[str] = Counter()
        self.queries: Counter[str] = Counter()
        self.media: Counter[str] = Counter()
        self.bytes_served = 0
        self.max_in_flight = 0
        self.peers: set[tuple[Any, ...]] = set()
        self.reused: Counter[str] = Counter()

    def snapshot(self, faults_fired: Counter[str]) -> Counters:
        return Counters(
            requests=dict(self.requests),
            submits_accepted=self.submits,
            submits_by_prompt=dict(self.by_prompt),
            queries_by_generation=dict(self.queries),
            media_requests_by_generation=dict(self.media),
            bytes_served=self.bytes_served,
            faults_fired=dict(faults_fired),
            max_concurrent_requests=self.max_in_flight,
            reused_connections=dict(self.reused),
        )
