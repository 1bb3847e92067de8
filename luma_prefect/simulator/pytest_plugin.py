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
from typing import Any

import pytest

from luma_prefect.simulator._config import SimulatorConfig
from luma_prefect.simulator._server import RelaySimulator

__all__ = ["FAST_TIMINGS", "luma_simulator", "luma_simulator_factory"]

#: Timings of the fixtures' simulators: a generation completes in 0.15 s of real time.
FAST_TIMINGS: dict[str, Any] = {"pending_seconds": 0.05, "processing_seconds": 0.1}


@pytest.fixture
def luma_simulator() -> Iterator[RelaySimulator]:
    """A running `generations`-style simulator with fast timings, stopped after the test.

    Example:
        ```python
        def test_it(luma_simulator):
            credentials = luma_simulator.credentials()
        ```
    """
    with RelaySimulator(SimulatorConfig(**FAST_TIMINGS)) as simulator:
        yield simulator


@pytest.fixture
def luma_simulator_factory() -> Iterator[Callable[..., RelaySimulator]]:
    """Starts simulators from config fields (fast timings unless given); all stopped after.

    Example:
        ```python
        def test_task_style(luma_simulator_factory):
            sim = luma_simulator_factory(style="task", manual_clock=True)
        ```
    """
    started: list[RelaySimulator] = []

    def make(config: SimulatorConfig | None = None, **fields: Any) -> RelaySimulator:
        if config is None:
            config = SimulatorConfig(**{**FAST_TIMINGS, **fields})
            fields = {}
        simulator = RelaySimulator(config, **fields).start()
        started.append(simulator)
        return simulator

    yield make
    for simulator in reversed(started):
        simulator.stop()
