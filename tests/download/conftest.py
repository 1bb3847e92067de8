"""Shared helpers of the download tests: a relay simulator on loopback, clients, a folder."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from luma_prefect import Generation, LumaClient
from luma_prefect.delivery._transfer import media_client
from luma_prefect.simulator import RelaySimulator, SimulatorTLS

MIB = 1024 * 1024


@pytest.fixture
def sim_factory(
    luma_simulator_factory: Callable[..., RelaySimulator], luma_simulator_tls: SimulatorTLS
) -> Callable[..., RelaySimulator]:
    """https simulators on a manual clock (time moves only when told); all stopped after."""
    return functools.partial(
        luma_simulator_factory,
        tls=luma_simulator_tls,
        manual_clock=True,
        pending_seconds=1.0,
        processing_seconds=2.0,
    )


@pytest.fixture
def sim(sim_factory: Callable[..., RelaySimulator]) -> RelaySimulator:
    """A generations-style simulator serving 3 MiB synthetic videos."""
    return sim_factory(video_bytes=3 * MIB)


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[RelaySimulator], LumaClient]]:
    """LumaClients for simulators, closed after the test."""
    clients: list[LumaClient] = []

    def make(simulator: RelaySimulator) -> LumaClient:
        client = simulator.credentials().get_client()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(sim: RelaySimulator, client_for: Callable[[RelaySimulator], LumaClient]) -> Any:
    """A LumaClient for `sim`."""
    return client_for(sim)


@pytest.fixture
async def http(luma_simulator_tls: SimulatorTLS) -> AsyncIterator[httpx.AsyncClient]:
    """The media client `sim.credentials()` gives: trusts the run's CA, allows 127.0.0.1."""
    async with media_client(
        verify=luma_simulator_tls.ca_file or True, allow_private_hosts=True
    ) as c:
        yield c


@pytest.fixture
def completed(sim: RelaySimulator, client: LumaClient) -> Callable[..., Any]:
    """`await completed()`: a generation seeded completed in `sim`, as the client reads it."""

    async def make(prompt: str = "a red fox in the snow") -> Generation:
        generation_id = sim.create_generation(prompt=prompt, state="completed")
        return await client.get_generation(generation_id)

    return make


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The destination folder (inside its own tmp dir, so escapes can be checked)."""
    return tmp_path / "out"


def tree(root: Path) -> list[str]:
    """Every file under `root`, as sorted relative paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def eventually(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Wait (yielding to the loop) until `condition()` holds; fails after `limit` real seconds.

    For events in the simulator's thread, never for time-based logic (that is the
    plugin's `FakeClock(manual=True)`).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)
