"""Shared helpers of the wait and task tests: a fake clock that drives the simulator.

Every test talks real HTTP to a relay simulator on 127.0.0.1 whose clock is manual. The
plugin's `FakeClock` given to the wait engine (and to the client's retry sleeps) moves its
own time and the simulator's together, so a 30-minute wait runs in milliseconds.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from luma_prefect import LumaClient
from luma_prefect.simulator import RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock


class ListHandler(logging.Handler):
    """Keeps every record it receives."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@pytest.fixture
def make_sim(
    luma_simulator_factory: Callable[..., RelaySimulator],
) -> Callable[..., RelaySimulator]:
    """Simulators on a manual clock (pending 60 s, processing 120 s unless told)."""
    return functools.partial(
        luma_simulator_factory, manual_clock=True, pending_seconds=60.0, processing_seconds=120.0
    )


@pytest.fixture
def sim(make_sim: Callable[..., RelaySimulator]) -> RelaySimulator:
    """A `generations`-style simulator: pending 60 s, processing 120 s, manual clock."""
    return make_sim()


@pytest.fixture
def clock(sim: RelaySimulator) -> FakeClock:
    """A fake clock driving `sim`."""
    return FakeClock(sim)


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[..., LumaClient]]:
    """Clients for a simulator whose retry sleeps go to the fake clock; closed afterwards."""
    clients: list[LumaClient] = []

    def make(simulator: RelaySimulator, clock: FakeClock, **overrides: Any) -> LumaClient:
        client = simulator.credentials().get_client(sleep=clock.sleep, **overrides)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def log_records() -> Iterator[ListHandler]:
    """A handler on a private logger, to pass as the engine's `logger`."""
    handler = ListHandler()
    logger = logging.getLogger("tests.tasks.wait")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def wait_logger(log_records: ListHandler) -> logging.Logger:
    return logging.getLogger("tests.tasks.wait")
