"""The relay-wide limit: each request holds a slot (a batch's requests share slots taken
together), and a deleted limit is made again."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.client.orchestration import get_client

from luma_prefect.tasks import _throttle
from luma_prefect.tasks._throttle import (
    DEFAULT_RELAY_LIMIT,
    relay_gate,
    relay_limit_name,
    relay_slots,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


async def _slots_held(name: str) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def test_a_limit_deleted_under_a_running_worker_is_created_again() -> None:
    """A person deletes the relay's limit in the UI: the next request of a process that
    already made sure of it still gets a slot (the limit is back, with its default)."""
    from prefect.exceptions import ObjectNotFound

    base_url = f"https://relay-{uuid.uuid4().hex[:8]}.example"
    name = relay_limit_name(base_url)
    gate = relay_gate(base_url)
    async with gate():
        assert await _slots_held(name) == 1
    async with get_client() as client:
        await client.delete_global_concurrency_limit_by_name(name)
        with pytest.raises(ObjectNotFound):
            await client.read_global_concurrency_limit_by_name(name)

    async with gate():
        assert await _slots_held(name) == 1

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(name)
        await client.delete_global_concurrency_limit_by_name(name)
    assert limit.limit == DEFAULT_RELAY_LIMIT


async def _new_limit(slots: int) -> tuple[str, str]:
    """A relay address of its own, with a limit of `slots` slots."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    base_url = f"https://relay-{uuid.uuid4().hex[:8]}.example"
    name = relay_limit_name(base_url)
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=slots)
        )
    return base_url, name


class _Relay:
    """Counts the requests in flight (across batches) and the slot acquisitions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.in_flight = self.most = self.done = 0
        self.acquisitions: list[int] = []
        real = _throttle._concurrency

        def counted(name: str, occupy: int) -> object:
            self.acquisitions.append(occupy)
            return real(name, occupy)

        monkeypatch.setattr(_throttle, "_concurrency", counted)

    async def request(self, gate: object) -> None:
        async with gate():  # type: ignore[operator]
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            for _ in range(3):  # others run meanwhile
                await asyncio.sleep(0)
            self.in_flight -= 1
            self.done += 1


async def test_a_batch_takes_its_slots_together_and_never_sends_more_than_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """30 requests at once in a batch, on a limit of 3: one acquisition of the 3 slots
    (not 30 of one), never more than 3 in flight, every slot given back at the end."""
    # Its group is kept whatever the machine's load (not given back 2 s after the last
    # request, before the count below, nor taken anew after 10 s).
    monkeypatch.setattr(_throttle, "LINGER_SECONDS", 3600.0)
    monkeypatch.setattr(_throttle, "HOLD_SECONDS", 3600.0)
    base_url, name = await _new_limit(3)
    relay = _Relay(monkeypatch)
    gate = relay_gate(base_url)

    async with relay_slots(base_url):
        await asyncio.gather(*(relay.request(gate) for _ in range(30)))
        assert await _slots_held(name) == 3  # kept for the batch's next requests

    assert relay.done == 30
    assert relay.most == 3
    assert relay.acquisitions == [3]
    assert await _slots_held(name) == 0


async def test_two_batches_on_one_limit_never_have_more_in_flight_than_its_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers' batches share a limit of 2: together never more than 2 requests in
    flight; the second gets slots once the first gave its back."""
    monkeypatch.setattr(_throttle, "LINGER_SECONDS", 0.05)
    base_url, name = await _new_limit(2)
    relay = _Relay(monkeypatch)

    async def batch() -> None:
        gate = relay_gate(base_url)
        async with relay_slots(base_url):
            await asyncio.gather(*(relay.request(gate) for _ in range(10)))

    await asyncio.gather(batch(), batch())

    assert relay.done == 20
    assert relay.most == 2
    assert await _slots_held(name) == 0


async def test_a_batch_keeps_its_slots_after_the_task_run_that_took_them_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect gives back, when a task run ends, the slots taken in it: the batch's slots
    must not be taken in the task run whose request happened to open them."""
    from prefect import flow, task

    # The group outlives the task run whatever the machine's load: a group given back
    # after 2 s idle and opened again by the flow would pass without the batch's context.
    monkeypatch.setattr(_throttle, "LINGER_SECONDS", 3600.0)
    monkeypatch.setattr(_throttle, "HOLD_SECONDS", 3600.0)

    base_url, name = await _new_limit(2)
    gate = relay_gate(base_url)

    @task
    async def first_request() -> None:
        async with gate():
            pass

    @flow
    async def batch() -> int:
        async with relay_slots(base_url):
            await first_request()
            async with gate():
                return await _slots_held(name)

    assert await batch() == 1
    assert await _slots_held(name) == 0


async def test_a_batch_that_ends_while_waiting_for_a_full_limit_ends_at_once() -> None:
    """Its one request gave up (cancelled) while the limit was full: the batch does not
    wait for slots nobody needs any more (up to SLOT_TIMEOUT_SECONDS before)."""
    from prefect.concurrency.asyncio import concurrency

    base_url, name = await _new_limit(1)
    gate = relay_gate(base_url)

    async def request() -> None:
        async with gate():
            pass

    async with concurrency(name, occupy=1, strict=True):  # another worker holds it all
        scope = relay_slots(base_url)
        await scope.__aenter__()
        waiting = asyncio.create_task(request())
        pool = _throttle._POOL.get()
        assert pool is not None
        while not pool._acquiring:
            await asyncio.sleep(0)
        waiting.cancel()
        async with asyncio.timeout(30):  # not the 300 s a slot may be waited for
            await scope.__aexit__(None, None, None)
        assert waiting.cancelled()
    assert await _slots_held(name) == 0
