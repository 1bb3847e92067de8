"""Flow runs end to end: the simulator on loopback, Prefect's embedded API, a fake clock."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prefect.context import FlowRunContext
from prefect.events.clients import AssertingEventsClient
from prefect.events.worker import EventsWorker

import luma_prefect.tasks._common
from luma_prefect.simulator import RelaySimulator
from luma_prefect.simulator.pytest_plugin import FakeClock
from luma_prefect.storage._local import LocalStorage


@pytest.fixture
def make_sim(
    luma_simulator_factory: Callable[..., RelaySimulator],
) -> Callable[..., RelaySimulator]:
    """Simulators on a manual clock (pending 20 s, processing 40 s unless told)."""
    return functools.partial(
        luma_simulator_factory, manual_clock=True, pending_seconds=20.0, processing_seconds=40.0
    )


@pytest.fixture
def drive_waits(monkeypatch: pytest.MonkeyPatch) -> Callable[[RelaySimulator], None]:
    """Make every wait's sleeps move this simulator's clock instead of real time."""

    def drive(simulator: RelaySimulator) -> None:
        monkeypatch.setattr(luma_prefect.tasks._common, "wait_clock", FakeClock(simulator))

    return drive


@pytest.fixture
def sim(
    make_sim: Callable[..., RelaySimulator], drive_waits: Callable[[RelaySimulator], None]
) -> RelaySimulator:
    """A generations-style simulator whose clock the waits drive."""
    simulator = make_sim()
    drive_waits(simulator)
    return simulator


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[Any]]]:
    """The Prefect events emitted during the test (read after the flow run)."""
    AssertingEventsClient.reset()
    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_, **__: worker)

    def read() -> list[Any]:
        worker.drain()
        return [e for client in AssertingEventsClient.all for e in client.events]

    yield read
    worker.drain()
    AssertingEventsClient.reset()


@pytest.fixture
def storage_on_loop(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The local storage's I/O calls a flow run made on its event loop, by method name.

    None should be: the ledger, manifests and checks live in the destination, and on S3
    each call is a request of up to its 60 s deadline, holding every other generation's
    polls and downloads if made on the loop. (The test's own reads, outside any flow run,
    are not counted.)
    """
    seen: list[str] = []

    def watched(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # a worker thread: no loop held
                pass
            else:
                if FlowRunContext.get() is not None:
                    seen.append(name)
            return method(*args, **kwargs)

        return call

    for name in ("size", "open_read", "write_bytes", "create_exclusive", "delete", "list", "parts"):
        monkeypatch.setattr(LocalStorage, name, watched(name, getattr(LocalStorage, name)))
    return seen
