"""Shared helpers of the simulator tests: real loopback HTTP only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from luma_prefect.simulator import RelaySimulator

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


@pytest.fixture
def fixture() -> Callable[[str], Any]:
    """Loads one of shared/fixtures/*.json by name."""

    def load(name: str) -> Any:
        path = FIXTURES / name
        if not path.exists():
            pytest.skip(f"shared fixture {name} not found at {FIXTURES}")
        return json.loads(path.read_text(encoding="utf-8"))

    return load


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
