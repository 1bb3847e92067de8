"""Pytest fixtures for the relay simulator, and the fake clock that drives it.

Enable them in a `conftest.py` at the root of your tests:
`pytest_plugins = ["luma_prefect.simulator.pytest_plugin"]`.

Simulators are reused: each test gets a running one of the config it asks for, reset (no
generations, faults or counts; clock at zero), instead of starting and stopping a server.

Example:
    ```python
    def test_poll(luma_simulator):
        gid = luma_simulator.create_generation(prompt="cat dance", state="pending")
        luma_simulator.advance(60)
        assert luma_simulator.generation(gid)["state"] == "completed"
    ```
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from luma_prefect.simulator._config import SimulatorConfig
from luma_prefect.simulator._server import RelaySimulator, SimulatorTLS

if TYPE_CHECKING:
    from luma_prefect.credentials import LumaRelayCredentials

__all__ = [
    "FAST_TIMINGS",
    "FakeClock",
    "LumaSimulator",
    "SimulatorPool",
    "luma_clock",
    "luma_simulator",
    "luma_simulator_factory",
    "luma_simulator_tls",
    "luma_simulators",
]

#: Timings of the fixtures' simulators: a generation completes in 0.15 s of real time.
FAST_TIMINGS: dict[str, Any] = {"pending_seconds": 0.05, "processing_seconds": 0.1}

# Idle simulators kept running between tests. Each idle uvicorn loop still wakes 10 times
# a second, so rarely used configs are stopped rather than kept forever.
_KEEP_IDLE = 8
# A request still being answered when its test ends (a SLOW fault the client gave up on)
# gets this long to finish; after that its simulator is stopped instead of reused.
_DRAIN_SECONDS = 1.0


class LumaSimulator(RelaySimulator):
    """The simulator the fixtures give: a `RelaySimulator` that also makes credentials.

    The plugin, not the simulator, knows the product's block: the simulator package
    imports nothing of luma_prefect but its own modules.
    """

    def credentials(self) -> LumaRelayCredentials:
        """A `LumaRelayCredentials` block pointing at this simulator.

        Example:
            ```python
            async with luma_simulator.credentials().get_client() as client:
                await client.get_generation(gid)
            ```
        """
        # Imported here: the block imports Prefect, which simulator-only tests never need.
        from luma_prefect.credentials import LumaRelayCredentials

        return LumaRelayCredentials.model_validate(self.connection())


class FakeClock:
    """A wait `Clock` whose sleeps return at once, moving fake time and the simulators' clocks.

    Give it to the wait engine (`clock=`) and to clients (`get_client(sleep=clock.sleep)`):
    a 30-minute wait runs in milliseconds and nothing really sleeps. `sleeps` records every
    sleep asked, in order; `hooks` run before each sleep with the fake time (a hook may be
    async); `wall()` is the matching UTC time, for code that takes a
    `Callable[[], datetime]`.

    With `manual=True`, time moves only when the test calls `advance()`: a sleep waits
    until fake time passes its end, so a test can check what happens inside a window.

    Example:
        ```python
        def test_wait(luma_simulator_factory):
            sim = luma_simulator_factory(manual_clock=True, pending_seconds=60)
            clock = FakeClock(sim)
            ...  # run a wait with clock=clock
            assert clock.sleeps and sim.generation(gid)["state"] == "completed"
        ```
    """

    #: The wall time at fake time 0 unless `epoch` is given.
    EPOCH = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)

    def __init__(
        self, *simulators: RelaySimulator, epoch: datetime | None = None, manual: bool = False
    ) -> None:
        self.epoch = epoch or self.EPOCH
        self.now = 0.0
        self.manual = manual
        self.simulators = list(simulators)
        self.sleeps: list[float] = []
        self.hooks: list[Callable[[float], object]] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self.epoch + timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        """Move fake time and the simulators' clocks without a sleep being asked; wake the
        sleeps (of a `manual` clock) whose end it passes."""
        self.now += seconds
        for simulator in self.simulators:
            simulator.advance(seconds)
        due = [entry for entry in self._sleepers if entry[0] <= self.now]
        self._sleepers = [entry for entry in self._sleepers if entry[0] > self.now]
        for _, woken in due:
            if not woken.done():
                woken.set_result(None)

    async def sleep(self, seconds: float) -> None:
        for hook in self.hooks:
            result = hook(self.now)
            if inspect.isawaitable(result):
                await result
        self.sleeps.append(seconds)
        if self.manual:
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._sleepers.append((self.now + seconds, woken))
            await woken
            return
        self.advance(seconds)
        # Yield like a real sleep would, so cancellation and other tasks get their turn.
        await asyncio.sleep(0)


class SimulatorPool:
    """Running simulators kept for a session, by config and TLS; each handed out reset.

    A simulator is reused only when its last test left it running and idle, and only for
    the same config and the same `SimulatorTLS` (https with one certificate is not http,
    nor https with another). One with a fixed `port` is never pooled: it is started for
    its test and stopped after.
    """

    def __init__(self, keep_idle: int = _KEEP_IDLE) -> None:
        self._keep_idle = keep_idle
        self._idle: OrderedDict[int, tuple[SimulatorConfig, SimulatorTLS | None, LumaSimulator]] = (
            OrderedDict()
        )

    def acquire(self, config: SimulatorConfig, tls: SimulatorTLS | None = None) -> LumaSimulator:
        """A running simulator of exactly this config and TLS, as new."""
        if not config.port:
            for key, (pooled_config, pooled_tls, simulator) in self._idle.items():
                if pooled_config == config and pooled_tls == tls:
                    del self._idle[key]
                    if simulator.running:
                        simulator.reset()
                        return simulator
                    break
        return LumaSimulator(config, tls=tls).start()

    def release(
        self, simulator: LumaSimulator, config: SimulatorConfig, tls: SimulatorTLS | None = None
    ) -> None:
        """Keep a simulator for a later test, or stop it."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        while not simulator.idle and time.monotonic() < deadline:
            time.sleep(0.005)
        # A test that swapped the simulator's TLS has a server other than the one asked for.
        if config.port or simulator.tls != tls or not simulator.running or not simulator.idle:
            simulator.stop()
            return
        self._idle[id(simulator)] = (config, tls, simulator)
        while len(self._idle) > self._keep_idle:
            _, (_, _, oldest) = self._idle.popitem(last=False)
            oldest.stop()

    def close(self) -> None:
        """Stop every simulator kept."""
        while self._idle:
            _, (_, _, simulator) = self._idle.popitem()
            simulator.stop()


