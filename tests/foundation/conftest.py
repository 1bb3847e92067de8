"""Shared helpers of the foundation tests: the shared fixtures, a mocked relay, quick clients."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import respx

from luma_prefect import LumaClient
from luma_prefect.simulator.pytest_plugin import FakeClock

BASE_URL = "https://relay.example"
API_KEY = "sk-SECRET-123"


@pytest.fixture
def relay() -> Iterator[respx.MockRouter]:
    """A mocked relay at BASE_URL; any request to an unmocked route fails the test."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def sleeps(luma_clock: FakeClock) -> list[float]:
    """The delays a client asked to sleep, in order (nothing really sleeps)."""
    return luma_clock.sleeps


@pytest.fixture
async def make_client(luma_clock: FakeClock) -> AsyncIterator[Callable[..., LumaClient]]:
    """Build LumaClients that sleep on the fake clock (recorded in `sleeps`); closed after."""
    clients: list[LumaClient] = []

    def make(**kwargs: Any) -> LumaClient:
        kwargs.setdefault("sleep", luma_clock.sleep)
        kwargs.setdefault("rng", random.Random(7))
        client = LumaClient(
            kwargs.pop("base_url", BASE_URL), kwargs.pop("api_key", API_KEY), **kwargs
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
