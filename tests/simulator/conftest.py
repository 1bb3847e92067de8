"""Shared helpers of the simulator tests: real loopback HTTP only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from luma_prefect.simulator import RelaySimulator


@pytest.fixture
def sim_factory(
    luma_simulator_factory: Callable[..., RelaySimulator],
) -> Callable[..., RelaySimulator]:
    """Simulators on a manual clock (pending 1 s, processing 2 s) unless told otherwise."""

    def make(**fields: Any) -> RelaySimulator:
        settings: dict[str, Any] = {
            "manual_clock": True,
            "pending_seconds": 1.0,
            "processing_seconds": 2.0,
        }
        settings.update(fields)
        return luma_simulator_factory(**settings)

    return make


@pytest.fixture
def sim(sim_factory: Callable[..., RelaySimulator]) -> RelaySimulator:
    """A generations-style simulator on a manual clock."""
    return sim_factory()


@pytest.fixture
def client_for() -> Iterator[Callable[..., httpx.Client]]:
    """An authenticated httpx client for a simulator (closed after the test)."""
    clients: list[httpx.Client] = []

    def make(simulator: RelaySimulator, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or simulator.api_key}"}
        client = httpx.Client(base_url=simulator.base_url, headers=headers, timeout=10)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def api(sim: RelaySimulator, client_for: Callable[..., httpx.Client]) -> httpx.Client:
    return client_for(sim)
