"""Pytest fixtures for the relay simulator.

Enable them in a `conftest.py` at the root of your tests:
`pytest_plugins = ["luma_prefect.simulator.pytest_plugin"]`.

Example:
    ```python
    def test_poll(luma_simulator):
        gid = luma_simulator.create_generation(prompt="cat dance", state="pending")
        luma_simulator.advance(60)
        assert luma_simulator.generation(gid)["state"] == "completed"
    ```
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from luma_prefect.simulator._config import SimulatorConfig
from luma_prefect.simulator._server import RelaySimulator, SimulatorTLS

if TYPE_CHECKING:
    from luma_prefect.credentials import LumaRelayCredentials

__all__ = [
    "FAST_TIMINGS",
    "LumaSimulator",
    "luma_simulator",
    "luma_simulator_factory",
    "luma_simulator_tls",
]

#: Timings of the fixtures' simulators: a generation completes in 0.15 s of real time.
FAST_TIMINGS: dict[str, Any] = {"pending_seconds": 0.05, "processing_seconds": 0.1}


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


@pytest.fixture
def luma_simulator() -> Iterator[LumaSimulator]:
    """A running `generations`-style simulator with fast timings, stopped after the test.

    Example:
        ```python
        def test_it(luma_simulator):
            credentials = luma_simulator.credentials()
        ```
    """
    with LumaSimulator(SimulatorConfig(**FAST_TIMINGS)) as simulator:
        yield simulator


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
def luma_simulator_factory() -> Iterator[Callable[..., LumaSimulator]]:
    """Starts simulators from config fields (fast timings unless given); all stopped after.

    `tls=` (e.g. the `luma_simulator_tls` fixture) serves https.

    Example:
        ```python
        def test_task_style(luma_simulator_factory):
            sim = luma_simulator_factory(style="task", manual_clock=True)
        ```
    """
    started: list[LumaSimulator] = []

    def make(
        config: SimulatorConfig | None = None, *, tls: SimulatorTLS | None = None, **fields: Any
    ) -> LumaSimulator:
        if config is None:
            config = SimulatorConfig(**{**FAST_TIMINGS, **fields})
            fields = {}
        simulator = LumaSimulator(config, tls=tls, **fields).start()
        started.append(simulator)
        return simulator

    yield make
    for simulator in reversed(started):
        simulator.stop()