@pytest.fixture(scope="session")
def luma_simulators() -> Iterator[SimulatorPool]:
    """The running simulators kept for the session (a `SimulatorPool`), behind
    `luma_simulator` and `luma_simulator_factory`."""
    pool = SimulatorPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def luma_simulator_tls(tmp_path_factory: pytest.TempPathFactory) -> SimulatorTLS:
    """https for simulators: a CA and a 127.0.0.1 certificate made for this test run.

    Needs `trustme` (`pip install trustme`). `credentials()` of a simulator started with it
    trusts that CA.

    Example:
        ```python
        def test_https(luma_simulator_factory, luma_simulator_tls):
            sim = luma_simulator_factory(tls=luma_simulator_tls)
            assert sim.base_url.startswith("https://")
        ```
    """
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("luma-simulator-tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    certfile, ca_file = folder / "server.pem", folder / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(ca_file))
    return SimulatorTLS(certfile=str(certfile), ca_file=str(ca_file))


@pytest.fixture
def luma_simulator_factory(
    luma_simulators: SimulatorPool,
) -> Iterator[Callable[..., LumaSimulator]]:
    """Running simulators from config fields (fast timings unless given), reset for this test.

    `tls=` (e.g. the `luma_simulator_tls` fixture) serves https.

    Example:
        ```python
        def test_task_style(luma_simulator_factory):
            sim = luma_simulator_factory(style="task", manual_clock=True)
        ```
    """
    taken: list[tuple[LumaSimulator, SimulatorConfig, SimulatorTLS | None]] = []

    def make(
        config: SimulatorConfig | None = None, *, tls: SimulatorTLS | None = None, **fields: Any
    ) -> LumaSimulator:
        if config is None:
            config = SimulatorConfig(**{**FAST_TIMINGS, **fields})
        elif fields:
            config = dataclasses.replace(config, **fields)
        simulator = luma_simulators.acquire(config, tls)
        taken.append((simulator, config, tls))
        return simulator

    yield make
    for simulator, config, tls in reversed(taken):
        luma_simulators.release(simulator, config, tls)


@pytest.fixture
def luma_simulator(luma_simulator_factory: Callable[..., LumaSimulator]) -> LumaSimulator:
    """A running `generations`-style simulator with fast timings, reset for this test.

    Example:
        ```python
        def test_it(luma_simulator):
            credentials = luma_simulator.credentials()
        ```
    """
    return luma_simulator_factory()


@pytest.fixture
def luma_clock() -> FakeClock:
    """A `FakeClock` driving no simulator yet (`luma_clock.simulators.append(sim)`).

    Example:
        ```python
        async def test_retries(luma_clock):
            client = LumaClient(url, key, sleep=luma_clock.sleep)
        ```
    """
    return FakeClock()
