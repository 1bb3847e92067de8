"""Simulators reused across tests: a reset is as good as new, and a reused simulator is one
of the same config and the same TLS; the plugin's one fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from luma_prefect.simulator import Fault, FaultKind, SimulatorConfig, SimulatorTLS
from luma_prefect.simulator.pytest_plugin import (
    FAST_TIMINGS,
    FakeClock,
    LumaSimulator,
    SimulatorPool,
)


@pytest.fixture
def pool() -> Iterator[SimulatorPool]:
    pool = SimulatorPool()
    yield pool
    pool.close()


def test_a_reused_simulator_is_reset_and_keeps_its_address_and_key(pool: SimulatorPool) -> None:
    config = SimulatorConfig(manual_clock=True, **FAST_TIMINGS)
    first = pool.acquire(config)
    gid = first.create_generation(prompt="left over", state="pending")
    first.add_fault(Fault(FaultKind.SERVER_ERROR, status=503))
    first.advance(30)
    with httpx.Client(base_url=first.base_url) as api:
        api.get("/_simulator")
    address, key = first.base_url, first.api_key
    pool.release(first, config)

    second = pool.acquire(config)

    assert second is first and second.running
    assert (second.base_url, second.api_key) == (address, key)
    assert second.generation_ids() == [] and second.faults() == []
    assert second.counters().requests == {}
    with pytest.raises(KeyError):
        second.generation(gid)
    # The clock restarted: a new generation is pending until its own 0.05 s pass.
    fresh = second.create_generation(prompt="new", state="pending")
    assert second.generation(fresh)["state"] == "pending"
    second.advance(1)
    assert second.generation(fresh)["state"] == "completed"


def test_a_simulator_is_reused_only_for_the_same_config(pool: SimulatorPool) -> None:
    config = SimulatorConfig(**FAST_TIMINGS)
    first = pool.acquire(config)
    pool.release(first, config)

    other = pool.acquire(SimulatorConfig(style="task", **FAST_TIMINGS))

    assert other is not first and other.style == "task"
    pool.release(other, other.config)


def test_a_simulator_is_reused_only_for_the_same_tls(
    pool: SimulatorPool, luma_simulator_tls: SimulatorTLS
) -> None:
    config = SimulatorConfig(**FAST_TIMINGS)
    plain = pool.acquire(config)
    pool.release(plain, config)

    https = pool.acquire(config, luma_simulator_tls)
    assert https is not plain and https.base_url.startswith("https://")
    pool.release(https, config, luma_simulator_tls)

    # The same certificate (an equal SimulatorTLS) reuses the https one; no TLS, the plain one.
    same = SimulatorTLS(certfile=luma_simulator_tls.certfile, ca_file=luma_simulator_tls.ca_file)
    assert pool.acquire(config, same) is https
    assert pool.acquire(config) is plain
    # Another trust setting is another simulator, though the config matches.
    untrusted = SimulatorTLS(certfile=luma_simulator_tls.certfile)
    assert pool.acquire(config, untrusted) not in (plain, https)


def test_a_stopped_or_fixed_port_simulator_is_not_kept(pool: SimulatorPool) -> None:
    config = SimulatorConfig(**FAST_TIMINGS)
    stopped = pool.acquire(config)
    stopped.stop()
    pool.release(stopped, config)
    assert pool.acquire(config) is not stopped

    fixed = pool.acquire(SimulatorConfig(port=0, **FAST_TIMINGS))
    port = fixed.base_url.rsplit(":", 1)[1]
    fixed_config = SimulatorConfig(port=int(port), **FAST_TIMINGS)
    fixed.stop()
    owned = pool.acquire(fixed_config)
    pool.release(owned, fixed_config)
    assert not owned.running


def test_the_admin_reset_route_forgets_everything(
    luma_simulator_factory: Callable[..., LumaSimulator],
) -> None:
    sim = luma_simulator_factory()
    sim.create_generation(state="pending")
    sim.add_fault(Fault(FaultKind.RATE_LIMIT))
    with httpx.Client(base_url=sim.base_url) as api:
        assert api.post("/_simulator/reset").json() == {"ok": True}
    assert sim.generation_ids() == [] and sim.faults() == []


async def test_a_fake_clock_moves_itself_and_its_simulators(
    luma_simulator_factory: Callable[..., LumaSimulator],
) -> None:
    sim = luma_simulator_factory(manual_clock=True, pending_seconds=60.0)
    clock = FakeClock(sim)
    seen: list[float] = []

    async def hook(now: float) -> None:
        seen.append(now)

    clock.hooks.append(hook)
    gid = sim.create_generation(state="pending")

    await clock.sleep(30)
    await clock.sleep(300)

    assert clock.sleeps == [30, 300] and seen == [0.0, 30.0] and clock.monotonic() == 330
    assert clock.wall() == FakeClock.EPOCH.replace(minute=5, second=30)
    assert sim.generation(gid)["state"] == "completed"


async def test_a_manual_fake_clock_sleeps_until_the_test_moves_time() -> None:
    clock = FakeClock(manual=True)
    sleeper = asyncio.ensure_future(clock.sleep(10))
    await asyncio.sleep(0)

    clock.advance(9)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not sleeper.done()

    clock.advance(1)
    await asyncio.wait_for(sleeper, 1)
    assert clock.sleeps == [10] and clock.monotonic() == 10
